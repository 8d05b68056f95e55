"""Switch aux loss: exact values at balance and collapse, the HF convention, scopes, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from routings import balance_ctx as ctx
from routings import token_choice_routing as routing_from

from moe.balance import SwitchAuxLoss


@pytest.mark.parametrize(("E", "K"), [(8, 2), (4, 1), (16, 4), (64, 8)])
@pytest.mark.parametrize("scope", ["micro", "sequence"])
def test_perfectly_balanced_router_scores_exactly_one(E, K, scope):
    T = 4 * E  # each sequence of E tokens uses every expert K times
    expert_ids_TK = (torch.arange(T)[:, None] + torch.arange(K)[None] * (E // K)) % E
    probs_TE = torch.full((T, E), 1.0 / E)
    loss = SwitchAuxLoss(scope=scope).loss(routing_from(expert_ids_TK, probs_TE), ctx(4, E))
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_collapsed_router_scores_num_experts():
    E, T = 8, 32
    probs_TE = F.one_hot(torch.zeros(T, dtype=torch.long), E).float() * (1 - 1e-6) + 1e-6 / E
    loss = SwitchAuxLoss().loss(routing_from(torch.zeros(T, 1, dtype=torch.long), probs_TE), ctx(1, T))
    assert loss.item() == pytest.approx(E, rel=1e-5)


def hf_load_balancing_loss(probs_TE: torch.Tensor, expert_ids_TK: torch.Tensor, E: int) -> torch.Tensor:
    """The Hugging Face (Mixtral) convention, written out from its formula:
    E · Σ_e mean_t(fraction of the token's k slots on e) · mean_t p_t,e, which is k at balance."""
    mask_TKE = F.one_hot(expert_ids_TK, E).float()
    tokens_per_expert_E = mask_TKE.sum(1).mean(0)
    return E * (tokens_per_expert_E * probs_TE.mean(0)).sum()


def test_matches_hf_convention_divided_by_k():
    E, K, T = 8, 2, 50
    logits_TE = torch.randn(T, E)
    probs_TE = logits_TE.softmax(-1)
    expert_ids_TK = probs_TE.topk(K, dim=-1).indices
    ours = SwitchAuxLoss().loss(routing_from(expert_ids_TK, probs_TE), ctx(1, T))
    assert ours.item() == pytest.approx(hf_load_balancing_loss(probs_TE, expert_ids_TK, E).item() / K, rel=1e-6)


def test_sequence_scope_is_the_mean_of_per_sequence_losses():
    E, K, B, S = 4, 2, 3, 10
    probs_TE = torch.randn(B * S, E).softmax(-1)
    expert_ids_TK = probs_TE.topk(K, dim=-1).indices
    whole = SwitchAuxLoss(scope="sequence").loss(routing_from(expert_ids_TK, probs_TE), ctx(B, S))
    per_sequence = [
        SwitchAuxLoss().loss(routing_from(expert_ids_TK[b * S:(b + 1) * S], probs_TE[b * S:(b + 1) * S]), ctx(1, S))
        for b in range(B)
    ]
    assert whole.item() == pytest.approx(torch.stack(per_sequence).mean().item(), rel=1e-6)


def test_gradient_flows_through_probs_only():
    E, T = 4, 12
    logits_TE = torch.randn(T, E, requires_grad=True)
    probs_TE = logits_TE.softmax(-1)
    loss = SwitchAuxLoss().loss(routing_from(probs_TE.topk(1, -1).indices, probs_TE), ctx(1, T))
    loss.backward()
    # d/dP_i of E·Σ f_i P_i is E·f_i: the expert with the most tokens gets pushed down hardest
    assert logits_TE.grad is not None and logits_TE.grad.abs().sum() > 0


def test_bad_scope_and_coeff():
    with pytest.raises(ValueError, match="scope='batch' is not one of"):
        SwitchAuxLoss(scope="batch")
    with pytest.raises(ValueError, match="coeff=-1"):
        SwitchAuxLoss(coeff=-1)
