"""The decoder backbone: loss composition, causality, tying, GQA, build-time errors."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from moe.balance import SwitchAuxLoss, ZLoss
from moe.experts import GroupedExperts
from moe.models import DecoderLM, build_decoder
from moe.models.ffn import GELUMLP
from moe.routers import TopKRouter

SMALL = dict(vocab_size=50, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=16)


def moe_model(**overrides) -> DecoderLM:
    kwargs = dict(
        SMALL, num_experts=4, expert_d_ff=24, moe_every=2,
        router=functools.partial(TopKRouter, top_k=2, order="softmax_then_topk"), experts=GroupedExperts,
        balancers={"switch_aux": functools.partial(SwitchAuxLoss, coeff=0.01),
                   "z_loss": functools.partial(ZLoss, coeff=0.001)},
    )
    kwargs.update(overrides)
    return build_decoder(**kwargs)


def test_loss_is_lm_loss_plus_scaled_aux_losses_of_each_moe_layer():
    model = moe_model()
    ids = torch.randint(0, 50, (2, 12))
    out = model(ids[:, :-1], ids[:, 1:])
    assert out.logits.shape == (2, 11, 50)
    assert sorted(out.aux_losses) == ["layer1/switch_aux", "layer1/z_loss"]
    expected_lm = F.cross_entropy(out.logits.reshape(-1, 50), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.lm_loss, expected_lm)
    expected = expected_lm + 0.01 * out.aux_losses["layer1/switch_aux"] + 0.001 * out.aux_losses["layer1/z_loss"]
    assert torch.allclose(out.loss, expected)
    assert list(out.layer_aux) == [1]


def test_dense_model_has_no_moe_layers_and_no_aux_loss():
    model = build_decoder(**SMALL)
    ids = torch.randint(0, 50, (2, 8))
    out = model(ids[:, :-1], ids[:, 1:])
    assert model.moe_layers == [] and out.aux_losses == {} and torch.equal(out.loss, out.lm_loss)


def test_logits_at_a_position_ignore_later_tokens():
    model = moe_model().eval()
    ids = torch.randint(0, 50, (1, 10))
    changed = ids.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % 50
    assert torch.allclose(model(ids).logits[:, :6], model(changed).logits[:, :6], atol=1e-6)
    assert not torch.allclose(model(ids).logits[:, 6:], model(changed).logits[:, 6:])


def test_tied_and_untied_embeddings():
    tied = moe_model()
    assert tied.lm_head.weight is tied.embed.weight
    untied = moe_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed.weight


def test_each_moe_layer_gets_its_own_router_and_balancers():
    model = moe_model(moe_every=1)
    routers = [layer.router for layer in model.moe_layers]
    balancers = [layer.balancers["switch_aux"] for layer in model.moe_layers]
    assert len({id(r) for r in routers}) == 3 and len({id(b) for b in balancers}) == 3


def test_qk_norm_and_bf16_autocast_forward():
    model = moe_model(qk_norm=True)
    ids = torch.randint(0, 50, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids[:, :-1], ids[:, 1:])
    assert torch.isfinite(out.loss)
    assert out.layer_aux[1].routing.logits_TE.dtype == torch.float32


def test_a_gelu_backbone_gets_gelu_experts_with_biases_at_zero():
    model = moe_model(mlp="gelu")
    experts = model.moe_layers[0].experts
    assert experts.activation == "gelu" and isinstance(model.blocks[0].ffn, GELUMLP)
    assert experts.b_fc_EF.abs().sum() == 0 and experts.b_proj_ED.abs().sum() == 0
    # the output projection gets the depth-scaled init of every residual-stream projection
    assert experts.w_proj_EFD.std() < 0.75 * experts.w_fc_EDF.std()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d_model": 30}, "d_model=30 is not divisible by model.n_heads=4"),
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by model.n_kv_heads=3"),
        ({"num_experts": -1}, "num_experts=-1"),
        ({"qk_norm": True, "qk_norm_scope": "row"}, "qk_norm_scope='row' is not one of"),
        ({"mlp": "relu"}, "model.mlp='relu' is not one of"),
        ({"mlp": "gelu", "num_shared_experts": 1}, "model.num_shared_experts=1 with model.mlp='gelu': shared experts "
                                                   "are SwiGLU"),
        ({"router": functools.partial(TopKRouter, top_k=5, order="softmax_then_topk")}, "top_k=5 > num_experts=4"),
    ],
)
def test_bad_model_config_fails_at_build_time(overrides, message):
    with pytest.raises(ValueError, match=message):
        moe_model(**overrides)


def test_sequence_longer_than_max_seq_len_is_rejected():
    with pytest.raises(ValueError, match="exceeds model.max_seq_len=16"):
        moe_model()(torch.zeros(1, 17, dtype=torch.long))
