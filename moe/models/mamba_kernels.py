"""Mamba-1's CUDA kernels, used when they can be: ``mamba_ssm``'s fused selective scan (Gu & Dao 2312.00752,
the kernel that recomputes the states in backward instead of storing [B, S, d_inner, N]) and
``causal_conv1d``'s depthwise causal conv with SiLU. Both are the optional extra ``pip install
'moe-lab[mamba-cuda]'`` (they build CUDA code on install).

:class:`~moe.models.mamba.MambaMixer` takes this path when both packages import, its tensors are on
CUDA, and it runs without a decode state (the scan kernel starts from h_0 = 0 and does not take a prefix
state). Everywhere else, and always on a CPU, the mixer runs its pure-PyTorch chunked scan and conv.

The kernels' layout is channels-first: u, Δ [B, d_inner, S]; A [d_inner, N]; B, C [B, N, S]; the conv
weight [d_inner, d_conv]. They compute the same recurrence as ``selective_scan_reference``:

    h_t = exp(Δ_t A) ⊙ h_{t−1} + (Δ_t u_t) ⊗ B_t,    y_t = h_t C_t

(without the D skip and the z gate, which the mixer applies itself, as on the PyTorch path).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn


@cache
def cuda_kernels():
    """(causal_conv1d_fn, selective_scan_fn) when both packages import, else None."""
    try:
        from causal_conv1d import causal_conv1d_fn
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return causal_conv1d_fn, selective_scan_fn


def kernels_apply(x_BSD: torch.Tensor, cache: dict | None) -> bool:
    """Whether the mixer's forward on ``x_BSD`` takes the CUDA kernels."""
    return x_BSD.is_cuda and cache is None and cuda_kernels() is not None


def conv_silu(conv1d: nn.Conv1d, x_BSI: torch.Tensor) -> torch.Tensor:
    """SiLU(causal depthwise conv1d(x)) by ``causal_conv1d_fn``: [B, S, I] → [B, S, I]."""
    conv_fn, _ = cuda_kernels()
    out_BIS = conv_fn(x_BSI.transpose(1, 2), conv1d.weight.squeeze(1), conv1d.bias, activation="silu")
    return out_BIS.transpose(1, 2)


def selective_scan(x_BSI, dt_BSI, A_IN, B_BSN, C_BSN):
    """y_BSI (without the D skip) and the final state h_BIN by ``selective_scan_fn``, from h_0 = 0."""
    _, scan_fn = cuda_kernels()
    y_BIS, h_BIN = scan_fn(x_BSI.transpose(1, 2).contiguous(), dt_BSI.transpose(1, 2).contiguous(), A_IN,
                           B_BSN.transpose(1, 2).contiguous(), C_BSN.transpose(1, 2).contiguous(),
                           return_last_state=True)
    return y_BIS.transpose(1, 2), h_BIN
