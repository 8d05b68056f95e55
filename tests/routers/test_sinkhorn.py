"""SinkhornRouter (S-BASE) against direct computations."""

from __future__ import annotations

import pytest
import torch

from moe.routers import SinkhornRouter
from moe.routers.sinkhorn import sinkhorn_log


def test_normalised_matrix_rows_sum_to_one_and_columns_to_t_over_e():
    logits_TE = torch.randn(12, 4) * 3
    P_TE = sinkhorn_log(logits_TE, num_iters=200, tol=0.0).exp()
    assert torch.allclose(P_TE.sum(1), torch.ones(12), atol=1e-4)
    assert torch.allclose(P_TE.sum(0), torch.full((4,), 3.0), atol=1e-4)
    # Sinkhorn only rescales rows and columns: P = diag(r) exp(z) diag(c), so log P - z has rank 1
    log_ratio_TE = P_TE.log() - logits_TE
    centred = log_ratio_TE - log_ratio_TE[:, :1] - log_ratio_TE[:1, :] + log_ratio_TE[0, 0]
    assert centred.abs().max() < 1e-4


def test_stable_for_huge_logits_and_stops_at_tolerance():
    P_TE = sinkhorn_log(torch.tensor([[500.0, -500.0], [400.0, -400.0]]), num_iters=50, tol=1e-3).exp()
    assert torch.isfinite(P_TE).all()
    assert torch.allclose(P_TE.sum(0), torch.ones(2), atol=1e-4)


def test_training_selects_from_the_balanced_matrix_with_softmax_gates():
    router = SinkhornRouter(d_model=2, num_experts=2, top_k=1, num_iters=50, tol=0.0).train()
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(2))
    x_TD = torch.tensor([[2.0, 0.0], [1.5, 0.0], [1.0, 0.0], [0.5, 0.0]])  # every token prefers expert 0
    routing = router(x_TD)
    P_TE = sinkhorn_log(x_TD, num_iters=50).exp()
    assert torch.equal(routing.expert_ids_N, P_TE.argmax(-1))
    assert routing.tokens_per_expert_E.tolist() == [2, 2]  # balanced, unlike the greedy choice
    probs_TE = x_TD.softmax(-1)
    assert torch.allclose(routing.weights_N, probs_TE[torch.arange(4), routing.expert_ids_N])
    router.eval()
    assert router(x_TD).expert_ids_N.tolist() == [0, 0, 0, 0]  # greedy in eval by default


def test_normalize_renormalises_over_the_k():
    router = SinkhornRouter(d_model=4, num_experts=4, top_k=2, normalize=True)
    routing = router(torch.randn(6, 4))
    assert torch.allclose(routing.weights_N.view(6, 2).sum(-1), torch.ones(6))
    chosen_TK = routing.expert_ids_N.view(6, 2)
    top_TK = routing.probs_TE.gather(1, chosen_TK)
    assert torch.allclose(routing.weights_N.view(6, 2), top_TK / top_TK.sum(-1, keepdim=True))


def test_selection_bias_changes_selection_not_weights():
    router = SinkhornRouter(d_model=4, num_experts=4, top_k=1)
    x_TD = torch.randn(6, 4)
    with torch.no_grad():
        router.selection_bias_E[1] = 10.0
    routing = router(x_TD)
    assert routing.expert_ids_N.tolist() == [1] * 6
    assert torch.allclose(routing.weights_N, routing.probs_TE[:, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_iters": 0}, "router.num_iters=0"), ({"tol": -1.0}, "router.tol=-1.0"), ({"top_k": 9}, "top_k=9")],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinkhornRouter(d_model=4, num_experts=8, **kwargs)
