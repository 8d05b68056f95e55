"""ReMoE adaptive L1: the loss on a hand-made ReLU routing, the adaptation direction of λ, and λ's
persistence in the state dict."""

from __future__ import annotations

import pytest
import torch

from moe.balance import ReMoEL1Loss
from moe.types import BalanceContext, Routing


def relu_routing(logits_TE: torch.Tensor, top_k: float) -> Routing:
    """A ReLU router's routing: one assignment per positive logit, gate = relu(logit)."""
    gates_TE = logits_TE.relu()
    token_ids_N, expert_ids_N = (gates_TE.detach() > 0).nonzero(as_tuple=True)
    E = logits_TE.shape[1]
    probs_TE = logits_TE.detach().softmax(-1)
    return Routing(token_ids_N, expert_ids_N, gates_TE[token_ids_N, expert_ids_N], logits_TE, probs_TE,
                   torch.bincount(expert_ids_N, minlength=E), 0, float(top_k))


CTX = BalanceContext(batch_size=1, seq_len=2, layer_index=0)
LOGITS = torch.tensor([[1.0, -1.0, 0.5, -2.0], [-1.0, 2.0, -0.5, -3.0]])  # 3 of 8 gates active


def test_hand_made_loss_value_and_gradient():
    logits_TE = LOGITS.clone().requires_grad_(True)
    loss = ReMoEL1Loss().loss(relu_routing(logits_TE, top_k=1), CTX)
    # c = [1, 1, 1, 0], f = c/(1·2) = [0.5, 0.5, 0.5, 0], mean_t G = [0.5, 1.0, 0.25, 0]
    assert loss.item() == pytest.approx(4 * (0.25 + 0.5 + 0.125), rel=1e-6)
    loss.backward()
    # dL/dz = E·f_i/T on active gates (descent shrinks them), 0 on inactive ones
    expected = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert torch.allclose(logits_TE.grad, expected)


def test_lambda_grows_when_too_many_experts_are_active():
    balancer = ReMoEL1Loss(coeff=1e-3).train()
    balancer.loss(relu_routing(LOGITS, top_k=1), CTX)  # sparsity 1 - 3/8 = 0.625 < 1 - 1/4
    balancer.on_optimizer_step()
    assert balancer.coeff == pytest.approx(1.2e-3)


def test_lambda_shrinks_when_sparse_enough():
    balancer = ReMoEL1Loss(coeff=1e-3, adapt_factor=2.0).train()
    balancer.loss(relu_routing(LOGITS, top_k=2), CTX)  # sparsity 0.625 >= 1 - 2/4
    balancer.on_optimizer_step()
    assert balancer.coeff == pytest.approx(0.5e-3)


def test_sparsity_is_measured_over_all_micro_steps_and_then_reset():
    balancer = ReMoEL1Loss(coeff=1.0).train()
    dense = torch.ones(2, 4)  # 8 of 8 active
    sparse = torch.tensor([[1.0, -1, -1, -1], [-1, -1, -1, -1]])  # 1 of 8 active
    # k = 2: target sparsity 0.5; dense + sparse = 9 of 16 active -> sparsity 0.4375 < 0.5 -> grow
    balancer.loss(relu_routing(dense, top_k=2), CTX)
    balancer.loss(relu_routing(sparse, top_k=2), CTX)
    balancer.on_optimizer_step()
    assert balancer.coeff == pytest.approx(1.2)
    # next step sees only the sparse micro-batch: 1 of 8 -> shrink
    balancer.loss(relu_routing(sparse, top_k=2), CTX)
    balancer.on_optimizer_step()
    assert balancer.coeff == pytest.approx(1.0)
    balancer.on_optimizer_step()  # no training forward: unchanged
    assert balancer.coeff == pytest.approx(1.0)


def test_eval_forwards_do_not_adapt():
    balancer = ReMoEL1Loss(coeff=1.0).eval()
    balancer.loss(relu_routing(torch.ones(2, 4), top_k=1), CTX)
    balancer.on_optimizer_step()
    assert balancer.coeff == 1.0


def test_lambda_survives_a_state_dict_round_trip():
    balancer = ReMoEL1Loss(coeff=1e-3).train()
    balancer.loss(relu_routing(LOGITS, top_k=1), CTX)
    balancer.on_optimizer_step()
    fresh = ReMoEL1Loss()
    fresh.load_state_dict(balancer.state_dict())
    assert fresh.coeff == pytest.approx(1.2e-3)


def test_defaults_and_validation():
    balancer = ReMoEL1Loss()
    assert balancer.coeff == 1e-8 and balancer.adapt_factor == 1.2
    with pytest.raises(ValueError, match="coeff"):
        ReMoEL1Loss(coeff=0.0)
    with pytest.raises(ValueError, match="adapt_factor"):
        ReMoEL1Loss(adapt_factor=1.0)


def test_l1_is_taken_on_the_gates_the_experts_saw_offset_included():
    from moe.routers import ReLURouter

    router = ReLURouter(d_model=3, num_experts=3, top_k=1)
    with torch.no_grad():
        router.scorer.weight_ED.copy_(torch.eye(3))
        router.selection_bias_E.copy_(torch.tensor([0.5, 0.0, -1.0]))
    x_TD = torch.tensor([[1.0, -0.2, 0.5], [-0.3, 2.0, 2.0]])  # G = relu(z + b) = [[1.5, 0, 0], [0.2, 2, 1]]
    loss = ReMoEL1Loss().loss(router(x_TD), CTX)
    f_E = torch.tensor([2.0, 1.0, 1.0]) / (1 * 2)  # counts / (k·T)
    mean_gates_E = torch.tensor([1.7, 2.0, 1.0]) / 2
    assert loss.item() == pytest.approx(3 * float((f_E * mean_gates_E).sum()))
