"""MPO experts (moe/experts/mpo.py): the sequential-SVD decomposition is exact at full bond dimension and its
error falls as the bond grows, the central core is one tensor shared by all experts, the experts dispatch
like GroupedExperts on the contracted stacks, parameters are counted against plain experts, the gradient
mask thins only the central core's gradient, and a dense FFN upcycles into MPO experts with its function
kept."""

from __future__ import annotations

import math

import pytest
import torch

from moe.experts import GroupedExperts, MPOExperts
from moe.experts.mpo import factorise, full_bonds, mpo_contract, mpo_decompose
from moe.types import Routing


def test_factors_multiply_to_the_size_with_the_largest_in_the_middle():
    assert factorise(192, 5) == [2, 3, 4, 4, 2] and factorise(257, 5) == [1, 1, 257, 1, 1]
    for size in (64, 96, 192, 384, 257):
        factors = factorise(size, 5)
        assert math.prod(factors) == size and max(factors) == factors[2]
    assert full_bonds([2, 3, 2], [2, 2, 3]) == [4, 6]  # min(4, 36), min(24, 6)


def test_the_mpo_is_exact_at_full_bonds_and_the_truncation_error_falls_with_the_bond():
    W = torch.randn(48, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows, cols = factorise(48, 5), factorise(40, 5)
    torch.testing.assert_close(mpo_contract(mpo_decompose(W, rows, cols)), W, rtol=1e-12, atol=1e-12)
    errors = [float((mpo_contract(mpo_decompose(W, rows, cols, bond)) - W).norm() / W.norm()) for bond in (1, 4, 16)]
    assert errors[0] > errors[1] > errors[2] > 0


def experts(**kwargs) -> MPOExperts:
    torch.manual_seed(0)
    return MPOExperts(num_experts=4, d_model=24, d_ff=16, **kwargs)


def test_the_central_core_is_shared_and_the_report_counts_it_once():
    mpo = experts()
    central = {name: core for name, core in mpo.cores.items() if name.endswith("_2")}
    assert all(core.dim() == 4 for core in central.values())  # no expert dimension: one for all experts
    assert all(core.shape[0] == 4 for name, core in mpo.cores.items() if not name.endswith("_2"))
    report = mpo.parameter_report()
    assert report["mpo"] == sum(p.numel() for p in mpo.parameters()) and report["plain"] == 3 * 4 * 24 * 16
    assert sum(p.numel() for p in mpo.routed_parameters()) == report["mpo"] - report["central"]
    frozen = experts(freeze_central=True)
    assert [n for n, p in frozen.cores.items() if not p.requires_grad] == [f"{m}_2" for m in
                                                                            ("w_gate_EDF", "w_up_EDF", "w_down_EFD")]


def test_scratch_init_gives_the_experts_init_std():
    mpo = MPOExperts(num_experts=8, d_model=64, d_ff=96, init_std=0.02)
    for W in (w.detach() for w in mpo.stacked_weights(torch.float32)):
        assert 0.5 * 0.02 < float(W.std()) < 2 * 0.02


def test_mpo_experts_compute_what_grouped_experts_compute_on_the_contracted_stacks():
    mpo = experts(bond_dim=3)
    plain = GroupedExperts(num_experts=4, d_model=24, d_ff=16)
    with torch.no_grad():
        for name, W in zip(("w_gate_EDF", "w_up_EDF", "w_down_EFD"), mpo.stacked_weights(torch.float32), strict=True):
            getattr(plain, name).copy_(W)
    T, k = 10, 2
    g = torch.Generator().manual_seed(1)
    expert_ids = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(T)]).reshape(-1)
    routing = Routing(token_ids_N=torch.arange(T).repeat_interleave(k), expert_ids_N=expert_ids,
                      weights_N=torch.rand(T * k, generator=g), logits_TE=torch.zeros(T, 4),
                      probs_TE=torch.full((T, 4), 0.25), tokens_per_expert_E=torch.bincount(expert_ids, minlength=4),
                      num_dropped=0, top_k=float(k))
    x = torch.randn(T, 24, generator=g, requires_grad=True)
    torch.testing.assert_close(mpo(x, routing), plain(x, routing), rtol=1e-5, atol=1e-6)
    mpo(x, routing).square().sum().backward()
    assert all(core.grad is not None and core.grad.abs().sum() > 0 for core in mpo.cores.values())


