"""Run a benchmark under fixed glibc allocator thresholds (see bench/README.md).

glibc otherwise maps and unmaps every tensor over 32 MiB on each step, and the page faults slow some
variants more than others. It reads ``MALLOC_*`` once at process start, so a script that lacks them
restarts itself with them (``os.execve``) before it measures anything.
"""

from __future__ import annotations

import os
import sys

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def restart_with_allocator_env() -> None:
    """Replace this process by the same command with ALLOCATOR_ENV set; return if it already is."""
    if any(os.environ.get(key) != value for key, value in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})
