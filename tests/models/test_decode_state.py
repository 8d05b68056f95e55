"""Incremental decoding (moe/models/decode_state.py): for every token mixer and hybrid, feeding a sequence
one token at a time (and as a prompt then single tokens) through ``forward(ids, state=...)`` gives the logits
of one full forward, within 1e-5 in float32."""

from __future__ import annotations

import functools

import pytest
import torch

from moe.experts import GroupedExperts
from moe.models.builder import build_decoder
from moe.routers import ExpertChoiceRouter, TopKRouter

V, S = 61, 23

ARCHITECTURES = {  # every mixer, the positions, and the hybrids' layouts
    "gqa": {},
    "gqa_qk_norm_learned_positions": {"qk_norm": True, "position": "learned"},
    "mla": {"attention": "mla", "q_lora_rank": 12, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4,
            "v_head_dim": 6},
    "moa": {"attention": "moa", "moa_heads": 2, "moa_head_dim": 8},
    "mamba": {"attention": "mamba"},
    "mamba2": {"attention": "mamba2", "mamba_head_dim": 16},
    "jamba_layout": {"attention": "gqa", "ssm": "mamba", "attention_every": 2, "attention_offset": 1,
                     "position": "none", "mamba_inner_norms": True, "moe_every": 2},
    "zamba_layout": {"attention": "mamba", "shared_attention_every": 2, "shared_attention_offset": 1},
    "zamba2_layout_lora": {"attention": "mamba2", "mamba_head_dim": 16, "shared_attention_every": 1,
                           "shared_attention_blocks": 2, "shared_attention_lora_rank": 2},
}


def build(options: dict, router=None):
    torch.manual_seed(0)
    model = build_decoder(vocab_size=V, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=32,
                          mamba_d_state=4, num_experts=4, expert_d_ff=16, experts=GroupedExperts,
                          router=router or functools.partial(TopKRouter, top_k=2, order="topk_then_softmax"),
                          **options)
    with torch.no_grad():  # larger weights than the init, so a wrong position or a stale state shows
        for name, param in model.named_parameters():
            if ".lora." in name and name.endswith("up.weight"):
                param.normal_(0.0, 0.3)  # adapters away from their zero start
            elif param.dim() > 1 and "A_log" not in name:
                param.mul_(4.0)
    return model.eval()


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("pieces", [[1] * S, [7, 1, 1, 5, 9]], ids=["token_by_token", "prompt_then_pieces"])
def test_decoding_in_pieces_gives_the_full_forward(name, pieces):
    model = build(ARCHITECTURES[name])
    ids_BS = torch.randint(0, V, (3, S), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full_BSV = model(ids_BS).logits
        state, start, parts = model.decode_state(), 0, []
        for length in pieces:
            parts.append(model(ids_BS[:, start:start + length], state=state).logits)
            start += length
    assert start == S and state.position == S
    torch.testing.assert_close(torch.cat(parts, dim=1), full_BSV, rtol=1e-5, atol=1e-5 * float(full_BSV.abs().max()))


def test_the_state_holds_what_each_mixer_needs():
    state = build(ARCHITECTURES["zamba_layout"]).decode_state()
    model = build(ARCHITECTURES["zamba_layout"])
    with torch.no_grad():
        model(torch.randint(0, V, (2, 5)), state=state)
    assert set(state.caches["0"]) == {"conv", "seen", "ssm"} and state.caches["0"]["conv"].shape == (2, 64, 3)
    assert set(state.caches["1.input"]) == {"k", "v"} and state.caches["1.input"]["k"].shape[-2] == 5
    assert state.caches["0.input"] == {}  # block 0 applies no shared block


@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
def test_expert_choice_cannot_decode_incrementally():
    with pytest.raises(ValueError, match="ExpertChoiceRouter picks tokens per expert"):
        build({}, router=functools.partial(ExpertChoiceRouter)).decode_state()


def test_decoding_past_max_seq_len_is_refused():
    model = build({})
    state = model.decode_state()
    with torch.no_grad():
        model(torch.zeros(1, 30, dtype=torch.long), state=state)
        with pytest.raises(ValueError, match="sequence length 33 exceeds model.max_seq_len=32"):
            model(torch.zeros(1, 3, dtype=torch.long), state=state)
