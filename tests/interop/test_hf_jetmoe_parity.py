"""JetMoE (moe/interop/adapters/jetmoe.py): a tiny random JetMoeForCausalLM saved offline loads into our
MoA + MoE model with transformers' logits, and model=moa_tiny (shrunk) exports to JetMoeForCausalLM with
ours."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from hf_cases import assert_same_logits, randomise_weights

from moe import load_model
from moe.interop import save_hf
from moe.models.build import build_model
from moe.models.moa import MixtureOfAttentionHeads

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tied, rms_norm_eps", [(True, 1e-6), (False, 1e-5)], ids=["tied", "untied_final_eps"])
def test_a_jetmoe_checkpoint_loads_with_its_logits(tmp_path, tied, rms_norm_eps):
    cfg = transformers.JetMoeConfig(
        vocab_size=80, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_key_value_heads=2,
        kv_channels=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        rms_norm_eps=rms_norm_eps, tie_word_embeddings=tied, aux_loss_coef=0.01)
    torch.manual_seed(0)
    theirs = transformers.JetMoeForCausalLM(cfg).eval()
    randomise_weights(theirs)
    theirs.save_pretrained(tmp_path / "jetmoe", safe_serialization=True)
    ours = load_model(tmp_path / "jetmoe")
    assert all(isinstance(b.mixer, MixtureOfAttentionHeads) and b.is_moe for b in ours.blocks)
    assert ours.final_norm.eps == rms_norm_eps and ours.blocks[0].mixer_norm.eps == 1e-6
    assert ours.moe_layers[0].balancers["switch_aux"].coeff == pytest.approx(0.02)  # k x HF's coefficient
    assert_same_logits(ours, theirs, 80)


def test_a_moa_tiny_model_exports_to_transformers_with_its_logits(tmp_path):
    """model=moa_tiny (shrunk) with output biases, random weights everywhere → JetMoeForCausalLM."""
    config = compose("model=moa_tiny", "model.d_model=32", "model.expert_d_ff=24", "model.moa_head_dim=8",
                     "model.num_experts=4", "model.moa_num_experts=4", "model.num_shared_experts=0",
                     "model.max_seq_len=64", "model.moe_output_bias=true")
    ours = build_model(config).eval()
    randomise_weights(ours)
    save_hf(ours, tmp_path / "hf", config=config)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "JetMoeForCausalLM" and theirs.config.num_key_value_heads == 3
    assert_same_logits(ours, theirs, 257)
    back = load_model(tmp_path / "hf")  # and back: the same function again
    assert_same_logits(back, theirs, 257)


def test_moa_tiny_as_shipped_is_refused_naming_what_jetmoe_lacks(tmp_path):
    config = compose("model=moa_tiny")  # 8 attention experts, 16 FFN experts, a shared expert
    with pytest.raises(ValueError, match="attention experts 8 top-2 vs FFN experts 16 top-2.*a shared expert"):
        save_hf(build_model(config), tmp_path / "hf", config=config)
    assert not (tmp_path / "hf").exists()
