"""A tiny random HF GPT-2 (LayerNorm, learned positions, GELU MLP, Conv1D weights) loads into our
backbone with transformers' logits; its MLPs upcycle with upcycle_module."""

from __future__ import annotations

import pytest
import torch

from moe import load_model
from moe.upcycle import upcycle_module

transformers = pytest.importorskip("transformers")


def save_tiny_gpt2(path, **overrides):
    config = transformers.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=4, n_positions=48,
                                     initializer_range=0.2, **overrides)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_gpt2_logits_match_transformers(tmp_path, tied):
    reference = save_tiny_gpt2(tmp_path, tie_word_embeddings=tied)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_mlps_upcycle_with_upcycle_module(tmp_path):
    save_tiny_gpt2(tmp_path)
    model = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
        replaced = upcycle_module(model, match=r"blocks\.\d+\.ffn$", num_experts=4, top_k=2)
        assert replaced == ["blocks.0.ffn", "blocks.1.ffn"]
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)


def test_unsupported_gpt2_activation(tmp_path):
    save_tiny_gpt2(tmp_path, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function='relu' is not supported"):
        load_model(tmp_path)
