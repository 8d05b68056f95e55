"""Upcycling a dense moe-lab run into an MoE: step-0 function preservation, parameter counts, the
layer pattern, Drop-Upcycling's re-initialised fraction, init=checkpoint, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from moe import load_model
from moe.training import run

SMOKE_D, SMOKE_F, E = 64, 128, 8  # configs/experiment/smoke.yaml: d_model, d_ff; moe_tiny: 8 experts


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory, data_cache):
    """A dense smoke model trained a few steps (so its weights are not just the init)."""
    from conftest import compose

    run_dir = tmp_path_factory.mktemp("dense")
    run(compose("experiment=smoke", "model=dense_tiny", "logger=none", "trainer.progress=false",
                "trainer.max_steps=3", f"data.cache_dir={data_cache}", run_dir=run_dir))
    return run_dir


def upcycle(smoke, dense_run, tmp_path, *overrides):
    run_dir = tmp_path / "upcycled"
    overrides = ["init=upcycle", f"init.path={dense_run}", "trainer.max_steps=0", "model.num_experts=8", *overrides]
    summary = run(smoke(*overrides, run_dir=run_dir), overrides)  # as train.py: the overrides tell what is explicit
    return load_model(run_dir), summary


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(("init.method=copy", f"model.expert_d_ff={SMOKE_F}", "router.order=topk_then_softmax"), id="copy"),
        pytest.param(("init.method=copy",), id="copy_sizes_from_the_source"),
        pytest.param(("init.method=virtual_group", "init.granularity=4", "router.top_k=4"),
                     id="virtual_group_G4_sizes_from_the_source"),
        pytest.param(("init.method=virtual_group", "init.granularity=2", f"model.expert_d_ff={SMOKE_F // 2}",
                      "router.order=topk_then_softmax"), id="virtual_group_G2"),
        pytest.param(("init.method=virtual_group", "init.granularity=4", f"model.expert_d_ff={SMOKE_F // 4}",
                      "router.top_k=4", "router.order=topk_then_softmax"), id="virtual_group_G4_k4"),
        pytest.param(("init.method=copy", f"model.expert_d_ff={SMOKE_F}", "router.order=softmax_then_topk",
                      "router.init_std=0.0"), id="copy_scaled_E_over_k_uniform_router"),
        pytest.param(("init.method=copy", f"model.expert_d_ff={SMOKE_F}", "router.order=topk_then_softmax",
                      "model.moe_every=2"), id="copy_every_other_block"),
    ],
)
def test_step0_upcycled_model_reproduces_the_dense_model(smoke, dense_run, tmp_path, overrides):
    dense = load_model(dense_run)
    moe, summary = upcycle(smoke, dense_run, tmp_path, *overrides)
    assert moe.moe_layers
    torch.testing.assert_close(logits(moe, IDS), logits(dense, IDS), rtol=1e-5, atol=1e-5)
    # the step-0 eval of the upcycled run scores the dense run's final val loss
    dense_summary = json.loads((dense_run / "summary.json").read_text())
    assert summary["step"] == 0 and summary["val_loss"] == pytest.approx(dense_summary["val_loss"], rel=1e-5)


def test_upcycled_parameter_count(smoke, dense_run, tmp_path):
    dense = load_model(dense_run)
    moe, _ = upcycle(smoke, dense_run, tmp_path, f"model.expert_d_ff={SMOKE_F}")
    dense_ffn = 3 * SMOKE_D * SMOKE_F
    per_moe_layer = (E - 1) * dense_ffn + E * SMOKE_D  # E-1 extra FFN copies + the router
    expected = sum(p.numel() for p in dense.parameters()) + len(moe.moe_layers) * per_moe_layer
    assert sum(p.numel() for p in moe.parameters()) == expected


def test_drop_upcycling_reinitialises_the_given_fraction(smoke, dense_run, tmp_path):
    dense = load_model(dense_run)
    moe, _ = upcycle(smoke, dense_run, tmp_path, "init.method=drop", "init.drop_ratio=0.25",
                     f"model.expert_d_ff={SMOKE_F}")
    dense_gate_DF = dense.blocks[0].ffn.gate.weight.T
    experts = moe.blocks[0].ffn.experts
    changed_per_expert = [(experts.w_gate_EDF[e] != dense_gate_DF).any(dim=0).sum().item() for e in range(E)]
    assert changed_per_expert == [SMOKE_F // 4] * E
    assert not torch.equal(experts.w_gate_EDF[0], experts.w_gate_EDF[1])  # experts now differ


def test_init_checkpoint_copies_every_weight(smoke, tmp_path):
    source = tmp_path / "source"
    run(smoke("trainer.max_steps=2", run_dir=source))
    target = tmp_path / "target"
    run(smoke("init=checkpoint", f"init.path={source}", "trainer.max_steps=0", run_dir=target))
    torch.testing.assert_close(logits(load_model(target), IDS), logits(load_model(source), IDS), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("init.method=copy", "model.expert_d_ff=64"),
         r"d_ff=128 neurons but 8 experts of model.expert_d_ff=64.*granularity=2 fits"),
        (("init.method=virtual_group", "init.granularity=4", "router.top_k=4", "model.expert_d_ff=64"),
         "need d_ff = granularity x expert_d_ff = 256"),
        (("init.method=virtual_group", "init.granularity=2", "router.top_k=1"),
         "router.top_k=1 to be a multiple of init.granularity=2"),
        (("init.method=copy", "model.d_model=32"),
         r"model.d_model=32 disagrees with init.path=.*, which has d_model=64"),
        (("init.method=mitosis",), "init.method='mitosis' is not one of"),
        (("init.method=copy", "model.expert_d_ff=128", "model.num_shared_experts=1"),
         "init.method=copy fills routed experts only: set model.num_shared_experts=0"),
    ],
)
def test_bad_upcycling_requests(smoke, dense_run, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        upcycle(smoke, dense_run, tmp_path, *overrides)
    assert not (tmp_path / "upcycled" / "checkpoints").exists()


def test_upcycling_an_moe_source_is_refused(smoke, tmp_path):
    moe_source = tmp_path / "moe"
    run(smoke("trainer.max_steps=1", run_dir=moe_source))
    with pytest.raises(ValueError, match="is an MoE model; upcycling needs a dense source"):
        run(smoke("init=upcycle", f"init.path={moe_source}", run_dir=tmp_path / "x"))


def test_missing_source_path(smoke, tmp_path):
    with pytest.raises(FileNotFoundError, match="init.path=.*nowhere does not exist"):
        run(smoke("init=upcycle", f"init.path={tmp_path / 'nowhere'}"))


def test_explicit_keys_are_the_nodes_own_keys_typed_on_the_command_line():
    from moe.upcycle.source_backbone import explicit_keys

    overrides = ["model=dense_tiny", "model.d_model=64", "+model.rope_theta=5e5", "++model.n_layers=3",
                 "model.router.x=1", "router.top_k=1", "-m"]
    assert explicit_keys(overrides, "model") == {"d_model", "rope_theta", "n_layers"}
