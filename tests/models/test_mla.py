"""Multi-head latent attention: the paper's formulas, causality, the model.attention=mla option (init, errors)
and a few training steps through the Hydra config path."""

from __future__ import annotations

import math

import pytest
import torch

from moe.models import build_decoder
from moe.models.attention import apply_rope
from moe.models.build import build_model
from moe.models.mla import MLAttention

SIZES = dict(q_lora_rank=12, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5)
SMALL = dict(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=16)


def reference_mla(mla: MLAttention, x_BSD: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2 §2.1 written out head by head with an explicit causal softmax."""
    B, S, _ = x_BSD.shape
    H, n, r, v = mla.n_heads, mla.nope_dim, mla.rope_dim, mla.v_dim
    q = mla.q_proj(x_BSD) if mla.q_proj is not None else mla.q_b_proj(mla.q_a_norm(mla.q_a_proj(x_BSD)))
    c_kv, k_rope = mla.kv_a_proj(x_BSD).split((mla.kv_lora_rank, r), dim=-1)
    kv = mla.kv_b_proj(mla.kv_a_norm(c_kv)).view(B, S, H, n + v)
    cos, sin = mla.rope_cos_SR[:S], mla.rope_sin_SR[:S]
    k_rope = apply_rope(k_rope, cos, sin)  # [B, S, r]: one rotated key part for all heads
    heads = []
    for h in range(H):
        q_h = q.view(B, S, H, n + r)[:, :, h]
        q_h = torch.cat((q_h[..., :n], apply_rope(q_h[..., n:], cos, sin)), dim=-1)
        k_h = torch.cat((kv[:, :, h, :n], k_rope), dim=-1)
        scores = q_h @ k_h.transpose(1, 2) / math.sqrt(n + r)
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(scores.softmax(-1) @ kv[:, :, h, n:])
    return mla.o_proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("q_lora_rank", [12, None])
def test_mla_matches_the_papers_formulas(q_lora_rank):
    mla = MLAttention(d_model=32, n_heads=4, max_seq_len=16, **{**SIZES, "q_lora_rank": q_lora_rank})
    for p in mla.parameters():  # non-trivial norm gains too
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(mla(x), reference_mla(mla, x), rtol=1e-5, atol=1e-6)
    assert (mla.q_proj is None) == (q_lora_rank is not None)


def test_mla_is_causal():
    mla = MLAttention(d_model=32, n_heads=4, max_seq_len=16, **SIZES)
    x = torch.randn(1, 10, 32)
    changed = x.clone()
    changed[:, 6:] += 1.0
    torch.testing.assert_close(mla(x)[:, :6], mla(changed)[:, :6])
    assert not torch.allclose(mla(x)[:, 6:], mla(changed)[:, 6:])


def test_decoder_mla_names_and_residual_init():
    gqa = build_decoder(**SMALL, n_kv_heads=2)
    assert "blocks.0.mixer.kv_proj.weight" in dict(gqa.named_parameters())  # default unchanged
    model = build_decoder(**{**SMALL, "d_model": 256, "n_layers": 8}, attention="mla", q_lora_rank=128,
                      kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32)
    attention = model.blocks[0].mixer
    assert isinstance(attention, MLAttention)
    # o_proj writes into the residual stream: std init_std/sqrt(2L), the others init_std
    assert attention.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert attention.kv_b_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(attention.kv_a_norm.weight, torch.ones(128))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention": "xla"}, "model.attention='xla' is not one of ('gqa', 'mla', 'mamba', 'mamba2', 'moa')"),
        ({"attention": "mla", "kv_lora_rank": None}, "model.kv_lora_rank=None must be an integer >= 1"),
        ({"attention": "mla", "qk_rope_head_dim": 3}, "model.qk_rope_head_dim=3 must be even"),
        ({"attention": "mla", "q_lora_rank": 0}, "model.q_lora_rank=0 must be >= 1"),
        ({"attention": "mla", "qk_norm": True}, "model.qk_norm=True is not supported with a mla mixer"),
    ],
)
def test_bad_mla_options_fail_at_build_time(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_decoder(**SMALL, **{**SIZES, **overrides})


def test_attention_mla_trains_through_the_config_path():
    from conftest import compose

    config = compose("experiment=smoke", "model.attention=mla", "model.q_lora_rank=24", "model.kv_lora_rank=16")
    model = build_model(config)
    assert isinstance(model.blocks[0].mixer, MLAttention) and model.moe_layers
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, config["model"]["vocab_size"], (4, 33))
    before = model.blocks[0].mixer.kv_b_proj.weight.detach().clone()
    losses = []
    for _ in range(3):
        out = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad is not None for n, p in model.named_parameters() if ".mixer." in n)
        optimizer.step()
        model.on_optimizer_step()
        losses.append(out.loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert not torch.equal(before, model.blocks[0].mixer.kv_b_proj.weight)
