"""Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models", 2106.04426).

Each token goes to one expert fixed by its token id, with no learned parameters:

    expert(t) = table_V[token_id_t],     weight 1.0,     top_k = 1

``mode: random``: a seeded random permutation π of the V token ids (``torch.Generator`` seeded with
``seed``) and table_V[π[j]] = j mod E, so every expert owns ⌊V/E⌋ or ⌈V/E⌉ ids at random.

``mode: balanced``: frequency-balanced hashing. Call :meth:`fit_frequencies` with token counts [V]
(e.g. from the training data): ids are taken in decreasing frequency and each goes to the expert with
the least total frequency so far (ties to the lower expert index). Until it is fitted (either by
passing ``token_frequencies`` to the constructor or by calling ``fit_frequencies``) a balanced router
refuses to route. The table is a persistent buffer, so a fitted table is saved with the checkpoint.

The router needs the token ids: ``forward(x_TD, token_ids_T)``; ``uses_token_ids = True`` tells the MoE
layer to pass the flattened input ids. ``logits_TE`` are zeros and ``probs_TE`` uniform 1/E: there is
nothing a balance loss could act on (and no ``selection_bias_E``: nothing selects by score).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch
from torch import nn

from moe.routers.base import check_router_sizes
from moe.types import Routing

MODES = ("random", "balanced")


class HashRouter(nn.Module):
    uses_token_ids = True

    def __init__(
        self,
        *,
        d_model: int,
        num_experts: int,
        vocab_size: int = 257,
        mode: str = "random",
        seed: int = 0,
        token_frequencies: Sequence[float] | torch.Tensor | None = None,
    ):
        super().__init__()
        check_router_sizes(d_model=d_model, num_experts=num_experts)
        if mode not in MODES:
            raise ValueError(f"router.mode={mode!r} is not one of {MODES}")
        if vocab_size < 1:
            raise ValueError(f"router.vocab_size={vocab_size} must be >= 1")
        if token_frequencies is not None and mode != "balanced":
            raise ValueError(f"router.token_frequencies is only used with mode='balanced', got mode={mode!r}")
        self.d_model, self.num_experts, self.vocab_size = d_model, num_experts, vocab_size
        self.mode, self.seed, self.top_k = mode, seed, 1
        generator = torch.Generator().manual_seed(seed)
        perm_V = torch.randperm(vocab_size, generator=generator)
        table_V = torch.empty(vocab_size, dtype=torch.long)
        table_V[perm_V] = torch.arange(vocab_size) % num_experts
        self.register_buffer("table_V", table_V)
        self.register_buffer("fitted", torch.tensor(mode == "random"))
        if token_frequencies is not None:
            self.fit_frequencies(torch.as_tensor(token_frequencies))

    @torch.no_grad()
    def fit_frequencies(self, counts_V: torch.Tensor) -> None:
        """Frequency-balanced table: ids in decreasing count, each to the currently least-loaded expert."""
        if self.mode != "balanced":
            raise ValueError(f"fit_frequencies needs router.mode='balanced', got mode={self.mode!r}")
        counts_V = torch.as_tensor(counts_V, dtype=torch.float64).flatten().cpu()
        if counts_V.shape != (self.vocab_size,):
            raise ValueError(
                f"token frequencies must have vocab_size={self.vocab_size} entries, got {counts_V.numel()}"
            )
        if bool((counts_V < 0).any()):
            raise ValueError("token frequencies must be >= 0")
        order_V = torch.sort(counts_V, descending=True, stable=True).indices.tolist()
        heap = [(0.0, expert) for expert in range(self.num_experts)]  # (load, expert): least loaded first,
        table = [0] * self.vocab_size  # ties to the lower expert index
        for token in order_V:
            load, expert = heapq.heappop(heap)
            table[token] = expert
            heapq.heappush(heap, (load + float(counts_V[token]), expert))
        self.table_V.copy_(torch.tensor(table, dtype=torch.long))
        self.fitted.fill_(True)

    def forward(self, x_TD: torch.Tensor, token_ids_T: torch.Tensor) -> Routing:
        if not bool(self.fitted):
            raise ValueError(
                "HashRouter(mode='balanced') has no table yet: pass router.token_frequencies or call "
                "fit_frequencies(counts_V) before routing"
            )
        T, E = x_TD.shape[0], self.num_experts
        if token_ids_T.shape != (T,):
            raise ValueError(f"token_ids_T must have shape ({T},), got {tuple(token_ids_T.shape)}")
        expert_ids_N = self.table_V[token_ids_T.long()]
        return Routing(
            token_ids_N=torch.arange(T, device=x_TD.device),
            expert_ids_N=expert_ids_N,
            weights_N=torch.ones(T, dtype=torch.float32, device=x_TD.device),
            logits_TE=torch.zeros(T, E, dtype=torch.float32, device=x_TD.device),
            probs_TE=torch.full((T, E), 1.0 / E, dtype=torch.float32, device=x_TD.device),
            tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
            num_dropped=0,
            top_k=1.0,
        )

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, num_experts={self.num_experts}, vocab_size={self.vocab_size}, "
            f"mode={self.mode}, seed={self.seed}"
        )
