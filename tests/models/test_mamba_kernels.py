"""Mamba-1's CUDA kernel path (moe/models/mamba_kernels.py).

On a CPU the kernels are stood in for by functions written from their documented interface
(channels-first u, Δ [B, d_inner, S], B and C [B, N, S], conv weight [d_inner, d_conv]): the mixer's
layout conversions must then give exactly the PyTorch path's outputs and gradients. On a GPU with
``mamba_ssm`` and ``causal_conv1d`` installed, the real kernels are checked against the PyTorch path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe.models import mamba_kernels
from moe.models.mamba import MambaMixer


def documented_conv(x_BIS, weight_IW, bias_I=None, activation=None):
    assert x_BIS.dim() == 3 and weight_IW.shape == (x_BIS.shape[1], 4) and activation == "silu"
    S = x_BIS.shape[-1]
    out = F.conv1d(x_BIS, weight_IW.unsqueeze(1), bias_I, padding=weight_IW.shape[1] - 1, groups=x_BIS.shape[1])
    return F.silu(out[..., :S])


def documented_scan(u_BIS, delta_BIS, A_IN, B_BNS, C_BNS, return_last_state=False):
    assert u_BIS.is_contiguous() and B_BNS.is_contiguous() and B_BNS.shape[1] == A_IN.shape[1]
    h_BIN = u_BIS.new_zeros(u_BIS.shape[0], *A_IN.shape)
    ys = []
    for t in range(u_BIS.shape[-1]):
        h_BIN = (torch.exp(delta_BIS[:, :, t, None] * A_IN) * h_BIN
                 + (delta_BIS[:, :, t] * u_BIS[:, :, t])[:, :, None] * B_BNS[:, None, :, t])
        ys.append((h_BIN * C_BNS[:, None, :, t]).sum(-1))
    y_BIS = torch.stack(ys, dim=-1)
    return (y_BIS, h_BIN) if return_last_state else y_BIS


def outputs_and_grads(mixer, u):
    u = u.detach().clone().requires_grad_()
    out = mixer(u)
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), [u, *mixer.parameters()])
    return out, grads


def test_the_kernel_path_computes_the_pytorch_path(monkeypatch):
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=16, d_state=4, expand=2, inner_norms=True)
    u = torch.randn(2, 21, 16)
    out_ref, grads_ref = outputs_and_grads(mixer, u)
    calls = []
    monkeypatch.setattr(mamba_kernels, "cuda_kernels", lambda: (documented_conv, documented_scan))
    monkeypatch.setattr(mamba_kernels, "kernels_apply", lambda x, cache: calls.append(cache) or cache is None)
    out, grads = outputs_and_grads(mixer, u)
    assert calls == [None]
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)  # float32, the sums in another order
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_a_decode_state_or_a_cpu_tensor_keeps_the_pytorch_path(monkeypatch):
    monkeypatch.setattr(mamba_kernels, "cuda_kernels", lambda: (documented_conv, documented_scan))
    assert not mamba_kernels.kernels_apply(torch.zeros(1, 2, 3), None)
    if torch.cuda.is_available():
        assert not mamba_kernels.kernels_apply(torch.zeros(1, 2, 3, device="cuda"), {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or mamba_kernels.cuda_kernels() is None,
                    reason="needs CUDA with mamba_ssm and causal_conv1d")
def test_on_a_gpu_the_kernels_agree_with_the_pytorch_path(monkeypatch):
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=64, d_state=16, expand=2, inner_norms=True).cuda()
    u = torch.randn(2, 300, 64, device="cuda")
    out_kernels, grads_kernels = outputs_and_grads(mixer, u)
    monkeypatch.setattr(mamba_kernels, "kernels_apply", lambda x, cache: False)
    out, grads = outputs_and_grads(mixer, u)
    torch.testing.assert_close(out_kernels, out, rtol=1e-4, atol=1e-4)
    for g_kernels, g in zip(grads_kernels, grads, strict=True):
        torch.testing.assert_close(g_kernels, g, rtol=1e-3, atol=1e-3)
