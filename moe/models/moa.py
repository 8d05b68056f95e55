"""Mixture of attention heads (MoA, Zhang et al. 2210.05144), in the form JetMoE (Shen et al. 2404.07413)
ships: E attention experts, each a query projection W_q,e ∈ R^{D×h·d} and an output projection
W_o,e ∈ R^{h·d×D} over h heads of width d, with the keys and values shared by all experts
(one K/V projection of h heads). A token t routed to experts e_1..e_k with gate weights w_1..w_k gets

    q_{t,j} = x_t W_q,e_j                                  (k·h query heads, RoPE applied)
    o_{t,j} = softmax(q_{t,j} K_{≤t}^T / sqrt(d)) V_{≤t}   (per head; head i of every slot j reads K/V head i)
    y_t     = Σ_j w_j · o_{t,j} W_o,e_j  + b

The routing is any token-choice router's :class:`moe.types.Routing`, balanced by the same balancers and
reported by the same routing statistics as an MoE FFN: the module is an :class:`moe.layer.MoELayer` whose
experts are :class:`AttentionHeadExperts`. Slot j of a token is the rank of its assignment among that
token's assignments, so routers with a varying number of experts per token (ReLU routing) work too; a
slot a token does not fill attends with a zero query and is never read. Expert choice is refused: it
picks tokens per expert by looking at the whole batch, future positions included. MoA never drops
(no capacity factor): a dropped query would leave a token without attention.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.analysis.params import expected_experts_per_token
from moe.layer import LayerAux, MoELayer
from moe.models.attention import (
    apply_rope,
    cached_length,
    causal_attention,
    extend_cache,
    left_pads,
    rope_cos_sin,
    rope_tables,
)
from moe.types import Routing


def per_expert_matmul(x_NX: torch.Tensor, w_EXY: torch.Tensor, tokens_per_expert_E: torch.Tensor) -> torch.Tensor:
    """out_NY[rows of e] = x_NX[rows of e] @ w_EXY[e], rows grouped by expert (tokens_per_expert_E each)."""
    # unbind, not w[e]: indexing a stacked parameter in a loop makes backward O(E²) (docs/design.md)
    pieces = zip(torch.split(x_NX, tokens_per_expert_E.tolist()), w_EXY.unbind(0), strict=True)
    return torch.cat([x_rows @ w_XY for x_rows, w_XY in pieces])


class AttentionHeadExperts(nn.Module):
    """The per-expert projections of MoA: w_q_EDX [E, D, h·d] and w_o_EXD [E, h·d, D] (X = h·d)."""

    def __init__(self, *, num_experts: int, d_model: int, heads: int, head_dim: int, init_std: float = 0.02):
        super().__init__()
        self.num_experts, self.d_model, self.heads, self.head_dim = num_experts, d_model, heads, head_dim
        width = heads * head_dim
        self.w_q_EDX = nn.Parameter(torch.randn(num_experts, d_model, width) * init_std)
        self.w_o_EXD = nn.Parameter(torch.randn(num_experts, width, d_model) * init_std)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, d_model={self.d_model}, heads={self.heads}, head_dim={self.head_dim}"


def assignment_slots(token_ids_N: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, int]:
    """slot_N, the rank of each assignment among its token's assignments (in routing order), and K, the
    most assignments any token has (one host sync)."""
    counts_T = torch.bincount(token_ids_N, minlength=num_tokens)
    order_N = torch.argsort(token_ids_N, stable=True)
    starts_T = torch.cumsum(counts_T, 0) - counts_T
    slot_N = torch.empty_like(token_ids_N)
    slot_N[order_N] = torch.arange(len(order_N), device=token_ids_N.device) - starts_T[token_ids_N[order_N]]
    return slot_N, int(counts_T.max()) if num_tokens else 0


class MixtureOfAttentionHeads(MoELayer):
    """The MoA token mixer (see the module docstring): router + :class:`AttentionHeadExperts` + the
    shared ``kv_proj`` (D → 2·h·d) + balancers; ``forward`` returns (y_BSD, LayerAux) like an MoE FFN."""

    def __init__(self, *, router: nn.Module, balancers, d_model: int, num_experts: int, heads: int, head_dim: int,
                 max_seq_len: int, rope_theta: float = 10000.0, rope: bool = True, output_bias: bool = False,
                 layer_index: int = 0):
        if getattr(router, "top_k", None) is None:
            raise ValueError(f"model.attention=moa needs a token-choice router; {type(router).__name__} chooses "
                             f"tokens per expert from the whole batch (future positions included)")
        if rope and head_dim % 2:
            raise ValueError(f"model.moa_head_dim={head_dim} must be even for RoPE")
        experts = AttentionHeadExperts(num_experts=num_experts, d_model=d_model, heads=heads, head_dim=head_dim)
        super().__init__(router=router, experts=experts, balancers=balancers, layer_index=layer_index,
                         output_bias=output_bias)
        self.heads, self.head_dim, self.max_seq_len, self.rope = heads, head_dim, max_seq_len, rope
        self.kv_proj = nn.Linear(d_model, 2 * heads * head_dim, bias=False)
        cos_SR, sin_SR = rope_cos_sin(max_seq_len, head_dim, rope_theta)
        self.register_buffer("rope_cos_SR", cos_SR, persistent=False)
        self.register_buffer("rope_sin_SR", sin_SR, persistent=False)

    def score_flops(self, context: float) -> float:
        """Forward FLOPs per token of q·kᵀ and the value sum: top_k experts × ``heads`` heads each."""
        return 2 * context * expected_experts_per_token(self.router) * self.heads * 2 * self.head_dim

    def forward(self, x_BSD: torch.Tensor, token_ids_BS: torch.Tensor | None = None, *,
                defer_sums: bool = False, cache: dict | None = None) -> tuple[torch.Tensor, LayerAux]:
        """``cache`` (incremental decoding): the shared keys and values of the tokens seen so far."""
        B, S, D = x_BSD.shape
        if cached_length(cache) + S > self.max_seq_len:
            raise ValueError(f"sequence length {cached_length(cache) + S} exceeds model.max_seq_len="
                             f"{self.max_seq_len}")
        x_TD = x_BSD.reshape(B * S, D)
        routing = self.route(x_TD, token_ids_BS)
        y_TD = self.attend(x_BSD, routing, cache)
        return self.add_bias(y_TD).view(B, S, D), self.balance(routing, B, S, defer_sums=defer_sums)

    def attend(self, x_BSD: torch.Tensor, routing: Routing, cache: dict | None = None) -> torch.Tensor:
        """y_TD = Σ_j w_j · o_{t,j} W_o,e_j for every token (before the output bias)."""
        B, S, D = x_BSD.shape
        T, h, d = B * S, self.heads, self.head_dim
        slot_N, K = assignment_slots(routing.token_ids_N, T)
        k_BhSd, v_BhSd = self.kv_proj(x_BSD).view(B, S, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rope:
            cos, sin = rope_tables(self.rope_cos_SR, self.rope_sin_SR, cache, S)
            k_BhSd = apply_rope(k_BhSd, cos, sin)
        k_BhKd, v_BhKd = extend_cache(cache, k=k_BhSd, v=v_BhSd)  # K = cached + new positions
        if K == 0:  # no token routed anywhere (ReLU routing can switch every gate off): no attention output
            return x_BSD.new_zeros(T, D) + 0.0 * self.experts.w_o_EXD.sum()
        order_N = torch.argsort(routing.expert_ids_N, stable=True)  # each expert's rows contiguous
        token_N, weight_N = routing.token_ids_N[order_N], routing.weights_N[order_N]
        row_N = token_N * K + slot_N[order_N]  # the (token, slot) row of each assignment
        counts_E = routing.tokens_per_expert_E
        q_NX = per_expert_matmul(x_BSD.reshape(T, D).index_select(0, token_N), self.experts.w_q_EDX, counts_E)
        q_RX = q_NX.new_zeros(T * K, h * d).index_add_(0, row_N, q_NX)  # R = T·K rows, unfilled slots zero
        # query head (i, j) = head i of slot j at index i·K + j, so SDPA's GQA grouping (query head // K)
        # pairs it with key/value head i, as JetMoE's repeated K/V do
        q_BQSd = q_RX.view(B, S, K, h, d).permute(0, 3, 2, 1, 4).reshape(B, h * K, S, d)
        if self.rope:
            q_BQSd = apply_rope(q_BQSd, cos, sin)
        out_BQSd = causal_attention(q_BQSd, k_BhKd.to(q_BQSd.dtype), v_BhKd.to(q_BQSd.dtype), left_pads(cache),
                                    enable_gqa=K > 1)
        out_RX = out_BQSd.view(B, h, K, S, d).permute(0, 3, 2, 1, 4).reshape(T * K, h * d)
        y_ND = per_expert_matmul(out_RX.index_select(0, row_N), self.experts.w_o_EXD, counts_E)
        scaled_ND = y_ND * weight_N.to(y_ND.dtype).unsqueeze(-1)
        return y_ND.new_zeros(T, D).index_add_(0, token_N, scaled_ND)
