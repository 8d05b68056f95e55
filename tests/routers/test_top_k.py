"""TopKRouter: the two gate orders, jitter and build-time errors, against direct computations."""

from __future__ import annotations

import pytest
import torch

from moe.routers import TopKRouter


def test_softmax_then_topk_weights_are_the_unnormalised_top_probabilities():
    router = TopKRouter(d_model=4, num_experts=3, top_k=2, order="softmax_then_topk")
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(3, 4))
    x_TD = torch.tensor([[3.0, 1.0, 0.0, 9.0], [0.0, 0.0, 2.0, 0.0]])
    routing = router(x_TD)
    probs_TE = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 2.0]]).softmax(-1)
    assert routing.expert_ids_N.tolist() == [0, 1, 2, 0]  # ties in token 1 go to the lower index
    expected_N = torch.stack([probs_TE[0, 0], probs_TE[0, 1], probs_TE[1, 2], probs_TE[1, 0]])
    assert torch.allclose(routing.weights_N, expected_N)
    assert routing.token_ids_N.tolist() == [0, 0, 1, 1]
    assert routing.tokens_per_expert_E.tolist() == [2, 1, 1]


def test_topk_then_softmax_renormalises_over_the_chosen_experts():
    router = TopKRouter(d_model=8, num_experts=6, top_k=3, order="topk_then_softmax")
    x_TD = torch.randn(10, 8)
    routing = router(x_TD)
    weights_TK = routing.weights_N.view(10, 3)
    assert torch.allclose(weights_TK.sum(-1), torch.ones(10))
    top_probs_TK = routing.probs_TE.gather(1, routing.expert_ids_N.view(10, 3))
    assert torch.allclose(weights_TK, top_probs_TK / top_probs_TK.sum(-1, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("order", ["softmax_then_topk", "topk_then_softmax"])
def test_routed_scaling_factor_multiplies_the_weights_and_nothing_else(order):
    plain = TopKRouter(d_model=8, num_experts=6, top_k=2, order=order)
    scaled = TopKRouter(d_model=8, num_experts=6, top_k=2, order=order, routed_scaling_factor=2.0)
    scaled.load_state_dict(plain.state_dict())
    x_TD = torch.randn(10, 8)
    a, b = plain(x_TD), scaled(x_TD)
    assert torch.equal(a.expert_ids_N, b.expert_ids_N) and torch.equal(a.probs_TE, b.probs_TE)
    assert torch.allclose(b.weights_N, 2.0 * a.weights_N)
    with pytest.raises(ValueError, match="router.routed_scaling_factor=0.0 must be > 0"):
        TopKRouter(d_model=8, num_experts=6, order="softmax_then_topk", routed_scaling_factor=0.0)


def test_jitter_only_while_training_and_within_its_band():
    router = TopKRouter(d_model=8, num_experts=4, top_k=1, order="softmax_then_topk", jitter_eps=0.1)
    x_TD = torch.randn(32, 8)
    router.eval()
    assert torch.equal(router(x_TD).logits_TE, router(x_TD).logits_TE)
    router.train()
    noisy_TE = router(x_TD).logits_TE
    assert not torch.equal(noisy_TE, router.eval()(x_TD).logits_TE)
    # noise multiplies the input by U[0.9, 1.1]: logits stay within 10% of |w|·|x| per coordinate
    bound_TE = (x_TD.abs() @ router.scorer.weight_ED.abs().T) * 0.1
    assert (noisy_TE - router(x_TD).logits_TE).abs().le(bound_TE + 1e-6).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 9}, "top_k=9 > num_experts=8"),
        ({"top_k": 0}, "top_k=0"),
        ({"order": "sideways"}, "router.order='sideways' is not one of"),
        ({"jitter_eps": 1.5}, "jitter_eps"),
    ],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TopKRouter(d_model=4, num_experts=8, **{"order": "softmax_then_topk", **kwargs})
