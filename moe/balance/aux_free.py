"""Auxiliary-loss-free balancing (Wang et al. 2408.15664; DeepSeek-V3 2412.19437 §2.1.2).

The router chooses experts by TopK(s_t + b) with b = ``router.selection_bias_E`` (a buffer, no
gradient), while the gate weights use the unbiased scores s_t, so b changes *which* experts a token
uses, never the weight an expert gets. This balancer adds no loss (``loss()`` returns None; ``coeff``
is accepted for interface uniformity and unused — it must be 0). It moves b once per optimizer step:

1. on every *training* forward, accumulate the local dispatched counts c ∈ R^E of this layer;
2. in ``on_optimizer_step()``: c̄ = all-reduce SUM of c over the data-parallel group (so every rank
   applies the same update from the whole global batch: all micro-steps, all ranks), then with
   e_i = mean(c̄) − c̄_i (positive for under-loaded experts)

       rule "sign":          b_i ← b_i + u · sign(e_i)                     (Wang et al. eq. 3)
       rule "proportional":  b_i ← b_i + u · e_i / mean(c̄)

   and, if ``recenter``, b ← b − mean(b) (selection is invariant to a shared shift of b); then c = 0.

``target="top_k"`` replaces the mean load by the load of a router that gives every token exactly k
experts, k·T/E (T = tokens of the global batch, k = ``routing.top_k``): e_i = k·T/E − c̄_i. For a
top-k router the two targets coincide (the counts sum to k·T); for ReLU routing (ReMoE), where the
number of experts per token is free, only this target also holds the *total* load at k per token —
when every gate of a layer has switched off, mean(c̄) = 0 and the mean target would leave it dead,
while k·T/E raises every b_i until the gates come back (moe/routers/relu.py adds b inside its ReLU).

**Update rate for the run length** (``update_rate="auto"``). With the sign rule b moves by at most u
per step, so closing a load gap that needs an offset of the size S of the selection scores takes S/u
steps. The rule lets b cross S once within a fraction f (``catch_up_fraction``, 0.05) of the run's
``run_steps`` optimizer steps (``trainer.max_steps``; the config interpolates it):

    u = S / (f · run_steps),   S = 1/E for softmax probabilities (their mean), 1 for sigmoid affinities

S comes from the router (``selection_score_scale()``); routers without one need an explicit u. For a
sigmoid router this gives u = 1e-3 — Wang et al.'s and DeepSeek-V3's constant — at 20k steps, while a
300-step CPU run with a 16-expert softmax router gets u = 0.0042 (the constant 1e-3 would need 63% of
that run just to move b by 1/E). A run of 0 steps gets u = 0.

The proportional rule is normalised by the mean load, so e_i/mean(c̄) = −(relative load violation
of expert i) is dimensionless and u means the same thing whatever the batch size, E or k (Wang et
al.'s Table 3 use the raw e_i, whose scale grows with the tokens per step). A step with no counts
(no training forward) leaves b unchanged. ``update_rate`` has no default in
the class: configs/balance/aux_free.yaml sets ``auto``; Wang et al. and V3 use the constant 1e-3 (rule
"sign", recenter False, the class's defaults). The local counts are a plain
tensor attribute, not a buffer: they differ between ranks until the all-reduce, and DDP's
``broadcast_buffers`` would overwrite them with rank 0's; they are not checkpointed (empty after
every step anyway). b itself lives in the router and is checkpointed with it.

It works for any router that has ``selection_bias_E`` and adds it to the selection scores (softmax
or sigmoid; the project's TopKRouter adds b to the softmax probabilities). ``attach`` raises
ValueError for a router without that buffer. Caveat: a forward recomputed under activation
checkpointing would count its tokens twice.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.balance.base import Balancer
from moe.balance.counts import local_counts_E
from moe.types import BalanceContext, DeclaresScoreScale, HasSelectionBias, Routing, supports

RULES = ("sign", "proportional")
TARGETS = ("mean", "top_k")


class AuxFreeBalancer(Balancer):
    def __init__(self, *, coeff: float = 0.0, update_rate: float | str, rule: str = "sign",
                 recenter: bool = False, target: str = "mean", run_steps: int | None = None,
                 catch_up_fraction: float = 0.05):
        if coeff != 0:
            raise ValueError(f"aux_free.coeff={coeff} must be 0: this balancer adds no loss")
        super().__init__(coeff=0.0)
        if update_rate == "auto":
            if isinstance(run_steps, bool) or not isinstance(run_steps, int) or run_steps < 0:
                raise ValueError(f"aux_free.run_steps={run_steps!r} must be an integer >= 0 with update_rate=auto "
                                 "(the shipped config sets it to ${trainer.max_steps})")
            if not 0 < catch_up_fraction <= 1:
                raise ValueError(f"aux_free.catch_up_fraction={catch_up_fraction} must lie in (0, 1]")
        elif isinstance(update_rate, bool) or not isinstance(update_rate, (int, float)) or not update_rate >= 0:
            raise ValueError(f"aux_free.update_rate={update_rate!r} must be a number >= 0 or 'auto'")
        if rule not in RULES:
            raise ValueError(f"aux_free.rule={rule!r} is not one of {RULES}")
        if not isinstance(recenter, bool):
            raise ValueError(f"aux_free.recenter={recenter!r} must be one of (True, False)")
        if target not in TARGETS:
            raise ValueError(f"aux_free.target={target!r} is not one of {TARGETS}")
        self.rule, self.recenter, self.target = rule, recenter, target
        self.run_steps, self.catch_up_fraction = run_steps, catch_up_fraction
        # "auto" is resolved in attach(), once the router's score scale is known
        self.update_rate = update_rate if update_rate == "auto" else float(update_rate)
        self.step_tokens, self.step_k = 0.0, 0.0  # tokens of this optimizer step and their target k
        # local counts of the current optimizer step: a plain tensor, not a buffer, because DDP
        # (broadcast_buffers=True) would overwrite every rank's buffers with rank 0's each forward
        self.counts_E = torch.zeros(0, dtype=torch.float64)
        # the router is held outside the module tree (not a submodule: its parameters must not be
        # registered twice); b is read through it at update time, so .to(device) cannot stale it
        self.__dict__["_router"] = None

    def attach(self, router: nn.Module) -> None:
        if not supports(router, HasSelectionBias) or not isinstance(router.selection_bias_E, torch.Tensor):
            raise ValueError(
                f"aux_free needs a router with a selection_bias_E buffer; {type(router).__name__} has none"
            )
        self.__dict__["_router"] = router
        if self.update_rate == "auto":
            self.update_rate = self.auto_update_rate(router)

    def auto_update_rate(self, router: nn.Module) -> float:
        """u = S / (f · run_steps): b can cross the router's score scale S in a fraction f of the run."""
        scale = router.selection_score_scale() if supports(router, DeclaresScoreScale) else None
        if scale is None:
            raise ValueError(f"aux_free.update_rate=auto needs the scale of {type(router).__name__}'s selection "
                             "scores, which it does not define; set aux_free.update_rate to a number")
        if self.run_steps == 0:
            return 0.0
        return scale / (self.catch_up_fraction * self.run_steps)

    @property
    def selection_bias_E(self) -> torch.Tensor:
        if self._router is None:
            raise RuntimeError("aux_free: attach(router) was never called")
        return self._router.selection_bias_E

    def loss(self, routing: Routing, ctx: BalanceContext) -> None:
        if self.training:
            counts_E = local_counts_E(routing)
            if self.counts_E.shape != counts_E.shape or self.counts_E.device != counts_E.device:
                self.counts_E = torch.zeros_like(counts_E)
            self.counts_E += counts_E
            self.step_tokens += float(routing.num_tokens)
            self.step_k = float(routing.top_k)
        return None

    def step_stats(self) -> torch.Tensor | None:
        """[c_0 .. c_{E-1}, T] counted since the last step (None before any training forward, alike on
        every rank, or when no router is attached)."""
        if self._router is None or self.counts_E.numel() == 0:
            return None
        tokens = torch.tensor([self.step_tokens], dtype=self.counts_E.dtype, device=self.counts_E.device)
        return torch.cat([self.counts_E, tokens])

    @torch.no_grad()
    def on_optimizer_step_from_sums(self, summed: torch.Tensor) -> None:
        counts_E, tokens = summed[:-1], float(summed[-1])
        self.counts_E.zero_()
        self.step_tokens = 0.0
        mean = counts_E.mean() if self.target == "mean" else self.step_k * tokens / counts_E.numel()
        if mean <= 0:
            return
        error_E = mean - counts_E
        step_E = torch.sign(error_E) if self.rule == "sign" else error_E / mean
        bias_E = self.selection_bias_E
        new_bias_E = bias_E.double() + self.update_rate * step_E.to(bias_E.device)
        if self.recenter:
            new_bias_E -= new_bias_E.mean()
        bias_E.copy_(new_bias_E.to(bias_E.dtype))

    def extra_repr(self) -> str:
        return f"update_rate={self.update_rate}, rule={self.rule}, recenter={self.recenter}, target={self.target}"
