"""Data parallelism: ``torchrun --nproc_per_node 2 train.py`` trains what one process trains.

``trainer.batch_size`` is the global micro-batch, so a 2-process run (each rank reading half of it)
and a 1-process run of the same config see the same sequences at every step. With a global-scope
balance loss (its counts summed over the ranks) and z-loss (a per-token mean), the two objectives are
the same function; they differ only in float rounding (matmuls over 2 vs 4 rows, a gradient
all-reduce): the logged per-step losses agree within 1e-5 absolute over 10 steps (measured: ≤ 5e-7).
A checkpoint of either resumes in the other at the same data position, continuing the same losses.
"""

from __future__ import annotations

import shutil

import pytest
from launch import losses, train

pytestmark = pytest.mark.slow  # each run is a subprocess (2 of them under torchrun)

OVERRIDES = ("balance=[global_aux,z_loss]", "trainer.max_steps=10", "trainer.save_every=5", "trainer.log_every=1",
             "trainer.eval_sequences_per_domain=2")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, data_cache):
    """The same 10-step config trained by 1 process and by 2 gloo processes: {nproc: run_dir}."""
    root = tmp_path_factory.mktemp("dp")
    runs = {}
    for nproc in (1, 2):
        runs[nproc] = root / f"nproc{nproc}"
        train(nproc, runs[nproc], *OVERRIDES, data_cache=data_cache)
    return runs


def test_two_processes_log_the_losses_of_one_process_with_the_whole_batch(full_runs):
    one, two = losses(full_runs[1]), losses(full_runs[2])
    assert len(one) == len(two) == 10
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) <= TOLERANCE
    assert one[-1] < one[0] - 0.5  # it trained
    # metrics and checkpoints come from rank 0 only: one record per step, one copy of the weights
    assert sorted(p.name for p in (full_runs[2] / "checkpoints").iterdir()) == ["step_0000005", "step_0000010"]


@pytest.mark.parametrize("trained, resumed", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_a_checkpoint_resumes_at_another_world_size_at_the_same_data_position(full_runs, tmp_path, data_cache,
                                                                            trained, resumed):
    run_dir = tmp_path / "resumed"
    shutil.copytree(full_runs[trained], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_0000010")
    train(resumed, run_dir, *OVERRIDES, "trainer.resume=true", data_cache=data_cache)
    after = losses(run_dir)
    assert len(after) == 10
    for reference in (losses(full_runs[1]), losses(full_runs[2])):
        assert max(abs(a - b) for a, b in zip(after[5:], reference[5:], strict=True)) <= TOLERANCE
