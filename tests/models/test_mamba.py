"""The Mamba-1 mixer: the chunked scan equals the token-by-token recurrence (outputs, final state and
gradients), strong decay falls back safely, the mixer is causal, and a Mamba-MoE decoder trains."""

from __future__ import annotations

import json

import pytest
import torch
from scan_parity import assert_scan_matches_reference

from moe.models.mamba import MAX_LOG_DECAY, MambaMixer, _too_steep, selective_scan_chunked, selective_scan_reference


def scan_inputs(B=2, S=45, d_inner=6, N=4, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, d_inner, generator=g, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(B, S, d_inner, generator=g, dtype=torch.float64)) * dt_scale
    A = -torch.exp(torch.randn(d_inner, N, generator=g, dtype=torch.float64))
    Bm, Cm = torch.randn(B, S, N, generator=g, dtype=torch.float64), torch.randn(B, S, N, generator=g,
                                                                                 dtype=torch.float64)
    return x, dt, A, Bm, Cm


@pytest.mark.parametrize("chunk", [1, 7, 16, 64])
def test_chunked_scan_equals_the_recurrence_with_its_gradients(chunk):
    assert_scan_matches_reference(selective_scan_chunked, selective_scan_reference, scan_inputs(), chunk)


def test_float32_chunks_match_the_float64_recurrence():
    x, dt, A, Bm, Cm = scan_inputs(S=70)
    y, h = selective_scan_chunked(x.float(), dt.float(), A.float(), Bm.float(), Cm.float())
    y_ref, h_ref = selective_scan_reference(x, dt, A, Bm, Cm)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref.float(), rtol=1e-5, atol=1e-5)


def test_a_chunk_that_decays_past_the_range_of_exp_takes_the_token_loop():
    """Δ·A of ~−100 per token: a chunk decays by e^-800 or more, beyond exp's range; the result stays exact."""
    x, dt, A, Bm, Cm = scan_inputs(dt_scale=100.0)
    y, h = selective_scan_chunked(x.float(), dt.float(), A.float(), Bm.float(), Cm.float())
    y_ref, h_ref = selective_scan_reference(x, dt, A, Bm, Cm)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_ref.float(), rtol=1e-4, atol=1e-4)


def test_a_chunk_too_steep_for_exp_is_halved_before_it_takes_the_token_loop():
    """float32, chunk 16, A = −1: tokens 0–15 decay by 4 each (Λ −64 over 16, −32 per half: the chunked
    form), tokens 16–31 by 8 each (−128 per 16 tokens, −64 per half of 8: chunked halves), 32–47 by 20 (−160
    per 8 tokens, below the shortest span: the token loop). Each path agrees with the float64 recurrence."""
    x, dt, A, Bm, Cm = scan_inputs(B=2, S=48, d_inner=3, N=2)
    dt[:, :16], dt[:, 16:32], dt[:, 32:] = 4.0, 8.0, 20.0
    A = -torch.ones_like(A)
    steep = _too_steep(dt.float() * A.float().min(1).values, 16, MAX_LOG_DECAY[torch.float32])
    assert steep == {16: [False, True, True], 8: [False, False, False, False, True, True]}
    y, h = selective_scan_chunked(x.float(), dt.float(), A.float(), Bm.float(), Cm.float(), chunk=16)
    y_ref, h_ref = selective_scan_reference(x, dt, A, Bm, Cm)
    torch.testing.assert_close(y, y_ref.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, h_ref.float(), rtol=1e-5, atol=1e-5)
    assert_scan_matches_reference(selective_scan_chunked, selective_scan_reference, (x, dt, A, Bm, Cm), 16)


