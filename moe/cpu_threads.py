"""``trainer.threads``: how many CPU threads torch's kernels use while one run trains.

Why a run would take fewer threads than the machine has cores: a sweep of short jobs runs faster as
several one-thread jobs side by side than as one multi-threaded job at a time wherever the kernels of
this model scale poorly with threads. On a 2-core AMD EPYC (2026-12-03) one 500-step
``experiment=compare_routers`` job took 230 s with two threads, and two such jobs side by side with
one thread each took 364 s together (182 s per job, 1.26x the throughput); in bf16 both ended at the
losses of the two-thread runs to the last digit (in fp32 the order of some sums changes with the thread
count: the last digits may differ). On another 2-core AMD EPYC the same pair took as long as the two
jobs one after another, so it is a measured option, not a default: ``hydra/launcher=joblib
hydra.launcher.n_jobs=2 trainer.threads=1`` (README, "Swapping parts"; docs/results.md).

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
