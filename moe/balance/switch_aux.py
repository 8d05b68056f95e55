"""Switch-Transformer load-balancing loss (Fedus et al. 2101.03961, eq. 4; Shazeer et al. 2017).

    L = E · Σ_i f_i · P_i,     f_i = c_i / (k·T)  (detached),     P_i = (1/T) Σ_t p_t,i

with c_i the assignments dispatched to expert i, p_t the softmax over all E experts (``probs_TE``) and
T the tokens the scope covers. Normalisation: a perfectly balanced router (f_i = P_i = 1/E) scores
exactly 1.0 before the coefficient, whatever E and k (docs/design.md, "The balancing contract"). Conversions: HF
``load_balancing_loss_func`` reports k·L (balanced = k); Switch's top-1 loss is L with k = 1.

Scopes (Qiu et al. 2501.11873 call the micro scope "micro-batch LBL"):

- ``micro``: f and P over all T tokens of this forward (the micro-batch on this rank) — the default
  of Megatron, DeepSpeed-MoE, Tutel and MegaBlocks.
- ``sequence``: the loss of each sequence (f, P over its S tokens), averaged over the B sequences.
  This is DeepSeek-V3's complementary sequence-wise loss (2412.19437, eqs. 17–20: f_i = E/(k·S)·
  count_i puts the factor E into f, the same product) in this project's normalisation;
  ``balance=seq_aux`` is this scope at V3's coefficient α = 1e-4.
- ``global`` (Qiu et al. 2501.11873, eqs. 4–6 and Algorithm 1, "global-batch LBL"): f comes from the
  counts of the whole global batch seen so far, P stays local. On every *training* forward the layer's
  buffers accumulate the local counts c and the local token count T, each all-reduced (SUM) over the
  data-parallel group (the default ``torch.distributed`` group when it is initialised; otherwise this
  process only). At gradient-accumulation micro-step m of an optimizer step

      f̄_i = c̄_i / (k · T̄),   c̄ = Σ_{m'≤m} Σ_ranks c^{(m', r)},   T̄ = Σ_{m'≤m} Σ_ranks T^{(m', r)}

  (cumulative over micro-steps 1..m, as in Algorithm 1; detached), and L = E · Σ_i f̄_i · P_i with P_i
  the mean probability over this rank's micro-batch (it carries the gradient). A balanced router
  still scores exactly 1.0. Each rank's loss holds only its local P, so the paper's 1/N_P average
  over ranks is supplied by DDP's gradient averaging; no token×expert matrix is communicated, only
  E + 1 numbers per layer and forward (``local_stats``), and inside a DecoderLM all layers' numbers
  travel in one all-reduce per forward (the two-phase contract of moe/balance/base.py).
  ``on_optimizer_step()`` empties the buffers. In eval mode
  (``not self.training``) the loss uses the micro-batch counts and leaves the buffers untouched.
  The buffers are non-persistent (not in checkpoints): a checkpoint is taken right after
  ``on_optimizer_step``, when they are empty anyway. Caveat: a forward recomputed under activation
  checkpointing would count its tokens twice.
"""

from __future__ import annotations

import torch

from moe.balance.base import Balancer
from moe.balance.counts import all_reduce_sum, local_counts_E
from moe.types import BalanceContext, Routing

SCOPES = ("micro", "sequence", "global")


class SwitchAuxLoss(Balancer):
    def __init__(self, *, coeff: float = 0.01, scope: str = "micro"):
        super().__init__(coeff=coeff)
        if scope not in SCOPES:
            raise ValueError(f"switch_aux.scope={scope!r} is not one of {SCOPES}")
        self.scope = scope
        # global scope: cumulative counts [E] and tokens [] of the current optimizer step (float64,
        # exact for integer counts up to 2**53); sized on the first forward, since E is not known here
        self.register_buffer("global_counts_E", torch.zeros(0, dtype=torch.float64), persistent=False)
        self.register_buffer("global_tokens", torch.zeros((), dtype=torch.float64), persistent=False)

    def loss(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor:
        E = routing.num_experts
        if self.scope == "global":
            return self._global_loss(routing)
        if self.scope == "micro":
            counts_1E = routing.tokens_per_expert_E[None].float()
            probs_1TE = routing.probs_TE[None]
        else:
            B, S = ctx.batch_size, ctx.seq_len
            if B * S != routing.num_tokens:
                raise ValueError(f"switch_aux scope=sequence: batch_size·seq_len = {B}·{S} != tokens "
                                 f"{routing.num_tokens}")
            sequence_N = torch.div(routing.token_ids_N, S, rounding_mode="floor")
            counts_1E = torch.bincount(sequence_N * E + routing.expert_ids_N, minlength=B * E)
            counts_1E = counts_1E.view(B, E).float()
            probs_1TE = routing.probs_TE.view(B, S, E)
        # the leading dim is the scope's groups (1 for micro, B for sequence); T = tokens per group
        tokens_per_group = probs_1TE.shape[1]
        f_GE = counts_1E / (routing.top_k * tokens_per_group)
        P_GE = probs_1TE.mean(dim=1)
        return E * (f_GE.detach() * P_GE).sum(dim=-1).mean()

    def local_stats(self, routing: Routing, ctx: BalanceContext) -> torch.Tensor | None:
        """Global scope in training: [c_0 .. c_{E-1}, T] of this forward, to be summed over ranks."""
        if self.scope != "global" or not self.training:
            return None
        counts_E = local_counts_E(routing)
        return torch.cat([counts_E, counts_E.new_tensor([float(routing.num_tokens)])])

    def loss_from_sums(self, routing: Routing, ctx: BalanceContext, summed: torch.Tensor) -> torch.Tensor:
        """Add the group's counts of this forward to the optimizer step's and score P against them."""
        E = routing.num_experts
        if self.global_counts_E.shape != (E,) or self.global_counts_E.device != summed.device:
            self.global_counts_E = torch.zeros(E, dtype=torch.float64, device=summed.device)
            self.global_tokens = torch.zeros((), dtype=torch.float64, device=summed.device)
        self.global_counts_E += summed[:E]
        self.global_tokens += summed[E]
        return self._loss(routing, self.global_counts_E, self.global_tokens)

    def _global_loss(self, routing: Routing) -> torch.Tensor:
        if self.training:
            return self.loss_from_sums(routing, None, all_reduce_sum(self.local_stats(routing, None)))
        counts_E = local_counts_E(routing)  # eval: this micro-batch only, the buffers untouched
        return self._loss(routing, counts_E, counts_E.new_tensor(float(routing.num_tokens)))

    @staticmethod
    def _loss(routing: Routing, counts_E: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        f_E = (counts_E / (routing.top_k * tokens)).to(routing.probs_TE.dtype)
        P_E = routing.probs_TE.mean(dim=0)
        return routing.num_experts * (f_E.detach() * P_E).sum()

    def on_optimizer_step(self) -> None:
        if self.scope == "global":
            self.global_counts_E.zero_()
            self.global_tokens.zero_()

    def extra_repr(self) -> str:
        return f"coeff={self.coeff}, scope={self.scope}"
