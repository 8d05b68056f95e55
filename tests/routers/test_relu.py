"""ReLURouter (ReMoE) against direct computations."""

from __future__ import annotations

import pytest
import torch

from moe.routers import ReLURouter


def test_assignments_are_the_nonzeros_of_relu_logits():
    router = ReLURouter(d_model=4, num_experts=4, top_k=2)
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(4))
    x_TD = torch.tensor([[1.0, -2.0, 3.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [0.5, 0.5, 0.5, 2.0]])
    routing = router(x_TD)
    routing.validate()
    assert routing.token_ids_N.tolist() == [0, 0, 2, 2, 2, 2]
    assert routing.expert_ids_N.tolist() == [0, 2, 0, 1, 2, 3]
    assert torch.allclose(routing.weights_N, torch.tensor([1.0, 3.0, 0.5, 0.5, 0.5, 2.0]))
    assert routing.tokens_per_expert_E.tolist() == [2, 1, 2, 1]
    assert routing.top_k == 2.0 and routing.num_dropped == 0
    G_TE = x_TD.relu()
    expected_probs = torch.stack([G_TE[0] / 4.0, torch.full((4,), 0.25), G_TE[2] / 3.5])
    assert torch.allclose(routing.probs_TE, expected_probs)  # the all-zero token is uniform


def test_gradient_flows_through_the_active_gates_only():
    router = ReLURouter(d_model=4, num_experts=4)
    routing = router(torch.randn(16, 4))
    routing.weights_N.sum().backward()
    assert router.scorer.weight_ED.grad.abs().sum() > 0


def test_offset_is_added_inside_the_relu():
    router = ReLURouter(d_model=4, num_experts=4, top_k=2)
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(4))
        router.selection_bias_E.copy_(torch.tensor([0.0, 1.5, 0.0, -1.0]))
    routing = router(torch.tensor([[1.0, -1.0, -0.5, 0.5]]))  # z + b = [1, 0.5, -0.5, -0.5]
    assert routing.expert_ids_N.tolist() == [0, 1]
    assert torch.allclose(routing.weights_N, torch.tensor([1.0, 0.5]))  # the offset weighs too


def test_checkpoints_without_the_offset_load_as_zero_offset():
    router = ReLURouter(d_model=4, num_experts=4)
    old = {"weight_ED": torch.ones(4, 4)}  # a state dict from before the offset existed
    router.load_state_dict(old)
    assert torch.equal(router.selection_bias_E, torch.zeros(4))
    assert torch.equal(router.scorer.weight_ED, torch.ones(4, 4))


def test_no_active_expert_at_all_gives_an_empty_routing():
    router = ReLURouter(d_model=2, num_experts=3)
    with torch.no_grad():
        router.scorer.weight_ED.fill_(-1.0)
    routing = router(torch.ones(4, 2))
    routing.validate()
    assert routing.token_ids_N.numel() == 0 and routing.tokens_per_expert_E.tolist() == [0, 0, 0]
    assert torch.allclose(routing.probs_TE.sum(-1), torch.ones(4))


@pytest.mark.parametrize(("kwargs", "message"), [({"top_k": 9}, "top_k=9 > num_experts=8"), ({"top_k": 0}, "top_k=0")])
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReLURouter(d_model=4, num_experts=8, **kwargs)


def test_starts_at_the_target_sparsity_on_unit_rms_inputs():
    torch.manual_seed(0)
    x_TD = torch.randn(4096, 192)  # RMSNorm output: unit RMS per token
    for top_k, num_experts in ((2, 16), (2, 8), (4, 8)):
        router = ReLURouter(d_model=192, num_experts=num_experts, top_k=top_k)
        per_token = router(x_TD).expert_ids_N.numel() / 4096
        assert per_token == pytest.approx(top_k, rel=0.1), (top_k, num_experts)
    paper = ReLURouter(d_model=192, num_experts=16, top_k=2, start_at_target=False)
    assert torch.equal(paper.selection_bias_E, torch.zeros(16))
    assert paper(x_TD).expert_ids_N.numel() / 4096 == pytest.approx(8.0, rel=0.1)  # half of E
