"""Zamba's shared attention block (Glorioso et al. 2405.16712; Zamba2 uses ``num_mem_blocks`` of them in
turn): one attention + MLP block whose weights every application shares, applied every N blocks of a
Mamba backbone to the concatenation of the current hidden state and the input embeddings:

    t     = MLP(norm_2(Attn(norm_1([x ; e]))))        Attn over width 2·D (head_dim = 2·D / n_heads), out D
    x_in  = x + W_i t                                  W_i ∈ R^{D×D}: one per application, not shared

and x_in is what the block's own mixer (Mamba) reads, through its norm; the block's residual stream stays x
(Zamba's eq. 6: the shared block's output is added to the Mamba layer's input only). There is no residual
inside the shared block, as in Zamba.

The shared block is one module registered in every block that applies it, so ``model.parameters()``
(and the optimizer, the parameter counts and the checkpoint, whose safetensors file stores shared tensors
once) count its weights once. Zamba2's per-application LoRA adapters are not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe.models.attention import Attention
from moe.models.ffn import SwiGLU


class SharedAttentionBlock(nn.Module):
    """t = MLP(norm_2(Attn(norm_1([x ; e])))): attention at width 2·D returning D, then a SwiGLU of d_ff."""

    def __init__(self, *, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, max_seq_len: int,
                 rope_theta: float = 10000.0, rope: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.norm_in = nn.RMSNorm(2 * d_model, eps=norm_eps)
        self.attention = Attention(d_model=2 * d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                   max_seq_len=max_seq_len, rope_theta=rope_theta, rope=rope, norm_eps=norm_eps,
                                   d_out=d_model)
        self.norm_mlp = nn.RMSNorm(d_model, eps=norm_eps)
        self.mlp = SwiGLU(d_model=d_model, d_ff=d_ff)

    def forward(self, x_BSD: torch.Tensor, embeds_BSD: torch.Tensor, cache: dict | None = None,
                lora: nn.ModuleDict | None = None) -> torch.Tensor:
        """``cache``: this application's keys and values (each application attends over its own inputs);
        ``lora``: this application's adapters (``q``, ``kv``, ``gate``, ``up``), added to those projections."""
        h_BSX = self.norm_in(torch.cat((x_BSD, embeds_BSD.to(x_BSD.dtype)), dim=-1))
        deltas = {} if lora is None else {"delta_q": lora["q"](h_BSX), "delta_kv": lora["kv"](h_BSX)}
        m_BSD = self.norm_mlp(self.attention(h_BSX, cache, **deltas))
        gate_BSF, up_BSF = self.mlp.gate(m_BSD), self.mlp.up(m_BSD)
        if lora is not None:
            gate_BSF, up_BSF = gate_BSF + lora["gate"](m_BSD), up_BSF + lora["up"](m_BSD)
        return self.mlp.down(F.silu(gate_BSF) * up_BSF)


class LoRA(nn.Module):
    """x ↦ B A x with A ∈ R^{r×in}, B ∈ R^{out×r}; B starts at zero, so an adapter starts as nothing."""

    def __init__(self, d_in: int, d_out: int, rank: int):
        super().__init__()
        self.down = nn.Linear(d_in, rank, bias=False)
        self.up = nn.Linear(rank, d_out, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class SharedAttentionInput(nn.Module):
    """One application of a shared block: ``W_i · shared([x ; e])``, to add to the block mixer's input; with
    ``lora_rank`` > 0 also this application's LoRA adapters on the shared q, kv, gate and up projections
    (Zamba2), so each application of the shared weights can differ a little."""

    def __init__(self, shared: SharedAttentionBlock, d_model: int, lora_rank: int = 0):
        super().__init__()
        self.shared = shared  # the same module in every application: its weights count once
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self.lora = None
        if lora_rank:
            attention, mlp = shared.attention, shared.mlp
            self.lora = nn.ModuleDict({
                name: LoRA(linear.in_features, linear.out_features, lora_rank)
                for name, linear in (("q", attention.q_proj), ("kv", attention.kv_proj), ("gate", mlp.gate),
                                     ("up", mlp.up))})

    def forward(self, x_BSD: torch.Tensor, embeds_BSD: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        return self.proj(self.shared(x_BSD, embeds_BSD, cache, self.lora))


def shared_block_indices(*, n_layers: int, every: int | None, offset: int) -> list[int]:
    """The blocks that apply a shared block: i % every == offset (Zamba: every 6, offset 4); none for null."""
    if every is None:
        return []
    if every < 1:
        raise ValueError(f"model.shared_attention_every={every} must be >= 1 (null: no shared attention)")
    if not 0 <= offset < every:
        raise ValueError(f"model.shared_attention_offset={offset} must lie in [0, shared_attention_every={every})")
    return [i for i in range(n_layers) if i % every == offset]
