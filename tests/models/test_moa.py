"""The mixture of attention heads (MoA): its output equals a per-token, per-expert loop of the formula
(top-k, ReLU routing with a varying number of experts per token, hash routing by token id), it is
causal, its gates carry the router's gradient, and it reports routing, losses and statistics like an
MoE FFN (keyed "i.moa")."""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch

from moe.balance import SwitchAuxLoss
from moe.experts import GroupedExperts
from moe.metrics import RoutingAccumulator
from moe.models.attention import apply_rope, rope_cos_sin
from moe.models.builder import build_decoder
from moe.models.moa import MixtureOfAttentionHeads, assignment_slots
from moe.routers import ExpertChoiceRouter, HashRouter, ReLURouter, TopKRouter

D, E, HEADS, HEAD_DIM = 16, 4, 2, 4


def moa(router, *, rope=True, output_bias=False):
    torch.manual_seed(0)
    layer = MixtureOfAttentionHeads(router=router, balancers={"switch_aux": SwitchAuxLoss()}, d_model=D,
                                    num_experts=E, heads=HEADS, head_dim=HEAD_DIM, max_seq_len=32, rope=rope,
                                    output_bias=output_bias).double()
    if output_bias:
        torch.nn.init.normal_(layer.bias_D)
    return layer


def loop_reference(layer: MixtureOfAttentionHeads, x_BSD: torch.Tensor, routing) -> torch.Tensor:
    """y_t = Σ_(t,e,w) w · o_{t,e} W_o,e + b, with o_{t,e} causal softmax attention of x_t W_q,e (per head i,
    RoPE at t) over head i of the shared keys and values: one token and one assignment at a time."""
    B, S, _ = x_BSD.shape
    k_BShd, v_BShd = layer.kv_proj(x_BSD).view(B, S, 2, HEADS, HEAD_DIM).unbind(2)
    cos_SR, sin_SR = rope_cos_sin(S, HEAD_DIM, 10000.0)
    rotate = (lambda z, pos: apply_rope(z, cos_SR[pos], sin_SR[pos])) if layer.rope else (lambda z, pos: z)
    y_TD = torch.zeros(B * S, D, dtype=x_BSD.dtype)
    for n in range(len(routing.token_ids_N)):
        t, e, w = int(routing.token_ids_N[n]), int(routing.expert_ids_N[n]), routing.weights_N[n]
        b, s = divmod(t, S)
        q_hd = (x_BSD[b, s] @ layer.experts.w_q_EDX[e]).view(HEADS, HEAD_DIM)
        heads = []
        for i in range(HEADS):
            q_d = rotate(q_hd[i], s)
            keys_sd = torch.stack([rotate(k_BShd[b, p, i], p) for p in range(s + 1)])
            attention_s = torch.softmax(keys_sd @ q_d / math.sqrt(HEAD_DIM), dim=0)
            heads.append(attention_s @ v_BShd[b, :s + 1, i])
        y_TD[t] += w * (torch.cat(heads) @ layer.experts.w_o_EXD[e])
    return layer.add_bias(y_TD).view(B, S, D)


ROUTERS = {
    "top_k": lambda: TopKRouter(d_model=D, num_experts=E, top_k=2, order="topk_then_softmax"),
    "top_1": lambda: TopKRouter(d_model=D, num_experts=E, top_k=1, order="softmax_then_topk"),
    "relu": lambda: ReLURouter(d_model=D, num_experts=E, top_k=2),
    "hash": lambda: HashRouter(d_model=D, num_experts=E, vocab_size=50),
}


@pytest.mark.parametrize("name", sorted(ROUTERS))
@pytest.mark.parametrize("rope", [True, False])
def test_moa_equals_the_per_token_per_expert_loop(name, rope):
    layer = moa(ROUTERS[name]().double(), rope=rope, output_bias=True)
    x_BSD = torch.randn(2, 7, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    token_ids_BS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(2))
    y_BSD, aux = layer(x_BSD, token_ids_BS)
    # RoPE rotates in float32 (moe/models/attention.py), so with it the float64 paths agree to float32 rounding
    tolerance = dict(rtol=1e-6, atol=1e-9) if rope else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y_BSD, loop_reference(layer, x_BSD, aux.routing), **tolerance)
    if name == "relu":  # the case the slots exist for: tokens with different numbers of experts
        counts_T = torch.bincount(aux.routing.token_ids_N, minlength=14)
        assert counts_T.min() < counts_T.max()


