"""Causal grouped-query self-attention (Ainslie et al. 2305.13245) with rotary position embeddings
(RoPE, Su et al. 2104.09864) and optional QK-norm (RMSNorm over each head's queries and keys,
as in OLMoE / Qwen3).

H query heads share J = n_kv_heads key/value heads (H % J == 0); J = H is multi-head attention,
J = 1 multi-query attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [S, head_dim/2] for rotating (even, odd) halves of each head."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles_SR = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles_SR.cos(), angles_SR.sin()


def apply_rope(x_BHSd: torch.Tensor, cos_SR: torch.Tensor, sin_SR: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the head dimension (the "rotate_half" convention of Llama/HF)."""
    x1, x2 = x_BHSd.float().chunk(2, dim=-1)
    rotated = torch.cat((x1 * cos_SR - x2 * sin_SR, x2 * cos_SR + x1 * sin_SR), dim=-1)
    return rotated.to(x_BHSd.dtype)


def cached_length(cache: dict | None) -> int:
    """Tokens an attention cache holds (0 without one)."""
    return 0 if cache is None or "k" not in cache else cache["k"].shape[-2]


def extend_cache(cache: dict | None, **new: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Append the new tokens' tensors (sequence on dim -2) to the cache's and return the whole of each; without
    a cache, the new ones."""
    if cache is None:
        return tuple(new.values())
    for name, value in new.items():
        cache[name] = value if name not in cache else torch.cat((cache[name], value), dim=-2)
    return tuple(cache[name] for name in new)


def left_pads(cache: dict | None) -> torch.Tensor | None:
    """pads_B, the left-padding tokens of each sequence of a padded decode batch (None: no padding)."""
    return None if cache is None else cache.get("pads_B")


def rope_tables(cos_SR: torch.Tensor, sin_SR: torch.Tensor, cache: dict | None, S: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The RoPE rows of the S new tokens: positions start .. start + S − 1 after the cached tokens, or, in a
    left-padded batch, each sequence's own positions counted from its first real token ([B, 1, S, R])."""
    start, pads_B = cached_length(cache), left_pads(cache)
    if pads_B is None:
        return cos_SR[start:start + S], sin_SR[start:start + S]
    positions_BS = (torch.arange(start, start + S, device=pads_B.device) - pads_B[:, None]).clamp_min(0)
    return cos_SR[positions_BS].unsqueeze(1), sin_SR[positions_BS].unsqueeze(1)


def causal_attention(q_BHSd: torch.Tensor, k_BJKd: torch.Tensor, v_BJKv: torch.Tensor,
                     pads_B: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Causal SDPA where the S queries are the last S of the K keys' positions (K > S after a cache):
    query i sees keys 0 .. K − S + i. With ``pads_B`` (a left-padded batch) no query sees a padding key,
    except a padding query itself (so its row is not empty; its output is never read)."""
    S, K = q_BHSd.shape[-2], k_BJKd.shape[-2]
    if pads_B is not None:
        key_K = torch.arange(K, device=q_BHSd.device)
        query_S = key_K[K - S:]
        visible_SK = key_K <= query_S[:, None]
        real_BK = key_K >= pads_B[:, None]
        mask_BSK = (visible_SK & real_BK[:, None, :]) | (key_K == query_S[:, None])
        return F.scaled_dot_product_attention(q_BHSd, k_BJKd, v_BJKv, attn_mask=mask_BSK[:, None], **kwargs)
    if S == K:
        return F.scaled_dot_product_attention(q_BHSd, k_BJKd, v_BJKv, is_causal=True, **kwargs)
    if S == 1:  # one new token sees every key
        return F.scaled_dot_product_attention(q_BHSd, k_BJKd, v_BJKv, **kwargs)
    visible_SK = torch.ones(S, K, dtype=torch.bool, device=q_BHSd.device).tril(diagonal=K - S)
    return F.scaled_dot_product_attention(q_BHSd, k_BJKd, v_BJKv, attn_mask=visible_SK, **kwargs)


QK_NORM_SCOPES = ("head", "full")


class Attention(nn.Module):
    def __init__(
        self,
        *,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        max_seq_len: int,
        rope_theta: float = 10000.0,
        qk_norm: bool = False,
        qk_norm_scope: str = "head",
        norm_eps: float = 1e-6,
        attention_bias: bool = False,
        out_bias: bool = False,
        rope: bool = True,
        d_out: int | None = None,
    ):
        """``rope=False`` for models with learned absolute positions (GPT-2); ``out_bias`` puts a
        bias on o_proj too (GPT-2); ``d_out`` is o_proj's output width when it is not d_model (Zamba's
        shared block attends at 2·D and returns D)."""
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.d_model={d_model} is not divisible by model.n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"model.n_heads={n_heads} is not divisible by model.n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        if self.head_dim % 2:
            raise ValueError(f"head_dim = d_model/n_heads = {self.head_dim} must be even for RoPE")
        # attention_bias: biases on the query and key/value projections, none on o_proj (Qwen2)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=attention_bias)
        self.kv_proj = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=attention_bias)
        if attention_bias:
            nn.init.zeros_(self.q_proj.bias)
            nn.init.zeros_(self.kv_proj.bias)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_out or d_model, bias=out_bias)
        if out_bias:
            nn.init.zeros_(self.o_proj.bias)
        self.rope, self.max_seq_len = rope, max_seq_len
        # QK-norm over each head (Qwen3) or over the whole projection before the head split (OLMoE)
        if qk_norm_scope not in QK_NORM_SCOPES:
            raise ValueError(f"model.qk_norm_scope={qk_norm_scope!r} is not one of {QK_NORM_SCOPES}")
        self.qk_norm_full = qk_norm and qk_norm_scope == "full"
        q_width, k_width = (n_heads * self.head_dim, n_kv_heads * self.head_dim) if self.qk_norm_full \
            else (self.head_dim, self.head_dim)
        self.q_norm = nn.RMSNorm(q_width, eps=norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(k_width, eps=norm_eps) if qk_norm else None
        cos_SR, sin_SR = rope_cos_sin(max_seq_len, self.head_dim, rope_theta)
        # not persistent: derived from the config, so checkpoints stay free of them
        self.register_buffer("rope_cos_SR", cos_SR, persistent=False)
        self.register_buffer("rope_sin_SR", sin_SR, persistent=False)

    def score_flops(self, context: float) -> float:
        """Forward FLOPs per token of q·kᵀ and of the weighted sum of values over ``context`` positions."""
        return 2 * context * self.n_heads * 2 * self.head_dim

    def forward(self, x_BSD: torch.Tensor, cache: dict | None = None, *, delta_q: torch.Tensor | None = None,
                delta_kv: torch.Tensor | None = None) -> torch.Tensor:
        """``cache`` (incremental decoding, moe/models/decode_state.py): the keys and values of the tokens
        seen so far, which the S new tokens extend and attend to. ``delta_q`` / ``delta_kv`` are added to the
        q and kv projections (per-application LoRA of Zamba2's shared block)."""
        B, S, _ = x_BSD.shape
        start = cached_length(cache)
        if start + S > self.max_seq_len:
            raise ValueError(f"sequence length {start + S} exceeds model.max_seq_len={self.max_seq_len}")
        q_BSX, kv_BSY = self.q_proj(x_BSD), self.kv_proj(x_BSD)
        if delta_q is not None:
            q_BSX, kv_BSY = q_BSX + delta_q, kv_BSY + delta_kv
        if self.qk_norm_full:  # normalise q and the k half of kv over their full width, in float32
            k_BSX, v_BSX = kv_BSY.chunk(2, dim=-1)
            q_BSX = self.q_norm(q_BSX.float()).to(q_BSX.dtype)
            kv_BSY = torch.cat((self.k_norm(k_BSX.float()).to(k_BSX.dtype), v_BSX), dim=-1)
        q_BHSd = q_BSX.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)
        k_BJSd, v_BJSd = kv_BSY.view(B, S, 2, self.n_kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None and not self.qk_norm_full:
            # in float32: under bf16 autocast the projections are bf16 while the norm gains stay fp32
            q_BHSd = self.q_norm(q_BHSd.float()).to(q_BHSd.dtype)
            k_BJSd = self.k_norm(k_BJSd.float()).to(k_BJSd.dtype)
        if self.rope:
            cos, sin = rope_tables(self.rope_cos_SR, self.rope_sin_SR, cache, S)
            q_BHSd, k_BJSd = apply_rope(q_BHSd, cos, sin), apply_rope(k_BJSd, cos, sin)
        k_BJSd, v_BJSd = extend_cache(cache, k=k_BJSd, v=v_BJSd)
        out_BHSd = causal_attention(q_BHSd, k_BJSd, v_BJSd, left_pads(cache),
                                    enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(out_BHSd.transpose(1, 2).reshape(B, S, -1))
