"""Zamba's shared attention block (moe/models/shared_attention.py): where it applies, that its output feeds
the mixer's input and not the residual stream, that its weights are shared and counted once (ABAB with two
blocks), that a zero projection leaves the backbone's function unchanged, and model=zamba_tiny trains and
reloads."""

from __future__ import annotations

import functools

import pytest
import torch

from moe.experts import GroupedExperts
from moe.models.builder import build_decoder
from moe.models.shared_attention import SharedAttentionBlock, shared_block_indices
from moe.routers import TopKRouter


def build(**overrides):
    options = dict(vocab_size=50, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=16,
                   attention="mamba", mamba_d_state=4, shared_attention_every=2, shared_attention_offset=1,
                   num_experts=4, expert_d_ff=16,
                   router=functools.partial(TopKRouter, top_k=2, order="topk_then_softmax"), experts=GroupedExperts)
    options.update(overrides)
    torch.manual_seed(0)
    return build_decoder(**options).double()


IDS = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))


def test_zambas_period_and_offset():
    assert shared_block_indices(n_layers=12, every=6, offset=4) == [4, 10]
    assert shared_block_indices(n_layers=4, every=None, offset=0) == []


def test_the_shared_output_enters_the_mixer_input_only():
    """Block i: x + mixer(norm(x + W_i·shared([x; e]))) + FFN — the residual stream itself never gets W_i·t."""
    model = build()
    block = model.blocks[1]
    x_BSD = torch.randn(2, 16, 32, dtype=torch.float64)
    e_BSD = torch.randn(2, 16, 32, dtype=torch.float64)
    t_BSD = block.mixer_input.proj(block.mixer_input.shared(x_BSD, e_BSD))
    after_mixer = x_BSD + block.mixer(block.mixer_norm(x_BSD + t_BSD))
    expected, _ = block.ffn(block.ffn_norm(after_mixer))
    y_BSD, _, _ = block(x_BSD, IDS, e_BSD)
    torch.testing.assert_close(y_BSD, after_mixer + expected, rtol=1e-12, atol=1e-12)


def test_the_shared_block_is_one_module_counted_once_and_alternates_with_two():
    one, plain = build(), build(shared_attention_every=None)
    assert one.blocks[1].mixer_input.shared is one.blocks[3].mixer_input.shared
    assert one.blocks[1].mixer_input.proj is not one.blocks[3].mixer_input.proj
    shared_params = sum(p.numel() for p in one.blocks[1].mixer_input.shared.parameters())
    projections = 2 * 32 * 32
    total = sum(p.numel() for p in one.parameters())
    assert total == sum(p.numel() for p in plain.parameters()) + shared_params + projections
    two = build(shared_attention_every=1, shared_attention_offset=0, shared_attention_blocks=2)  # ABAB, 4 blocks
    shared = [block.mixer_input.shared for block in two.blocks]
    assert shared[0] is shared[2] and shared[1] is shared[3] and shared[0] is not shared[1]


def test_zero_projections_give_the_backbone_without_shared_attention():
    with_shared, plain = build(), build(shared_attention_every=None)
    missing, unexpected = plain.load_state_dict(with_shared.state_dict(), strict=False)
    assert not missing and all(".mixer_input." in key for key in unexpected)
    with torch.no_grad():
        assert not torch.allclose(with_shared(IDS).logits, plain(IDS).logits)
        for block in with_shared.blocks:
            if block.mixer_input is not None:
                block.mixer_input.proj.weight.zero_()
        torch.testing.assert_close(with_shared(IDS).logits, plain(IDS).logits, rtol=0, atol=0)


def test_every_application_trains_the_shared_weights():
    model = build()
    model(IDS, targets=IDS).loss.backward()
    shared: SharedAttentionBlock = model.blocks[1].mixer_input.shared
    assert shared.attention.q_proj.weight.grad.abs().sum() > 0 and shared.mlp.down.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides, message", [
    (dict(shared_attention_every=0), "model.shared_attention_every=0 must be >= 1"),
    (dict(shared_attention_offset=2), r"model.shared_attention_offset=2 must lie in \[0, shared_attention_every=2\)"),
    (dict(shared_attention_blocks=0), "model.shared_attention_blocks=0 must be >= 1"),
    (dict(n_heads=5, n_kv_heads=5), "model.n_heads=5 must divide 2 x model.d_model=64"),
])
def test_bad_shared_attention_options_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_zamba_tiny_trains_and_reloads(smoke, tmp_path):
    import json

    from moe import load_model
    from moe.training import run

    summary = run(smoke("model=zamba_tiny", "model.n_layers=4", "model.expert_d_ff=64", "trainer.max_steps=6",
                        "trainer.eval_every=6", "trainer.save_every=6", "trainer.log_every=1", "optim.lr=3e-3",
                        run_dir=tmp_path / "run"))
    model = load_model(tmp_path / "run")
    assert [block.mixer_input is not None for block in model.blocks] == [False, True, False, True]
    assert model.blocks[1].mixer_input.shared is model.blocks[3].mixer_input.shared  # still one module
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert summary["step"] == 6 and losses[-1] < losses[0]


def test_a_shared_attention_model_is_refused_by_the_hf_export(tmp_path):
    from moe.interop import save_hf

    with pytest.raises(ValueError, match="model.shared_attention_every is set"):
        save_hf(build(shared_attention_every=2).float(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_lora_adapters_start_as_nothing_and_make_each_application_its_own():
    with_lora, plain = build(shared_attention_lora_rank=2), build()
    missing, unexpected = plain.load_state_dict(with_lora.state_dict(), strict=False)
    assert not missing and all(".lora." in key for key in unexpected)
    with torch.no_grad():
        torch.testing.assert_close(with_lora(IDS).logits, plain(IDS).logits, rtol=0, atol=0)  # B = 0 at init
    first, second = with_lora.blocks[1].mixer_input, with_lora.blocks[3].mixer_input
    assert first.lora is not second.lora and first.shared is second.shared
    x_BSD, e_BSD = torch.randn(2, 16, 32, dtype=torch.float64), torch.randn(2, 16, 32, dtype=torch.float64)
    with torch.no_grad():
        second.proj.weight.copy_(first.proj.weight)
        torch.testing.assert_close(first(x_BSD, e_BSD), second(x_BSD, e_BSD))  # same weights, same output
        for adapter in first.lora.values():
            adapter.up.weight.normal_()
        assert not torch.allclose(first(x_BSD, e_BSD), second(x_BSD, e_BSD))
    lora_params = sum(p.numel() for p in first.lora.parameters())
    assert lora_params == 2 * (64 + 64) + 2 * (64 + 64) + 2 * 2 * (32 + 48)  # rank 2: q, kv 64->64, gate, up 32->48
