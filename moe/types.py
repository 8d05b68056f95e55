"""The routing contract shared by routers, experts and balancers (see docs/design.md, "The routing contract").

Shape legend used in tensor names throughout ``moe/``:

    B  batch (sequences)            S  sequence length          T  tokens = B·S (flattened)
    D  d_model                      F  expert (or FFN) hidden   V  vocabulary
    E  number of routed experts     K  top-k                    N  assignments (T·K for token
    C  expert capacity              L  layers                      choice, E·C for expert choice)
    G  groups (of experts, or the balance scope's token groups)
    H  attention (query) heads      J  key/value heads          d  head dim
    R  RoPE frequencies (d/2)       P  a router's projection    m  members of a cluster (carving)
    q, n, r, v  MLA per-head dims: query/key, its no-RoPE part, its RoPE part, value
    X, Y  a generic input / output width (helpers that serve several of the above)

A router maps ``x_TD`` to one :class:`Routing`: a flat list of (token, expert, weight) assignments
plus the dense scores. Because the list is flat, token choice, expert choice and token dropping all
look the same to experts and balancers, which therefore never branch on the router type.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Routing:
    """One layer's routing decision for T tokens over E experts.

    Attributes:
        token_ids_N: [N] long, the token each assignment belongs to (index into T).
        expert_ids_N: [N] long, the expert of each assignment (index into E).
        weights_N: [N] float32, gate weight scaling that expert's output; carries the router gradient.
        logits_TE: [T, E] float32, raw router logits (z-loss, analysis).
        probs_TE: [T, E] float32, the scores over all experts that balance losses use
            (softmax, or normalised sigmoid).
        tokens_per_expert_E: [E] long, assignments actually dispatched to each expert (after dropping).
        num_dropped: assignments dropped by a capacity limit (0 for dropless routing).
        top_k: assignments per token the router aimed for (k of top-k; for expert choice the
            average E·C/T). Balance losses normalise counts by k·T.
    """

    token_ids_N: torch.Tensor
    expert_ids_N: torch.Tensor
    weights_N: torch.Tensor
    logits_TE: torch.Tensor
    probs_TE: torch.Tensor
    tokens_per_expert_E: torch.Tensor
    num_dropped: int | torch.Tensor
    top_k: float

    @property
    def num_tokens(self) -> int:
        return self.logits_TE.shape[0]

    @property
    def num_experts(self) -> int:
        return self.logits_TE.shape[1]

    def validate(self) -> None:
        """Check the contract's shapes, dtypes and count consistency; raises ValueError naming the field."""
        T, E = self.logits_TE.shape
        n = self.token_ids_N.shape[0]
        checks = {
            "token_ids_N": (self.token_ids_N.shape == (n,) and self.token_ids_N.dtype == torch.long),
            "expert_ids_N": (self.expert_ids_N.shape == (n,) and self.expert_ids_N.dtype == torch.long),
            "weights_N": (self.weights_N.shape == (n,) and self.weights_N.is_floating_point()),
            "logits_TE": self.logits_TE.dtype == torch.float32,
            "probs_TE": (self.probs_TE.shape == (T, E) and self.probs_TE.dtype == torch.float32),
            "tokens_per_expert_E": (
                self.tokens_per_expert_E.shape == (E,) and self.tokens_per_expert_E.dtype == torch.long
            ),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"Routing.{name} breaks the contract (T={T}, E={E}, N={n})")
        if n and (int(self.token_ids_N.min()) < 0 or int(self.token_ids_N.max()) >= T):
            raise ValueError(f"Routing.token_ids_N must lie in [0, {T})")
        if n and (int(self.expert_ids_N.min()) < 0 or int(self.expert_ids_N.max()) >= E):
            raise ValueError(f"Routing.expert_ids_N must lie in [0, {E})")
        counted_E = torch.bincount(self.expert_ids_N, minlength=E)
        if not torch.equal(counted_E.cpu(), self.tokens_per_expert_E.cpu()):
            raise ValueError("Routing.tokens_per_expert_E must equal the bincount of expert_ids_N")


def mixer_site(block_index: int) -> str:
    """The ``ModelOutput.layer_aux`` key (a routed "site") of block i's routed mixer, "i.moa" (block i's MoE
    FFN is keyed by the int i), so its statistics and losses are logged as layer{i}.moa/... beside layer{i}/..."""
    return f"{block_index}.moa"


def site_order(site: int | str) -> tuple[int, int]:
    """Sort key of ``layer_aux`` keys: by block, and within a block the mixer before the FFN."""
    return (site, 1) if isinstance(site, int) else (int(site.split(".")[0]), 0)


@dataclass
class BalanceContext:
    """What a balancer may need beyond the routing: the layout of the T tokens.

    Attributes:
        batch_size: B, sequences in the micro-batch (T = B·S), for sequence-scope losses.
        seq_len: S.
        layer_index: index of the block that holds this MoE layer.
    """

    batch_size: int
    seq_len: int
    layer_index: int


# ---------------------------------------------------------------------------------------------------
# What a router (or its scorer) can do beyond ``forward(x_TD) -> Routing``. The parts that need one of
# these abilities (the MoE layer, the aux_free balancer, upcycling, carving, HF export) ask
# ``supports(router, P)`` — or ``supports(router.scorer, P)`` for the scorer's — instead of probing
# attribute names one by one.


class ReadsTokenIds(Protocol):
    """Routes by token id: called as ``forward(x_TD, token_ids_T)`` (hash routing)."""

    uses_token_ids: bool


class HasSelectionBias(Protocol):
    """Chooses experts by score + ``selection_bias_E`` [E], the buffer the aux_free balancer moves."""

    selection_bias_E: torch.Tensor


class DeclaresScoreScale(Protocol):
    """Knows the size of the scores its selection bias is added to (aux_free's run-length rule)."""

    def selection_score_scale(self) -> float | None: ...


class Scored(Protocol):
    """Has a ``scorer`` module mapping x_TD to scores [T, E] (every learned router, moe/routers/base.py)."""

    scorer: torch.nn.Module


class LinearScored(Protocol):
    """A scorer that is one linear map ``weight_ED`` [E, D] (virtual-group upcycling repeats its rows)."""

    weight_ED: torch.Tensor


class TopKGated(Protocol):
    """Picks ``top_k`` experts per token with one of the two published gate orders (``order``)."""

    top_k: int
    order: str


class TakesRepresentatives(Protocol):
    """A scorer of representative neurons that carving fills in (CMoE)."""

    def set_representatives(self, gate_ED: torch.Tensor, up_ED: torch.Tensor) -> None: ...


def supports(module: object, protocol: type) -> bool:
    """Whether ``module`` has every member ``protocol`` declares.

    Not ``isinstance`` with ``typing.runtime_checkable``: from Python 3.12 that looks members up with
    ``inspect.getattr_static``, which does not see an ``nn.Module``'s parameters and buffers.
    """
    return all(hasattr(module, name) for name in _members(protocol))


@functools.cache
def _members(protocol: type) -> frozenset[str]:
    """The attributes and methods a capability Protocol declares."""
    methods = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return frozenset(getattr(protocol, "__annotations__", {})) | methods
