"""Quantized experts (moe/experts/quantized.py, moe/quantize.py): packing is lossless, each scheme's error
stays within its bound, the experts dispatch their dequantized stacks exactly, the error grows as the bits
shrink, a quantized checkpoint reloads bit for bit, and bad requests are refused by name."""

from __future__ import annotations

import functools

import pytest
import torch

from moe import load_model, quantize_experts
from moe.experts import GroupedExperts, QuantizedExperts
from moe.experts.quantized import pack, quantize, unpack
from moe.generation import generate
from moe.models.builder import build_decoder
from moe.quantize import save_quantized
from moe.routers import TopKRouter
from moe.types import Routing


@pytest.mark.parametrize("bits, low, high", [(8, -127, 127), (4, -8, 7), (2, -2, 1)])
def test_packing_is_lossless_over_the_whole_code_range(bits, low, high):
    codes = torch.randint(low, high + 1, (3, 16, 5), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    codes[0, 0, 0], codes[0, 1, 0] = low, high
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16 * bits // 8, 5)
    assert torch.equal(unpack(packed, bits), codes)


def test_each_scheme_stays_within_its_bound():
    W = torch.randn(2, 64, 8, generator=torch.Generator().manual_seed(1))
    for bits, group in ((8, 64), (4, 32), (2, 32)):
        codes, scale = quantize(W, bits, 32)
        restored = (codes.float().view(2, 64 // group, group, 8) * scale[:, :, None]).view(2, 64, 8)
        bound = scale.repeat_interleave(group, dim=1) / 2  # round to nearest: at most half a step
        assert (restored - W).abs().le(bound + 1e-6).all(), bits
    codes, scale = quantize(W, "ternary", 32)
    assert set(codes.unique().tolist()) <= {-1, 0, 1} and scale.shape == (2, 1, 8)
    kept = W.abs() > 0.7 * W.abs().mean(dim=1, keepdim=True)
    assert torch.equal(codes != 0, kept)


def test_quantized_experts_dispatch_their_dequantized_stacks():
    torch.manual_seed(0)
    plain = GroupedExperts(num_experts=4, d_model=32, d_ff=16)
    quantized = QuantizedExperts(num_experts=4, d_model=32, d_ff=16, bits=4, group_size=8)
    quantized.load_stacks({name: getattr(plain, name) for name in ("w_gate_EDF", "w_up_EDF", "w_down_EFD")})
    with torch.no_grad():
        for name, W in zip(("w_gate_EDF", "w_up_EDF", "w_down_EFD"), quantized.stacked_weights(torch.float32),
                           strict=True):
            getattr(plain, name).copy_(W)
    T = 12
    expert_ids = torch.arange(2 * T) % 4
    routing = Routing(token_ids_N=torch.arange(T).repeat_interleave(2), expert_ids_N=expert_ids,
                      weights_N=torch.rand(2 * T), logits_TE=torch.zeros(T, 4), probs_TE=torch.full((T, 4), 0.25),
                      tokens_per_expert_E=torch.bincount(expert_ids, minlength=4), num_dropped=0, top_k=2.0)
    x = torch.randn(T, 32)
    torch.testing.assert_close(quantized(x, routing), plain(x, routing), rtol=0, atol=0)


def build():
    torch.manual_seed(0)
    return build_decoder(vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=32,
                         num_experts=4, expert_d_ff=64, experts=GroupedExperts,
                         router=functools.partial(TopKRouter, top_k=2, order="topk_then_softmax")).eval()


def test_the_logit_error_grows_as_the_bits_shrink_and_decoding_still_matches():
    ids = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = build()(ids).logits
        errors = [float((quantize_experts(build(), bits=bits, group_size=16)(ids).logits - reference).abs().max())
                  for bits in (8, 4, 2)]
    assert 0 < errors[0] < errors[1] < errors[2] and errors[0] < 1e-2 * float(reference.abs().max())
    model = quantize_experts(build(), bits=4, group_size=16)
    with torch.no_grad():
        greedy = [int(model(ids[:1, :t + 1]).logits[0, -1].argmax()) for t in range(9, 13)]
    assert generate(model, [ids[0, :10].tolist()], max_new_tokens=1)[0] == greedy[:1]


def test_a_quantized_checkpoint_reloads_bit_for_bit(smoke, tmp_path):
    from moe.training import run

    run(smoke("trainer.max_steps=2", run_dir=tmp_path / "run"))
    out = save_quantized(tmp_path / "run", tmp_path / "q4", bits=4, group_size=16)
    direct = quantize_experts(load_model(tmp_path / "run"), bits=4, group_size=16)
    reloaded = load_model(out)
    assert isinstance(reloaded.blocks[0].ffn.experts, QuantizedExperts)
    ids = torch.randint(0, 257, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, direct(ids).logits, rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="exists"):
        save_quantized(tmp_path / "run", out, bits=8)


@pytest.mark.parametrize("kwargs, message", [(dict(bits=3), "bits=3 is not supported"),
                                             (dict(bits=4, group_size=0), "group_size=0 must be")])
def test_bad_quantization_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize_experts(build(), **kwargs)
    dense = build_decoder(vocab_size=61, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=16)
    with pytest.raises(ValueError, match="no routed FFN experts"):
        quantize_experts(dense, bits=8)
