"""Jamba import (moe/interop/adapters/jamba.py): a tiny random JambaForCausalLM saved offline loads into
our Mamba/attention hybrid with MoE and computes transformers' logits."""

from __future__ import annotations

import pytest
import torch

from moe import load_model
from moe.models.attention import Attention
from moe.models.mamba import MambaMixer

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("num_experts", [4, 1], ids=["moe", "dense"])
def test_a_jamba_checkpoint_loads_with_its_logits(tmp_path, num_experts):
    cfg = transformers.JambaConfig(
        vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, num_experts=num_experts, num_experts_per_tok=2, attn_layer_period=4,
        attn_layer_offset=2, expert_layer_period=2, expert_layer_offset=1, mamba_d_state=8, mamba_d_conv=4,
        mamba_expand=2, mamba_dt_rank=4, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(0)
    theirs = transformers.JambaForCausalLM(cfg).eval()
    with torch.no_grad():  # every tensor counts: norms away from 1, routers and experts distinct
        for name, param in theirs.named_parameters():
            if name.endswith("A_log"):
                continue
            param.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn_like(param))
    theirs.save_pretrained(tmp_path / "jamba", safe_serialization=True)
    ours = load_model(tmp_path / "jamba")
    assert [type(b.mixer) for b in ours.blocks] == [MambaMixer, MambaMixer, Attention, MambaMixer]
    assert ours.moe_indices == ([1, 3] if num_experts > 1 else [])
    ids = torch.randint(0, 80, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_jamba_tiny_model_exports_to_transformers_with_its_logits(tmp_path):
    """model=jamba_tiny (shrunk), random weights everywhere, router in Jamba's order → JambaForCausalLM."""
    from conftest import compose

    from moe.interop import save_hf
    from moe.models.build import build_model

    config = compose("model=jamba_tiny", "router.order=softmax_then_topk", "model.d_model=32", "model.n_heads=4",
                     "model.n_kv_heads=2", "model.d_ff=48", "model.expert_d_ff=48", "model.max_seq_len=64",
                     "model.mamba_d_state=8")
    torch.manual_seed(0)
    ours = build_model(config).eval()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if not name.endswith("A_log"):
                param.copy_((1.0 if "norm" in name else 0.0) + 0.2 * torch.randn_like(param))
    save_hf(ours, tmp_path / "hf", config=config)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "JambaForCausalLM" and theirs.config.attn_layer_offset == 2
    ids = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_a_renormalising_router_is_refused_by_the_jamba_export(tmp_path):
    from conftest import compose

    from moe.interop import save_hf
    from moe.models.build import build_model

    config = compose("model=jamba_tiny")  # the default router renormalises: Jamba's does not
    with pytest.raises(ValueError, match="router.order=topk_then_softmax \\(jamba does not renormalise"):
        save_hf(build_model(config), tmp_path / "hf", config=config)
    assert not (tmp_path / "hf").exists()
