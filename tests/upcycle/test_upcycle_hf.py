"""Upcycling straight from a Hugging Face dense model directory (a tiny random Llama, offline)."""

from __future__ import annotations

import pytest
import torch

from moe import load_model
from moe.training import run

transformers = pytest.importorskip("transformers")


def test_upcycle_a_hf_llama_reproduces_it(smoke, tmp_path):
    config = transformers.LlamaConfig(  # the shape of configs/experiment/smoke.yaml's model
        vocab_size=257, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "llama", safe_serialization=True)
    run(smoke("init=upcycle", f"init.path={tmp_path / 'llama'}", "model.expert_d_ff=128",
              "router.order=topk_then_softmax", "trainer.max_steps=0", run_dir=tmp_path / "moe"))
    ids = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        expected = load_model(tmp_path / "llama")(ids).logits
        upcycled = load_model(tmp_path / "moe")(ids).logits
    torch.testing.assert_close(upcycled, expected, rtol=1e-5, atol=1e-5)
