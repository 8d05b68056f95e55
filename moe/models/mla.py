"""Multi-head latent attention (MLA; DeepSeek-V2, 2405.04434 §2.1; DeepSeek-V3, 2412.19437 §2.1.1).

Keys and values of all H heads come from one low-rank latent c^KV per token, and the position
information rides on a separate, small RoPE part of each query and key (decoupled RoPE):

    c^Q_t  = RMSNorm(W^DQ x_t)                       q_lora_rank     (``q_a_proj``, ``q_a_norm``)
    [q^C_t,i ; q^R_t,i] = W^UQ c^Q_t                 per head i: qk_nope + qk_rope (``q_b_proj``)
        (or one plain projection W^Q x_t when q_lora_rank is null, as in DeepSeek-V2-Lite)
    [c^KV_t ; k^R_t] = W^DKV x_t                     kv_lora_rank + qk_rope (``kv_a_proj``)
    [k^C_t,i ; v_t,i] = W^UKV RMSNorm(c^KV_t)        per head i: qk_nope + v_head (``kv_a_norm``, ``kv_b_proj``)
    q_t,i = [q^C_t,i ; RoPE(q^R_t,i)],   k_t,i = [k^C_t,i ; RoPE(k^R_t)]   (k^R is shared by all heads)
    o_t,i = Σ_{s≤t} softmax_s(q_t,i·k_s,i / √(qk_nope + qk_rope)) v_s,i
    u_t   = W^O [o_t,1; …; o_t,H]                    H·v_head → d_model (``o_proj``)

RoPE here is the rotate-half convention of moe/models/attention.py over the qk_rope dimensions.
DeepSeek's checkpoints rotate interleaved pairs (x0, x1), (x2, x3), … instead; that equals rotate-half
on the de-interleaved vector (x0, x2, …, x1, x3, …), so the HF importer permutes the rope rows of
q_b_proj and kv_a_proj once (moe/interop/adapters/deepseek_v3.py) and the module needs no second convention.
The two latent RMSNorms use ε = 1e-6 whatever the model's norm_eps, as DeepSeek's reference code does.
For decoding, the cache holds the latents c^KV (the paper's point: kv_lora_rank + qk_rope numbers per token);
the absorbed-matrix form, which would skip re-expanding them every step, is not implemented.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.models.attention import (
    apply_rope,
    cached_length,
    causal_attention,
    extend_cache,
    left_pads,
    rope_cos_sin,
    rope_tables,
)


def check_mla_sizes(*, q_lora_rank: int | None, kv_lora_rank: int | None, qk_nope_head_dim: int | None,
                    qk_rope_head_dim: int | None, v_head_dim: int | None) -> None:
    """Build-time checks; the messages name the ``model.`` option."""
    if q_lora_rank is not None and q_lora_rank < 1:
        raise ValueError(f"model.q_lora_rank={q_lora_rank} must be >= 1, or null for a plain query projection")
    for name, value in (("kv_lora_rank", kv_lora_rank), ("qk_nope_head_dim", qk_nope_head_dim),
                        ("qk_rope_head_dim", qk_rope_head_dim), ("v_head_dim", v_head_dim)):
        if value is None or value < 1:
            raise ValueError(f"model.{name}={value} must be an integer >= 1 for model.attention=mla")
    if qk_rope_head_dim % 2:
        raise ValueError(f"model.qk_rope_head_dim={qk_rope_head_dim} must be even for RoPE")


class MLAttention(nn.Module):
    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        max_seq_len: int,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rope_theta: float = 10000.0,
        latent_norm_eps: float = 1e-6,
    ):
        super().__init__()
        check_mla_sizes(q_lora_rank=q_lora_rank, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=qk_nope_head_dim,
                        qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim)
        self.n_heads, self.max_seq_len = n_heads, max_seq_len
        self.kv_lora_rank, self.nope_dim, self.rope_dim, self.v_dim = (kv_lora_rank, qk_nope_head_dim,
                                                                       qk_rope_head_dim, v_head_dim)
        q_width = n_heads * (qk_nope_head_dim + qk_rope_head_dim)
        if q_lora_rank is None:  # DeepSeek-V2-Lite: no query compression
            self.q_proj = nn.Linear(d_model, q_width, bias=False)
            self.q_a_proj = self.q_a_norm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = nn.Linear(d_model, q_lora_rank, bias=False)
            self.q_a_norm = nn.RMSNorm(q_lora_rank, eps=latent_norm_eps)
            self.q_b_proj = nn.Linear(q_lora_rank, q_width, bias=False)
        self.kv_a_proj = nn.Linear(d_model, kv_lora_rank + qk_rope_head_dim, bias=False)
        self.kv_a_norm = nn.RMSNorm(kv_lora_rank, eps=latent_norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=False)
        # the softmax temperature counts both parts of the query/key head
        self.scale = (qk_nope_head_dim + qk_rope_head_dim) ** -0.5
        cos_SR, sin_SR = rope_cos_sin(max_seq_len, qk_rope_head_dim, rope_theta)
        # not persistent: derived from the config, so checkpoints stay free of them
        self.register_buffer("rope_cos_SR", cos_SR, persistent=False)
        self.register_buffer("rope_sin_SR", sin_SR, persistent=False)

    @staticmethod
    def _norm(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm in float32: under bf16 autocast the projections are bf16 while the gains stay fp32."""
        return norm(x.float()).to(x.dtype)

    def score_flops(self, context: float) -> float:
        """Forward FLOPs per token of q·kᵀ (nope + rope dims) and of the weighted sum of values over ``context``."""
        return 2 * context * self.n_heads * (self.nope_dim + self.rope_dim + self.v_dim)

    def forward(self, x_BSD: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """``cache`` (incremental decoding): the compressed latents c^KV and the rotated shared RoPE keys of the
        tokens seen so far — not the expanded per-head keys and values, which are recomputed from them."""
        B, S, _ = x_BSD.shape
        start = cached_length(cache)
        if start + S > self.max_seq_len:
            raise ValueError(f"sequence length {start + S} exceeds model.max_seq_len={self.max_seq_len}")
        H, n, r = self.n_heads, self.nope_dim, self.rope_dim
        if self.q_proj is not None:
            q_BSX = self.q_proj(x_BSD)
        else:
            q_BSX = self.q_b_proj(self._norm(self.q_a_norm, self.q_a_proj(x_BSD)))
        q_nope_BHSn, q_rope_BHSr = q_BSX.view(B, S, H, n + r).transpose(1, 2).split((n, r), dim=-1)

        ckv_BSC, k_rope_BSr = self.kv_a_proj(x_BSD).split((self.kv_lora_rank, r), dim=-1)
        cos, sin = rope_tables(self.rope_cos_SR, self.rope_sin_SR, cache, S)
        q_rope_BHSr = apply_rope(q_rope_BHSr, cos, sin)
        k_rope_B1Sr = apply_rope(k_rope_BSr.unsqueeze(1), cos, sin)  # one rope key shared by all heads
        ckv_BKC, k_rope_B1Kr = extend_cache(cache, k=ckv_BSC, k_rope=k_rope_B1Sr)  # K = cached + new tokens
        K = ckv_BKC.shape[1]
        kv_BKY = self.kv_b_proj(self._norm(self.kv_a_norm, ckv_BKC))
        k_nope_BHKn, v_BHKv = kv_BKY.view(B, K, H, n + self.v_dim).transpose(1, 2).split((n, self.v_dim), dim=-1)

        q_BHSq = torch.cat((q_nope_BHSn, q_rope_BHSr), dim=-1)
        k_BHKq = torch.cat((k_nope_BHKn, k_rope_B1Kr.expand(B, H, K, r)), dim=-1)
        # SDPA allows a value head size (v_head_dim) different from the query/key one
        out_BHSv = causal_attention(q_BHSq, k_BHKq, v_BHKv, left_pads(cache), scale=self.scale)
        return self.o_proj(out_BHSv.transpose(1, 2).reshape(B, S, H * self.v_dim))

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, kv_lora_rank={self.kv_lora_rank}, qk_nope_head_dim={self.nope_dim}, "
                f"qk_rope_head_dim={self.rope_dim}, v_head_dim={self.v_dim}")
