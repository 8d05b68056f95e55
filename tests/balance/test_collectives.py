"""Inside a DecoderLM the balancers' data-parallel sums travel in one all-reduce for all layers: one per
forward for global-scope switch_aux, one per optimizer step for aux_free (the two-phase contract of
moe/balance/base.py), bit-identical to each layer summing its own."""

from __future__ import annotations

import copy

import pytest
import torch

import moe.balance.base as base_module
import moe.balance.switch_aux as switch_aux_module
import moe.layer as layer_module
from moe.models.build import build_model

BALANCE = {
    "global_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": 0.01, "scope": "global"},
    "aux_free": {"_target_": "moe.balance.AuxFreeBalancer", "_partial_": True, "coeff": 0.0, "update_rate": 0.01},
    "z_loss": {"_target_": "moe.balance.ZLoss", "_partial_": True, "coeff": 0.001},
}

def global_aux_model():
    """3 MoE blocks, each with global-scope switch_aux, aux_free and z_loss (which needs no sum)."""
    torch.manual_seed(0)
    return build_model({
        "model": {"_target_": "moe.models.build_decoder", "vocab_size": 50, "d_model": 32, "n_layers": 3,
                  "n_heads": 4, "n_kv_heads": 2, "d_ff": 64, "max_seq_len": 16, "num_experts": 4,
                  "expert_d_ff": 16},
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 2, "order": "topk_then_softmax"},
        "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True},
        "balance": BALANCE,
    }).train()


def test_a_model_sums_all_layers_counts_in_one_all_reduce_per_forward(monkeypatch):
    calls = []
    monkeypatch.setattr(layer_module, "all_reduce_sum", lambda x: calls.append(x.shape) or x.detach().clone())
    monkeypatch.setattr(switch_aux_module, "all_reduce_sum", lambda x: pytest.fail("a per-layer all-reduce"))
    model = global_aux_model()
    for _ in range(2):  # two accumulation micro-steps
        model(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    assert calls == [torch.Size([3 * (4 + 1)])] * 2  # 3 layers × (E counts + tokens), once per forward


def test_one_all_reduce_gives_the_per_layer_losses_bit_for_bit():
    """The deferred path equals each layer summing its own counts: same losses, same order, same buffers."""
    deferred, per_layer = global_aux_model(), global_aux_model()
    for layer in per_layer.moe_layers:  # the layer finishes its own sum, as a standalone MoELayer does
        layer.forward = lambda x, ids=None, defer_sums=False, f=layer.forward: f(x, ids, defer_sums=False)
    for _ in range(2):
        ids, targets = torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16))
        a, b = deferred(ids, targets), per_layer(ids, targets)
        assert list(a.aux_losses) == list(b.aux_losses) == [f"layer{i}/{n}" for i in range(3)
                                                            for n in ("global_aux", "z_loss")]
        assert all(torch.equal(a.aux_losses[k], b.aux_losses[k]) for k in a.aux_losses)
        assert torch.equal(a.loss, b.loss)
    for la, lb in zip(deferred.moe_layers, per_layer.moe_layers, strict=True):
        assert torch.equal(la.balancers["global_aux"].global_counts_E, lb.balancers["global_aux"].global_counts_E)
        assert la.balancers["global_aux"].global_tokens.item() == 2 * 2 * 16  # two forwards of 2 × 16 tokens


def test_a_model_sums_all_layers_step_stats_in_one_all_reduce_per_optimizer_step(monkeypatch):
    model = global_aux_model()
    for _ in range(2):
        model(torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2, 16)))
    reference = copy.deepcopy(model)
    calls = []
    monkeypatch.setattr(layer_module, "all_reduce_sum", lambda x: calls.append(x.shape) or x.detach().clone())
    monkeypatch.setattr(base_module, "all_reduce_sum", lambda x: pytest.fail("a per-layer all-reduce"))
    model.on_optimizer_step()
    assert calls == [torch.Size([3 * (4 + 1)])]  # aux_free's counts + tokens of 3 layers; global_aux only resets
    monkeypatch.undo()
    for layer in reference.moe_layers:  # each balancer alone: its own all-reduce
        for balancer in layer.balancers.values():
            balancer.on_optimizer_step()
    for ours, alone in zip(model.moe_layers, reference.moe_layers, strict=True):
        assert torch.equal(ours.router.selection_bias_E, alone.router.selection_bias_E)
        assert ours.router.selection_bias_E.abs().sum() > 0  # the step did move the biases
        assert ours.balancers["global_aux"].global_tokens.item() == 0  # and reset the global counts
        assert ours.balancers["aux_free"].counts_E.sum().item() == 0
