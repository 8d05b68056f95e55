"""Importance loss 1 + CV²: balanced = 1 exactly, collapse = E, Shazeer's CV², gradient direction."""

from __future__ import annotations

import pytest
import torch

from moe.balance import ImportanceLoss
from moe.types import BalanceContext, Routing


def routing_from(expert_ids_TK: torch.Tensor, weights_TK: torch.Tensor, E: int) -> Routing:
    T, K = expert_ids_TK.shape
    expert_ids_N = expert_ids_TK.reshape(-1)
    probs_TE = torch.full((T, E), 1.0 / E)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(K), expert_ids_N=expert_ids_N,
        weights_N=weights_TK.reshape(-1), logits_TE=probs_TE.log(), probs_TE=probs_TE,
        tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E), num_dropped=0, top_k=float(K),
    )


CTX = BalanceContext(batch_size=1, seq_len=1, layer_index=0)


@pytest.mark.parametrize(("E", "K"), [(8, 2), (4, 1), (16, 4)])
def test_balanced_importance_scores_exactly_one(E, K):
    T = 2 * E
    expert_ids_TK = (torch.arange(T)[:, None] + torch.arange(K)[None] * (E // K)) % E
    weights_TK = torch.full((T, K), 0.3)
    loss = ImportanceLoss().loss(routing_from(expert_ids_TK, weights_TK, E), CTX)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_collapse_scores_num_experts():
    E, T = 8, 10
    loss = ImportanceLoss().loss(routing_from(torch.zeros(T, 1, dtype=torch.long), torch.rand(T, 1), E), CTX)
    assert loss.item() == pytest.approx(E, rel=1e-6)


def test_equals_one_plus_shazeer_cv_squared():
    E, K, T = 6, 2, 40
    probs_TE = torch.randn(T, E).softmax(-1)
    weights_TK, expert_ids_TK = probs_TE.topk(K, -1)
    loss = ImportanceLoss().loss(routing_from(expert_ids_TK, weights_TK, E), CTX)
    importance_E = (torch.zeros(T, E).scatter(1, expert_ids_TK, weights_TK)).sum(0).double()
    cv2 = importance_E.var(unbiased=False) / importance_E.mean() ** 2
    assert loss.item() == pytest.approx(1.0 + cv2.item(), rel=1e-5)


def test_hand_computed_value():
    # importance = [0.9 + 0.5, 0.1, 0.5] = [1.4, 0.1, 0.5]; mean 2/3; var = (1.96 + 0.01 + 0.25)/3 - 4/9
    expert_ids_TK = torch.tensor([[0, 1], [0, 2]])
    weights_TK = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    loss = ImportanceLoss().loss(routing_from(expert_ids_TK, weights_TK, 3), CTX)
    var = (1.96 + 0.01 + 0.25) / 3 - 4 / 9
    assert loss.item() == pytest.approx(1 + var / (4 / 9), rel=1e-6)


def test_gradient_pushes_the_heavy_expert_down_and_the_light_one_up():
    expert_ids_TK = torch.tensor([[0], [0], [0], [1]])
    weights_TK = torch.tensor([[0.8], [0.7], [0.9], [0.6]], requires_grad=True)
    ImportanceLoss().loss(routing_from(expert_ids_TK, weights_TK, 2), CTX).backward()
    grad = weights_TK.grad.reshape(-1)
    assert (grad[:3] > 0).all() and grad[3] < 0  # descent lowers expert 0's gates, raises expert 1's
