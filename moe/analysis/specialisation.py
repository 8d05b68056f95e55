"""Expert specialisation, co-activation and routing saturation, from boolean selections ``selected_TE``.

Every measure counts *assignments*: a token that selects k experts contributes k (token, expert)
pairs. With n(x, e) the assignments of tokens of class x (a domain, or a token id) to expert e and
p(x, e) = n(x, e) / Σ n:

- **Domain × expert selection frequency** (Qiu et al. 2501.11873, Fig. 5): p(e | d), the share of
  domain d's assignments that go to expert e (1/E everywhere for domain-blind, balanced routing).
- **Mutual information** I(D; E) = Σ_{d,e} p(d,e) log[p(d,e) / (p(d) p(e))] in nats: 0 when routing
  ignores the domain; H(D) (log 2 for two equal domains) when the domains use disjoint experts.
- **Token-id specialisation** (OpenMoE, Xue et al. 2402.01739 §5, "context-independent
  specialisation"): for each token id v, the share of its assignments that go to its k most frequent
  experts, Σ_{top-k e} p(e | v), averaged over token occurrences. 1 when every occurrence of a token id
  takes the same experts whatever its context, k/E for routing independent of the id. Reported with
  the normalised I(V; E) / H(E), which is 0 for id-blind and 1 for id-determined routing.
- **Co-activation**: C[i, j] = P(j selected | i selected) over tokens; C[i, i] = 1.
- **Routing saturation** (OpenMoE §5, Fig. 9): between two checkpoints of one run on the same tokens,
  the mean over tokens of |S_a(t) ∩ S_b(t)| / |S_b(t)|, the share of the later checkpoint's
  selections that the earlier one already made (1 = routing fixed early).
"""

from __future__ import annotations

import torch


def _joint_counts(selected_TE: torch.Tensor, class_T: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n(x, e) [X, E] float64: assignments of tokens of each class to each expert."""
    counts_XE = torch.zeros(num_classes, selected_TE.shape[1], dtype=torch.float64)
    return counts_XE.index_add_(0, class_T.long(), selected_TE.double())


def mutual_information(counts_XY: torch.Tensor) -> float:
    """I(X; Y) in nats of the joint distribution proportional to ``counts_XY`` (0 for no counts)."""
    total = float(counts_XY.sum())
    if total == 0:
        return 0.0
    p_XY = counts_XY.double() / total
    p_X, p_Y = p_XY.sum(1, keepdim=True), p_XY.sum(0, keepdim=True)
    nonzero = p_XY > 0
    return float((p_XY[nonzero] * (p_XY[nonzero] / (p_X * p_Y).expand_as(p_XY)[nonzero]).log()).sum())


def entropy(counts: torch.Tensor) -> float:
    """H in nats of the distribution proportional to ``counts``."""
    p = counts.double().flatten()
    p = p[p > 0] / p.sum() if p.sum() > 0 else p[:0]
    return float(-(p * p.log()).sum())


def domain_expert_frequency(selected_TE: torch.Tensor, domain_T: torch.Tensor,
                            num_domains: int) -> tuple[torch.Tensor, float]:
    """(p(e | d) [num_domains, E] with rows summing to 1 (0 for an absent domain), I(D; E) in nats)."""
    counts_DE = _joint_counts(selected_TE, domain_T, num_domains)
    freq_DE = counts_DE / counts_DE.sum(1, keepdim=True).clamp_min(1)
    return freq_DE, mutual_information(counts_DE)


def token_id_specialisation(selected_TE: torch.Tensor, token_T: torch.Tensor) -> dict[str, float]:
    """``determinism`` = mean over occurrences of Σ_{top-k e} p(e | id) (k = assignments per token),
    ``baseline`` = k/E (id-blind routing), and ``mi_ratio`` = I(V; E) / H(E)."""
    _, class_T = torch.unique(token_T, return_inverse=True)
    counts_VE = _joint_counts(selected_TE, class_T, int(class_T.max()) + 1 if len(class_T) else 0)
    per_id_V = counts_VE.sum(1)
    if float(per_id_V.sum()) == 0:
        return {"determinism": 0.0, "baseline": 0.0, "mi_ratio": 0.0}
    E = selected_TE.shape[1]
    k = max(1, min(E, round(float(selected_TE.sum()) / selected_TE.shape[0])))
    top_share_V = counts_VE.topk(k, dim=1).values.sum(1) / per_id_V.clamp_min(1)
    determinism = float((top_share_V * per_id_V).sum() / per_id_V.sum())  # weighted by occurrences
    h_expert = entropy(counts_VE.sum(0))
    mi_ratio = mutual_information(counts_VE) / h_expert if h_expert > 0 else 0.0
    return {"determinism": determinism, "baseline": k / E, "mi_ratio": mi_ratio}


def coactivation(selected_TE: torch.Tensor) -> torch.Tensor:
    """C [E, E] float64: C[i, j] = P(j selected | i selected); rows of never-selected experts are 0."""
    s_TE = selected_TE.double()
    both_EE = s_TE.T @ s_TE
    return both_EE / both_EE.diagonal().clamp_min(1).unsqueeze(1)


def routing_saturation(earlier_TE: torch.Tensor, later_TE: torch.Tensor) -> float:
    """Mean over tokens (with at least one later selection) of |S_earlier ∩ S_later| / |S_later|."""
    if earlier_TE.shape != later_TE.shape:
        raise ValueError(f"routing_saturation needs the same tokens and experts in both traces: "
                         f"{tuple(earlier_TE.shape)} vs {tuple(later_TE.shape)}")
    later_T = later_TE.sum(1)
    routed = later_T > 0
    if not routed.any():
        return 0.0
    overlap_T = (earlier_TE & later_TE).sum(1)
    return float((overlap_T[routed].double() / later_T[routed]).mean())
