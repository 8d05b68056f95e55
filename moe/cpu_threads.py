"""``trainer.threads``: how many CPU threads torch's kernels use while one run trains.

Why a run would take fewer threads than the machine has cores: a sweep of short jobs can run faster
as several one-thread jobs side by side (``hydra/launcher=joblib hydra.launcher.n_jobs=2
trainer.threads=1``) than one two-thread job at a time, where this model's kernels scale poorly with
threads. Measured on two 2-core CPUs: 1.26x on one, no gain on the other (docs/results.md, compare_routers
at 500 steps), so it is an option, not a default. In bf16 the losses matched the two-thread runs to the
last digit; in fp32 the order of some sums changes with the thread count.

The count is set for the run and put back afterwards, so runs that share a process (Hydra's default
launcher, tests) do not inherit each other's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)`` (None: leave torch's count alone)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