def test_the_scan_stays_float32_under_bf16_autocast():
    """Autocast would run the chunk's cumulative-sum matmul and the contraction with C in bf16 (~1e-2 off)."""
    x, dt, A, Bm, Cm = (t.float() for t in scan_inputs(S=40, dt_scale=0.1))
    y, h = selective_scan_chunked(x, dt, A, Bm, Cm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_autocast, h_autocast = selective_scan_chunked(x, dt, A, Bm, Cm)
    assert y_autocast.dtype == torch.float32
    torch.testing.assert_close(y_autocast, y, rtol=0, atol=0)
    torch.testing.assert_close(h_autocast, h, rtol=0, atol=0)


@pytest.mark.slow
def test_the_compiled_scan_equals_the_recurrence_with_its_gradients():
    """trainer.compile_mamba: the same chunks through torch.compile (float64, so to the same tolerance)."""
    def compiled(*inputs, chunk):
        return selective_scan_chunked(*inputs, chunk=chunk, compiled=True)
    assert_scan_matches_reference(compiled, selective_scan_reference, scan_inputs(S=40), 16)


def test_the_mixer_is_causal_and_continues_a_state():
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=16, d_state=4, expand=2, chunk=8, inner_norms=True)
    u = torch.randn(2, 20, 16)
    changed = u.clone()
    changed[:, 12:] += 1.0  # the future of token 11
    out, out_changed = mixer(u), mixer(changed)
    torch.testing.assert_close(out[:, :12], out_changed[:, :12])
    assert not torch.allclose(out[:, 12:], out_changed[:, 12:])
    assert mixer.dt_rank == 1 and mixer.A_log.shape == (32, 4)
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias.detach())
    assert 1e-3 <= float(dt.min()) and float(dt.max()) <= 0.1 + 1e-6  # Mamba's Δ init


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"d_state": 0}, "model.mamba_d_state=0 must be an integer >= 1"),
    ({"dt_rank": "big"}, "model.mamba_dt_rank='big' must be 'auto' or an integer >= 1"),
])
def test_bad_mixer_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MambaMixer(d_model=16, **kwargs)


def test_a_mamba_moe_decoder_trains_and_reloads(smoke, tmp_path):
    """model.attention=mamba: every block a Mamba mixer before its MoE (BlackMamba's pairing)."""
    from moe import load_model
    from moe.training import run

    summary = run(smoke("model.attention=mamba", "trainer.max_steps=6", "trainer.eval_every=6",
                        "trainer.save_every=6", "optim.lr=3e-3", run_dir=tmp_path / "run"))
    model = load_model(tmp_path / "run")
    assert all(isinstance(block.mixer, MambaMixer) for block in model.blocks) and len(model.moe_layers) == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in records if "lm_loss" in r]
    assert summary["step"] == 6 and losses[-1] < losses[0]
    ids = torch.randint(0, 257, (1, 30))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    from moe.interop import save_hf

    with pytest.raises(ValueError, match="exports only as Jamba or GraniteMoeHybrid: its other blocks must be GQA"):
        save_hf(tmp_path / "run", tmp_path / "hf")


def test_the_mixer_computes_transformers_jamba_mamba_mixer():
    """Parity with HF's JambaMambaMixer (its PyTorch path) on random weights, Jamba's inner norms included:
    the same parameter names but for the norms (dt_layernorm → inner_norms.dt, ...)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.JambaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, num_experts=1, attn_layer_period=2,
                                   attn_layer_offset=1, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
                                   mamba_dt_rank=4, rms_norm_eps=1e-6)
    torch.manual_seed(0)
    theirs = transformers.JambaForCausalLM(cfg).model.layers[0].mamba.eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if name != "A_log":
                param.copy_((1.0 if "layernorm" in name else 0.0) + 0.3 * torch.randn_like(param))
    ours = MambaMixer(d_model=32, d_state=8, d_conv=4, expand=2, dt_rank=4, inner_norms=True, norm_eps=1e-6)
    names = {"dt_layernorm": "inner_norms.dt", "b_layernorm": "inner_norms.B", "c_layernorm": "inner_norms.C"}
    ours.load_state_dict({next((k.replace(a, b) for a, b in names.items() if a in k), k): v
                          for k, v in theirs.state_dict().items()})
    u = torch.randn(2, 37, 32)
    with torch.no_grad():
        expected = theirs(u)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(ours(u), expected, rtol=1e-4, atol=1e-5)