def core_grads(mpo, seed):
    """Every core's gradient of one backward on fixed tokens (the mask's draws seeded by ``seed``)."""
    g = torch.Generator().manual_seed(1)
    T, k = 12, 2
    expert_ids = torch.stack([torch.randperm(4, generator=g)[:k] for _ in range(T)]).reshape(-1)
    routing = Routing(token_ids_N=torch.arange(T).repeat_interleave(k), expert_ids_N=expert_ids,
                      weights_N=torch.rand(T * k, generator=g), logits_TE=torch.zeros(T, 4),
                      probs_TE=torch.full((T, 4), 0.25), tokens_per_expert_E=torch.bincount(expert_ids, minlength=4),
                      num_dropped=0, top_k=float(k))
    torch.manual_seed(seed)
    mpo(torch.randn(T, 24, generator=g), routing).square().sum().backward()
    return {name: core.grad.clone() for name, core in mpo.cores.items()}


def test_the_gradient_mask_zeroes_a_share_p_of_the_central_gradient_and_keeps_the_rest_exactly():
    torch.manual_seed(0)
    unmasked = core_grads(experts(bond_dim=None), seed=0)
    torch.manual_seed(0)
    masked_experts = experts(bond_dim=None, central_grad_mask=0.5)
    masked = core_grads(masked_experts, seed=0)
    central = {f"{m}_{masked_experts.central}" for m in ("w_gate_EDF", "w_up_EDF", "w_down_EFD")}
    kept_total = elements = 0
    for name, grad in masked.items():
        if name not in central:  # the auxiliary cores are untouched
            assert torch.equal(grad, unmasked[name]), name
            continue
        kept = grad != 0
        assert torch.equal(grad[kept], unmasked[name][kept])  # kept elements are not rescaled
        live = unmasked[name] != 0
        kept_total, elements = kept_total + int(kept.sum()), elements + int(live.sum())
    # one uniform draw per element: about half of the 1152 central elements' gradients are kept
    assert elements > 1000 and abs(kept_total / elements - 0.5) < 0.05


@pytest.mark.parametrize("kwargs, message", [
    (dict(central_grad_mask=1.0), r"experts.central_grad_mask=1.0 must be a number in \[0, 1\)"),
    (dict(central_grad_mask=0.5, freeze_central=True), "the central cores get no gradient to mask; choose one"),
    (dict(bond_dim=0), r"experts.bond_dim=0 must be an integer in \[1, "),
    (dict(bond_dim=10_000), "experts.bond_dim=10000 must be an integer in"),
    (dict(num_cores=2), "experts.num_cores=2 must be an integer >= 3"),
    (dict(activation="gelu"), "experts=mpo has SwiGLU experts"),
])
def test_bad_mpo_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        experts(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("bond_dim", [None, 4])
def test_a_dense_model_upcycles_into_mpo_experts(smoke, tmp_path, bond_dim):
    """Copy upcycling into MPO experts: exact at full bonds (the dense function, renormalised top-2 of copies),
    an approximation when truncated; far fewer parameters than plain copies when truncated."""
    from moe import load_model
    from moe.training import run

    run(smoke("model=dense_tiny", "trainer.max_steps=2", run_dir=tmp_path / "dense"))
    overrides = ["init=upcycle", f"init.path={tmp_path / 'dense'}", "init.method=copy", "experts=mpo",
                 f"experts.bond_dim={'null' if bond_dim is None else bond_dim}", "model.num_experts=4",
                 "model.num_shared_experts=0", "model.expert_d_ff=128", "router.order=topk_then_softmax",
                 "trainer.max_steps=0"]
    run(smoke(*overrides, run_dir=tmp_path / "mpo"), overrides)
    dense, moe = load_model(tmp_path / "dense"), load_model(tmp_path / "mpo")
    ids = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        error = float((moe(ids).logits - dense(ids).logits).abs().max())
    report = moe.moe_layers[0].experts.parameter_report()
    if bond_dim is None:
        assert error < 1e-4
    else:
        assert 1e-4 < error and report["mpo"] < report["plain"] / 4


def test_carving_into_mpo_experts_is_refused(smoke, tmp_path):
    from moe.training import run

    run(smoke("model=dense_tiny", "trainer.max_steps=0", run_dir=tmp_path / "dense"))
    overrides = ["init=upcycle", f"init.path={tmp_path / 'dense'}", "init.method=drop", "experts=mpo",
                 "model.num_shared_experts=0", "trainer.max_steps=0"]
    with pytest.raises(ValueError, match="init.method=drop with experts=mpo"):
        run(smoke(*overrides, run_dir=tmp_path / "mpo"), overrides)


def test_experts_mpo_trains_from_the_command_line(smoke, tmp_path):
    import json

    from moe.training import run

    summary = run(smoke("experts=mpo", "experts.bond_dim=4", "trainer.max_steps=6", "trainer.eval_every=6",
                        "trainer.log_every=1", "optim.lr=3e-3", run_dir=tmp_path / "run"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert summary["step"] == 6 and losses[-1] < losses[0]
