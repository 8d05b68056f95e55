"""Training in several processes (``torchrun --nproc_per_node 2 train.py``) trains what one process trains.

``trainer.batch_size`` is the global micro-batch, so a 2-process run (each rank reading half of it)
and a 1-process run of the same config see the same sequences at every step. With a global-scope
balance loss (its counts summed over the ranks) and z-loss (a per-token mean), the objectives are the
same function; the runs differ only in float rounding (matmuls over fewer rows, a gradient all-reduce,
all-to-alls): the logged per-step losses agree within 1e-5 absolute over 10 steps (measured: ≤ 7e-7),
for data parallelism (dp2), for expert parallelism with the 16 experts split over the 2 ranks (ep2),
for 4 ranks as two expert-parallel pairs that are data-parallel to each other (ep2x2), and for FSDP2
over 2 ranks (fsdp2: parameters, gradients and Adam moments sharded). Checkpoints hold the unsharded
layout: a checkpoint of any layout resumes in another at the same data position and continues the same
losses, and ``load_model`` reads the weights of the sharded runs.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from launch import losses, train

from moe import load_model

pytestmark = pytest.mark.slow  # each run is a subprocess (2 of them under torchrun)

OVERRIDES = ("balance=[global_aux,z_loss]", "trainer.max_steps=10", "trainer.save_every=5", "trainer.log_every=1",
             "trainer.eval_sequences_per_domain=2")
# processes, overrides; ep2x2: 4 ranks, two expert-parallel pairs, each shard's gradient averaged over 2 replicas
LAYOUTS = {"1": (1, ()), "dp2": (2, ()), "ep2": (2, ("parallel.expert=2",)), "ep2x2": (4, ("parallel.expert=2",)),
           "fsdp2": (2, ("parallel.fsdp=true",))}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def full_runs(tmp_path_factory, data_cache):
    """The same 10-step config trained in each layout: {layout: run_dir}."""
    root = tmp_path_factory.mktemp("multi")
    runs = {}
    for layout, (nproc, extra) in LAYOUTS.items():
        runs[layout] = root / layout
        train(nproc, runs[layout], *OVERRIDES, *extra, data_cache=data_cache)
    return runs


def max_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("layout", ["dp2", "ep2", "ep2x2", "fsdp2"])
def test_two_processes_log_the_losses_of_one_process_with_the_whole_batch(full_runs, layout):
    one, two = losses(full_runs["1"]), losses(full_runs[layout])
    assert len(one) == len(two) == 10
    assert max_gap(one, two) <= TOLERANCE
    assert max_gap(losses(full_runs["1"], "grad_norm"), losses(full_runs[layout], "grad_norm")) <= TOLERANCE
    assert one[-1] < one[0] - 0.5  # it trained
    # metrics and checkpoints come from rank 0 only: one record per step, one copy of the weights
    assert sorted(p.name for p in (full_runs[layout] / "checkpoints").iterdir()) == ["step_0000005", "step_0000010"]


@pytest.mark.parametrize("layout", ["ep2", "fsdp2"])
def test_a_sharded_runs_checkpoint_holds_the_whole_model(full_runs, layout):
    reference, sharded = load_model(full_runs["1"]), load_model(full_runs[layout])
    assert sharded.blocks[0].ffn.experts.w_gate_EDF.shape[0] == 16
    for (name, a), b in zip(reference.named_parameters(), sharded.parameters(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("trained, resumed", [("dp2", "1"), ("1", "dp2"), ("ep2", "1"), ("1", "ep2"),
                                              ("fsdp2", "1"), ("ep2", "fsdp2")],
                         ids=lambda layout: layout)
def test_a_checkpoint_resumes_in_another_layout_at_the_same_data_position(full_runs, tmp_path, data_cache,
                                                                          trained, resumed):
    run_dir = tmp_path / "resumed"
    shutil.copytree(full_runs[trained], run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step_0000010")
    nproc, extra = LAYOUTS[resumed]
    train(nproc, run_dir, *OVERRIDES, *extra, "trainer.resume=true", data_cache=data_cache)
    after = losses(run_dir)
    assert len(after) == 10
    assert max_gap(after[5:], losses(full_runs[trained])[5:]) <= TOLERANCE
