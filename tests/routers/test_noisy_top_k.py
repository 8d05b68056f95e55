"""NoisyTopKRouter (Shazeer et al. 2017 eq. 3-5) against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moe.routers import NoisyTopKRouter


def test_eval_mode_is_softmax_over_the_kept_clean_logits():
    router = NoisyTopKRouter(d_model=4, num_experts=3, top_k=2).eval()
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(3, 4))
        router.noise_scorer.weight_ED.fill_(5.0)  # ignored in eval
    x_TD = torch.tensor([[3.0, 1.0, 0.0, 9.0], [0.0, 0.5, 2.0, 0.0]])
    routing = router(x_TD)
    assert routing.expert_ids_N.tolist() == [0, 1, 2, 1]
    expected_N = torch.cat([torch.tensor([3.0, 1.0]).softmax(-1), torch.tensor([2.0, 0.5]).softmax(-1)])
    assert torch.allclose(routing.weights_N, expected_N)
    assert torch.allclose(routing.probs_TE, torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 2.0]]).softmax(-1))


def test_training_noise_is_softplus_scaled_gaussian():
    router = NoisyTopKRouter(d_model=4, num_experts=3, top_k=3, noise_init_std=0.1).train()
    x_TD = torch.randn(5, 4)
    torch.manual_seed(1)
    routing = router(x_TD)
    torch.manual_seed(1)
    clean_TE = x_TD @ router.scorer.weight_ED.T
    noisy_TE = clean_TE + torch.randn(5, 3) * F.softplus(x_TD @ router.noise_scorer.weight_ED.T)
    expert_ids_TK = noisy_TE.topk(3, dim=-1).indices
    assert torch.equal(routing.expert_ids_N, expert_ids_TK.reshape(-1))
    expected_TK = noisy_TE.gather(1, expert_ids_TK).softmax(-1)
    assert torch.allclose(routing.weights_N, expected_TK.reshape(-1), atol=1e-6)
    assert torch.allclose(routing.probs_TE, clean_TE.softmax(-1), atol=1e-6)  # probs use the clean logits
    routing.weights_N.square().sum().backward()
    assert router.noise_scorer.weight_ED.grad.abs().sum() > 0


def test_selection_bias_changes_selection_not_weights():
    router = NoisyTopKRouter(d_model=4, num_experts=3, top_k=2).eval()
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(3, 4))
        router.selection_bias_E[2] = 10.0
    routing = router(torch.tensor([[3.0, 1.0, 0.0, 0.0]]))
    assert routing.expert_ids_N.tolist() == [2, 0]
    assert torch.allclose(routing.weights_N, torch.tensor([0.0, 3.0]).softmax(-1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"top_k": 9}, "top_k=9 > num_experts=8"), ({"noise_init_std": -1.0}, "router.noise_init_std=-1.0")],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoisyTopKRouter(d_model=4, num_experts=8, **kwargs)
