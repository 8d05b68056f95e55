"""The Mamba-2 token mixer: state-space duality (SSD; Dao & Gu 2405.21060), as Zamba2, Granite-4 hybrids
and Nemotron-H interleave it with attention and MoE.

With H heads of P channels (d_in = expand·D = H·P) and G groups of B/C of state size N:

    [z, xBC, dt] = in_proj(u)                       z, x ∈ R^{H·P}, B, C ∈ R^{G·N}, dt ∈ R^{H}
    [x, B, C] = SiLU(causal depthwise conv1d(xBC))
    Δ = softplus(dt + dt_bias)                      one step size per head
    A = −exp(A_log)                                 one scalar per head
    H_t = exp(Δ_t A) H_{t−1} + Δ_t x_t B_tᵀ         per head: H ∈ R^{P×N}, B/C of the head's group
    y_t = H_t C_t + D ⊙ x_t
    out = out_proj(RMSNorm_G(y ⊙ SiLU(z)))          the norm per group of d_in / G channels

Because A is a scalar per head, a chunk of L tokens is exact and cheap in the "dual" quadratic form:
with Λ_t = Σ_{τ≤t} Δ_τ A (within the chunk), y_t = Σ_{s≤t} exp(Λ_t − Λ_s) (C_t·B_s) Δ_s x_s
+ exp(Λ_t) H_0 C_t, and the state passed on is H_L = exp(Λ_L) H_0 + Σ_s exp(Λ_L − Λ_s) Δ_s x_s B_sᵀ —
every exponent ≤ 0, so nothing overflows. ``ssd_scan_reference`` is the token loop (the tests' oracle).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moe.models.mamba import causal_conv

CHUNK = 64  # tokens per chunk of the SSD scan (the L×L decay matrix is per head: [B, H, L, L])


def ssd_scan_reference(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN, h_BHPN=None):
    """y_BSHP (without the D skip) and the final state, one token at a time."""
    batch, S, H, P = x_BSHP.shape
    repeat = H // B_BSGN.shape[2]
    B_BSHN, C_BSHN = B_BSGN.repeat_interleave(repeat, dim=2), C_BSGN.repeat_interleave(repeat, dim=2)
    h_BHPN = x_BSHP.new_zeros(batch, H, P, B_BSGN.shape[-1]) if h_BHPN is None else h_BHPN
    ys = []
    for t in range(S):
        decay_BH = torch.exp(dt_BSH[:, t] * A_H)
        update_BHPN = (dt_BSH[:, t, :, None] * x_BSHP[:, t])[..., None] * B_BSHN[:, t, :, None, :]
        h_BHPN = decay_BH[:, :, None, None] * h_BHPN + update_BHPN
        ys.append(torch.einsum("bhpn,bhn->bhp", h_BHPN, C_BSHN[:, t]))
    return torch.stack(ys, dim=1), h_BHPN


def ssd_scan_chunked(x_BSHP, dt_BSH, A_H, B_BSGN, C_BSGN, h_BHPN=None, chunk: int = CHUNK):
    """The same as :func:`ssd_scan_reference`, a chunk at a time in the quadratic (dual) form."""
    batch, S, H, P = x_BSHP.shape
    repeat = H // B_BSGN.shape[2]
    B_BSHN, C_BSHN = B_BSGN.repeat_interleave(repeat, dim=2), C_BSGN.repeat_interleave(repeat, dim=2)
    h_BHPN = x_BSHP.new_zeros(batch, H, P, B_BSGN.shape[-1]) if h_BHPN is None else h_BHPN
    ys = []
    for start in range(0, S, chunk):
        part = slice(start, min(start + chunk, S))
        x, dt, Bm, Cm = x_BSHP[:, part], dt_BSH[:, part], B_BSHN[:, part], C_BSHN[:, part]
        log_decay_BHL = torch.cumsum(dt * A_H, dim=1).transpose(1, 2)  # Λ_t per head
        L = log_decay_BHL.shape[-1]
        causal_LL = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        segment_BHLL = (log_decay_BHL[..., :, None] - log_decay_BHL[..., None, :]).masked_fill(~causal_LL, -math.inf)
        weights_BHLL = torch.exp(segment_BHLL) * torch.einsum("blhn,bshn->bhls", Cm, Bm)
        dt_x_BLHP = dt[..., None] * x
        y = torch.einsum("bhls,bshp->blhp", weights_BHLL, dt_x_BLHP)
        y = y + torch.exp(log_decay_BHL).transpose(1, 2)[..., None] * torch.einsum("bhpn,blhn->blhp", h_BHPN, Cm)
        ys.append(y)
        to_end_BHL = torch.exp(log_decay_BHL[..., -1:] - log_decay_BHL)
        h_BHPN = (torch.exp(log_decay_BHL[..., -1])[..., None, None] * h_BHPN
                  + torch.einsum("bhl,blhp,blhn->bhpn", to_end_BHL, dt_x_BLHP, Bm))
    return torch.cat(ys, dim=1), h_BHPN


class Mamba2Mixer(nn.Module):
    """Mamba-2 token mixer (see the module doc): [B, S, D] → [B, S, D], causal."""

    def __init__(self, *, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, head_dim: int = 64,
                 n_groups: int = 1, conv_bias: bool = True, proj_bias: bool = False, norm_eps: float = 1e-6,
                 chunk: int = CHUNK):
        super().__init__()
        d_inner = expand * d_model
        for name, value in (("d_state", d_state), ("d_conv", d_conv), ("head_dim", head_dim),
                            ("n_groups", n_groups), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model.mamba_{name}={value!r} must be an integer >= 1")
        n_heads = d_inner // head_dim
        if d_inner % head_dim or n_heads % n_groups:
            raise ValueError(f"model.mamba_head_dim={head_dim} must divide expand x d_model={d_inner} into heads "
                             f"that model.mamba_n_groups={n_groups} divides")
        self.d_inner, self.d_state, self.head_dim = d_inner, d_state, head_dim
        self.n_heads, self.n_groups, self.chunk, self.norm_eps = n_heads, n_groups, chunk, norm_eps
        conv_dim = d_inner + 2 * n_groups * d_state
        self.in_proj = nn.Linear(d_model, d_inner + conv_dim + n_heads, bias=proj_bias)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm_weight = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=proj_bias)
        with torch.no_grad():  # Δ log-uniform in [1e-3, 0.1] at init, through the inverse of softplus
            dt_H = torch.exp(torch.rand(n_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_bias.copy_(dt_H + torch.log(-torch.expm1(-dt_H)))

    def forward(self, u_BSD: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (incremental decoding): the conv's last d_conv − 1 inputs and the state per head
        [B, H, P, N] after the tokens seen so far; the S new tokens continue from them and update them."""
        batch, S, _ = u_BSD.shape
        GN = self.n_groups * self.d_state
        z_BSI, xBC, dt_BSH = self.in_proj(u_BSD).split([self.d_inner, self.d_inner + 2 * GN, self.n_heads], dim=-1)
        xBC = F.silu(causal_conv(self.conv1d, xBC, cache))
        x_BSI, B_BSX, C_BSX = xBC.split([self.d_inner, GN, GN], dim=-1)
        dt_BSH = F.softplus(dt_BSH.float() + self.dt_bias)
        A_H = -torch.exp(self.A_log.float())
        x_BSHP = x_BSI.float().view(batch, S, self.n_heads, self.head_dim)
        h_BHPN = None if cache is None else cache.get("ssm")
        y_BSHP, h_BHPN = ssd_scan_chunked(x_BSHP, dt_BSH, A_H,
                                          B_BSX.float().view(batch, S, self.n_groups, self.d_state),
                                          C_BSX.float().view(batch, S, self.n_groups, self.d_state), h_BHPN,
                                          chunk=self.chunk)
        if cache is not None:
            cache["ssm"] = h_BHPN
        y_BSI = (y_BSHP + self.D[:, None] * x_BSHP).reshape(batch, S, self.d_inner)
        gated_BSGX = (y_BSI * F.silu(z_BSI.float())).view(batch, S, self.n_groups, -1)
        normed = gated_BSGX * torch.rsqrt(gated_BSGX.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return self.out_proj((self.norm_weight * normed.reshape(batch, S, self.d_inner)).to(u_BSD.dtype))
