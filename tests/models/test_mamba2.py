"""The Mamba-2 (SSD) mixer: the chunked dual form equals the token-by-token recurrence, and the mixer
computes transformers' Mamba2Mixer."""

from __future__ import annotations

import pytest
import torch
from scan_parity import assert_scan_matches_reference

from moe.models.mamba2 import Mamba2Mixer, ssd_scan_chunked, ssd_scan_reference


def ssd_inputs(B=2, S=45, H=4, P=3, G=2, N=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, H, P, generator=g, dtype=torch.float64)
    dt = torch.nn.functional.softplus(torch.randn(B, S, H, generator=g, dtype=torch.float64))
    A = -torch.exp(torch.randn(H, generator=g, dtype=torch.float64))
    Bm, Cm = (torch.randn(B, S, G, N, generator=g, dtype=torch.float64) for _ in range(2))
    return x, dt, A, Bm, Cm


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_the_dual_form_equals_the_recurrence_with_its_gradients(chunk):
    assert_scan_matches_reference(ssd_scan_chunked, ssd_scan_reference, ssd_inputs(), chunk)


def test_the_mixer_computes_transformers_mamba2_mixer():
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

    cfg = transformers.Mamba2Config(hidden_size=32, state_size=8, expand=2, head_dim=16, num_heads=4, n_groups=2,
                                    conv_kernel=4, chunk_size=16, layer_norm_epsilon=1e-6, use_bias=False,
                                    use_conv_bias=True, num_hidden_layers=1)
    torch.manual_seed(0)
    theirs = HFMamba2Mixer(cfg, layer_idx=0).eval()
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if name != "A_log":
                param.copy_((1.0 if name == "norm.weight" else 0.0) + 0.3 * torch.randn_like(param))
    ours = Mamba2Mixer(d_model=32, d_state=8, expand=2, head_dim=16, n_groups=2, norm_eps=1e-6, chunk=8)
    ours.load_state_dict({"norm_weight" if k == "norm.weight" else k: v for k, v in theirs.state_dict().items()})
    u = torch.randn(2, 37, 32)
    with torch.no_grad():
        expected = theirs(u)
        expected = expected[0] if isinstance(expected, tuple) else expected
        torch.testing.assert_close(ours(u), expected, rtol=1e-4, atol=1e-5)


def test_a_mamba2_hybrid_trains(smoke, tmp_path):
    """model.attention=mamba2 through the config path (smoke size): Mamba-2 before each block's MoE."""
    from moe import load_model
    from moe.training import run

    summary = run(smoke("model.attention=mamba2", "model.mamba_head_dim=16", "trainer.max_steps=4",
                        "trainer.eval_every=4", "trainer.save_every=4", run_dir=tmp_path / "run"))
    model = load_model(tmp_path / "run")
    assert summary["step"] == 4 and all(isinstance(b.mixer, Mamba2Mixer) for b in model.blocks)
    assert model.blocks[0].mixer.n_heads == 8  # expand 2 x d_model 64 / head_dim 16


def test_bad_head_sizes_are_named():
    with pytest.raises(ValueError, match="model.mamba_head_dim=48 must divide expand x d_model=64"):
        Mamba2Mixer(d_model=32, head_dim=48)