def test_slots_rank_each_token_assignments_in_routing_order():
    slot_N, K = assignment_slots(torch.tensor([2, 0, 2, 2, 1, 0]), num_tokens=4)
    assert slot_N.tolist() == [0, 0, 1, 2, 0, 1] and K == 3


def test_moa_is_causal_and_its_gates_carry_the_router_gradient():
    layer = moa(TopKRouter(d_model=D, num_experts=E, top_k=2, order="topk_then_softmax").double())
    x_BSD = torch.randn(1, 9, D, dtype=torch.float64, requires_grad=True)
    y_BSD, aux = layer(x_BSD)
    changed = x_BSD.detach().clone()
    changed[0, 5:] += 1.0
    torch.testing.assert_close(layer(changed)[0][0, :5], y_BSD[0, :5].detach(), rtol=0, atol=1e-12)
    (y_BSD.square().sum() + aux.losses["switch_aux"]).backward()
    router_grad = layer.router.scorer.weight_ED.grad
    assert router_grad is not None and router_grad.abs().sum() > 0
    assert layer.experts.w_q_EDX.grad.abs().sum() > 0 and layer.kv_proj.weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
def test_expert_choice_is_refused_for_moa():
    with pytest.raises(ValueError, match="token-choice router"):
        moa(ExpertChoiceRouter(d_model=D, num_experts=E))


def build(**overrides):
    options = dict(vocab_size=50, d_model=D, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=32, max_seq_len=16,
                   attention="moa", moa_heads=HEADS, moa_head_dim=HEAD_DIM, num_experts=E, expert_d_ff=8,
                   router=functools.partial(TopKRouter, top_k=2, order="topk_then_softmax"), experts=GroupedExperts,
                   balancers={"switch_aux": SwitchAuxLoss})
    options.update(overrides)
    return build_decoder(**options)


def test_an_moa_decoder_reports_its_attention_routing_beside_the_ffn_routing():
    model = build()
    ids = torch.randint(0, 50, (2, 16))
    out = model(ids, targets=ids)
    assert list(out.layer_aux) == ["0.moa", 0, "1.moa", 1]
    assert set(out.aux_losses) == {"layer0.moa/switch_aux", "layer0/switch_aux", "layer1.moa/switch_aux",
                                   "layer1/switch_aux"}
    scaled = sum(out.aux_coeffs[key] * loss.item() for key, loss in out.aux_losses.items())
    assert out.loss.item() == pytest.approx(out.lm_loss.item() + scaled, rel=1e-6)
    assert len(model.moe_layers) == 4
    accumulator = RoutingAccumulator()
    accumulator.add(out.layer_aux)
    metrics = accumulator.metrics(accumulator.sums.read())
    assert metrics["layer0.moa/max_vio"] >= 0 and "layer1/max_vio" in metrics
    assert list(accumulator.per_layer(accumulator.sums.read())) == ["0.moa", 0, "1.moa", 1]


def test_moa_with_dense_ffns_needs_only_its_own_expert_count():
    model = build(num_experts=0, moa_num_experts=3)
    assert model.moe_indices == [] and [layer.experts.num_experts for layer in model.moe_layers] == [3, 3]


@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
@pytest.mark.parametrize("overrides, message", [
    (dict(num_experts=0), "moa_num_experts"),
    (dict(moa_heads=0), "model.moa_heads=0"),
    (dict(qk_norm=True), "model.qk_norm=True is not supported with a moa mixer"),
    (dict(router=ExpertChoiceRouter), "token-choice router"),
])
def test_bad_moa_options_fail_at_build_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_moa_tiny_trains_reloads_and_reports_both_routings(smoke, tmp_path):
    """model=moa_tiny through the run entry point (smoke size): the loss falls, the checkpoint reloads to
    the same logits, and metrics.jsonl carries the attention experts' statistics beside the FFN's."""
    from moe import load_model
    from moe.training import run

    summary = run(smoke("model=moa_tiny", "model.moa_head_dim=8", "trainer.max_steps=6", "trainer.eval_every=6",
                        "trainer.save_every=6", "trainer.log_every=1", "optim.lr=3e-3", run_dir=tmp_path / "run"))
    model = load_model(tmp_path / "run")
    assert all(isinstance(block.mixer, MixtureOfAttentionHeads) for block in model.blocks)
    assert [layer.experts.num_experts for layer in model.moe_layers[::2]] == [8] * len(model.blocks)  # mixers
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert summary["step"] == 6 and losses[-1] < losses[0]
    assert "layer0.moa/max_vio" in records[0] and "layer0/max_vio" in records[0]
    assert "layer1.moa/switch_aux" in records[0]
