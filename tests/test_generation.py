"""Generation (moe/generation.py): cached greedy decoding equals re-running the full forward, a prompt gives
the same tokens alone or left-padded in a batch for every mixer, greedy tokens equal transformers'
``generate``, and the sampling filters keep exactly the tokens they should."""

from __future__ import annotations

import functools

import pytest
import torch

from moe.experts import GroupedExperts
from moe.generation import filter_logits, generate, next_tokens
from moe.models.builder import build_decoder
from moe.routers import TopKRouter

V = 61
ARCHITECTURES = {
    "gqa": {},
    "gqa_learned_positions": {"position": "learned"},
    "mla": {"attention": "mla", "q_lora_rank": 12, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
            "v_head_dim": 6},
    "moa": {"attention": "moa", "moa_heads": 2, "moa_head_dim": 8},
    "mamba": {"attention": "mamba", "mamba_conv_bias": True, "mamba_proj_bias": True},
    "mamba2": {"attention": "mamba2", "mamba_head_dim": 16},
    "zamba2_layout": {"attention": "mamba2", "mamba_head_dim": 16, "shared_attention_every": 2,
                      "shared_attention_offset": 1},
}
PROMPTS = [[5, 9, 2, 44, 7, 1, 30], [12, 3], [8, 8, 50, 21, 2]]


def build(options: dict):
    torch.manual_seed(0)
    model = build_decoder(vocab_size=V, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=40,
                          mamba_d_state=4, num_experts=4, expert_d_ff=16, experts=GroupedExperts,
                          router=functools.partial(TopKRouter, top_k=2, order="topk_then_softmax"), **options)
    with torch.no_grad():  # sharper than the init, so the greedy choices are far from ties
        for name, param in model.named_parameters():
            if param.dim() > 1 and "A_log" not in name:
                param.mul_(5.0)
    return model.eval()


def greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_cached_greedy_decoding_equals_the_full_forward_and_batching_changes_nothing(name):
    model = build(ARCHITECTURES[name])
    alone = [generate(model, [prompt], max_new_tokens=8)[0] for prompt in PROMPTS]
    assert alone == [greedy_without_cache(model, prompt, 8) for prompt in PROMPTS]
    assert generate(model, PROMPTS, max_new_tokens=8) == alone  # left-padded together


def test_stop_tokens_end_a_sequence_and_keep_the_stop_token():
    model = build({})
    free = generate(model, PROMPTS, max_new_tokens=8)
    stop = free[0][3]
    stopped = generate(model, PROMPTS, max_new_tokens=8, stop_tokens=[stop])
    assert stopped[0] == free[0][:free[0].index(stop) + 1]
    for full, cut in zip(free, stopped, strict=True):
        assert cut == (full[:full.index(stop) + 1] if stop in full else full)


def test_sampling_is_seeded_and_filters_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda filtered: torch.isfinite(filtered[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [0, 1]
    assert kept(filter_logits(logits, top_p=0.5)) == [0]           # 0.5 alone reaches p
    assert kept(filter_logits(logits, top_p=0.79)) == [0, 1]       # 0.5 + 0.3 = 0.8 ≥ 0.79
    assert kept(filter_logits(logits, top_p=0.81)) == [0, 1, 2]
    assert kept(filter_logits(logits, top_k=3, top_p=0.99)) == [0, 1, 2]
    draws = lambda seed: [int(next_tokens(logits, temperature=1.0, top_k=2,  # noqa: E731
                                          generator=torch.Generator().manual_seed(seed))) for _ in range(1)]
    assert draws(3) == draws(3)
    counts = torch.bincount(torch.stack([next_tokens(logits, temperature=1.0, top_p=0.79,
                                                     generator=torch.Generator().manual_seed(s)) for s in range(400)])
                            .flatten(), minlength=4)
    assert counts[2] == counts[3] == 0 and 0.5 < counts[0] / 400 < 0.75  # 0.5 / 0.8 = 0.625 renormalised
    model = build({})
    sampled = generate(model, PROMPTS, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=1)
    assert sampled == generate(model, PROMPTS, max_new_tokens=6, temperature=0.8, top_p=0.9, seed=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=40), "a prompt of 7 tokens \\+ max_new_tokens=40 exceeds the model's max_seq_len=40"),
    (dict(max_new_tokens=4, temperature=-1), "temperature=-1 must be a number >= 0"),
    (dict(max_new_tokens=4, top_k=0), "top_k=0 must be an integer >= 1"),
    (dict(max_new_tokens=4, top_p=1.5), r"top_p=1.5 must lie in \(0, 1\]"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be an integer >= 1"),
])
def test_bad_generation_requests_fail_before_any_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(build({}), PROMPTS, **kwargs)


def test_greedy_tokens_equal_transformers_generate(tmp_path):
    """A tiny random Mixtral saved offline: our imported model's greedy continuation = HF's generate."""
    transformers = pytest.importorskip("transformers")
    from moe import load_model

    cfg = transformers.MixtralConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64, tie_word_embeddings=False,
                                     bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    theirs = transformers.MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():  # norms at 1, the rest random and sharp
            if "norm" not in name:
                param.normal_(0.0, 0.5 if "gate" in name else 0.15)
    theirs.save_pretrained(tmp_path / "mixtral")
    ours = load_model(tmp_path / "mixtral")
    prompt = PROMPTS[0]
    expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                               attention_mask=torch.ones(1, len(prompt), dtype=torch.long))[0, len(prompt):].tolist()
    assert len(set(expected)) > 3  # a continuation, not one token repeated
    assert generate(ours, [prompt], max_new_tokens=10)[0] == expected
