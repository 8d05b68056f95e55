"""DeepSeek-V3's sequence-wise loss (``balance=seq_aux``: switch_aux at sequence scope, coeff 1e-4)
against V3's formula: hand-computed examples, balanced = 1, sigmoid scores, the gradient path."""

from __future__ import annotations

import pytest
import torch
from conftest import load_group_option
from routings import balance_ctx as ctx
from routings import token_choice_routing as routing_from

from moe.balance import SwitchAuxLoss


def seq_aux() -> SwitchAuxLoss:
    """What ``balance=seq_aux`` builds."""
    node = dict(load_group_option("balance", "seq_aux")["seq_aux"])
    assert node.pop("_target_") == "moe.balance.SwitchAuxLoss" and node.pop("_partial_")
    return SwitchAuxLoss(**node)


def test_hand_computed_v3_example():
    # E = 3, k = 1, B = 2 sequences of S = 2 tokens
    probs_TE = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.6, 0.2],    # sequence 0 -> experts 0, 1
                             [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]])   # sequence 1 -> experts 2, 2
    expert_ids_TK = torch.tensor([[0], [1], [2], [2]])
    # sequence 0: f = 3/(1·2)·[1, 1, 0] = [1.5, 1.5, 0], P = [0.35, 0.45, 0.2] -> 0.525 + 0.675 = 1.2
    # sequence 1: f = 3/2·[0, 0, 2] = [0, 0, 3],          P = [0.1, 0.15, 0.75] -> 2.25
    loss = seq_aux().loss(routing_from(expert_ids_TK, probs_TE), ctx(2, 2))
    assert loss.item() == pytest.approx((1.2 + 2.25) / 2, rel=1e-6)


def test_hand_computed_top2_example():
    # E = 4, k = 2, one sequence of S = 2: f = 4/(2·2)·hits = hits
    probs_TE = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.5, 0.3, 0.1]])
    expert_ids_TK = torch.tensor([[0, 1], [1, 2]])
    # hits = [1, 2, 1, 0], P = [0.25, 0.4, 0.25, 0.1] -> 0.25 + 0.8 + 0.25 = 1.3
    loss = seq_aux().loss(routing_from(expert_ids_TK, probs_TE), ctx(1, 2))
    assert loss.item() == pytest.approx(1.3, rel=1e-6)


@pytest.mark.parametrize(("E", "K"), [(8, 2), (4, 1), (16, 4)])
def test_balanced_router_scores_exactly_one(E, K):
    B, S = 3, E
    expert_ids_TK = (torch.arange(B * S)[:, None] + torch.arange(K)[None] * (E // K)) % E
    probs_TE = torch.full((B * S, E), 1.0 / E)
    loss = seq_aux().loss(routing_from(expert_ids_TK, probs_TE), ctx(B, S))
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_normalised_sigmoid_scores():
    E, K, B, S = 5, 2, 2, 7
    scores_TE = torch.randn(B * S, E).sigmoid()
    probs_TE = scores_TE / scores_TE.sum(-1, keepdim=True)
    expert_ids_TK = scores_TE.topk(K, -1).indices
    loss = seq_aux().loss(routing_from(expert_ids_TK, probs_TE), ctx(B, S))
    expected = 0.0
    for b in range(B):
        rows = slice(b * S, (b + 1) * S)
        hits_E = torch.zeros(E).index_add(0, expert_ids_TK[rows].reshape(-1), torch.ones(S * K))
        expected += (E / (K * S) * hits_E * probs_TE[rows].mean(0)).sum().item() / B
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_v3_coeff_and_gradient_through_probs_only():
    assert seq_aux().coeff == 1e-4 and seq_aux().scope == "sequence"
    E, S = 4, 12
    logits_TE = torch.randn(S, E, requires_grad=True)
    probs_TE = logits_TE.softmax(-1)
    loss = seq_aux().loss(routing_from(probs_TE.detach().topk(1, -1).indices, probs_TE), ctx(1, S))
    loss.backward()
    assert logits_TE.grad.abs().sum() > 0


def test_layout_mismatch_is_rejected():
    probs_TE = torch.full((6, 3), 1 / 3)
    with pytest.raises(ValueError, match="seq_len"):
        seq_aux().loss(routing_from(torch.zeros(6, 1, dtype=torch.long), probs_TE), ctx(2, 4))
