"""Aux-loss-free bias balancing: the update rules, attach checks, convergence of a skewed router for
both rules (softmax and sigmoid scores), and gate weights that never see the bias."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from torch import nn

from moe.balance import AuxFreeBalancer
from moe.models.build import build_model
from moe.routers import SigmoidRouter, TopKRouter
from moe.routers.base import Router
from moe.types import BalanceContext, Routing

E, K, D, T = 8, 2, 16, 2048


def skewed(router: Router) -> Router:
    """Input feature 0 is constant 1 and only expert 0 reads it: expert 0 is strongly preferred."""
    torch.manual_seed(0)
    with torch.no_grad():
        router.scorer.weight_ED.normal_(std=0.5)
        router.scorer.weight_ED[:, 0] = 0.0
        router.scorer.weight_ED[0, 0] = 1.5
    return router


def inputs() -> torch.Tensor:
    x_TD = torch.randn(T, D, generator=torch.Generator().manual_seed(1))
    x_TD[:, 0] = 1.0
    return x_TD


def max_vio(counts_E: torch.Tensor) -> float:
    counts_E = counts_E.float()
    return ((counts_E.max() - counts_E.mean()) / counts_E.mean()).item()


CTX = BalanceContext(batch_size=1, seq_len=T, layer_index=0)


@pytest.mark.parametrize(("router_cls", "rule", "rate"), [
    (TopKRouter, "sign", 2e-3), (TopKRouter, "proportional", 1e-2),
    (SigmoidRouter, "sign", 2e-3), (SigmoidRouter, "proportional", 1e-2),
])
def test_skewed_router_reaches_max_vio_below_0_1(router_cls, rule, rate):
    kwargs = {"order": "softmax_then_topk"} if router_cls is TopKRouter else {}
    router = skewed(router_cls(d_model=D, num_experts=E, top_k=K, **kwargs))
    balancer = AuxFreeBalancer(update_rate=rate, rule=rule).train()
    balancer.attach(router)
    x_TD = inputs()
    history = []
    for _ in range(301):
        with torch.no_grad():
            routing = router(x_TD)
        history.append(max_vio(routing.tokens_per_expert_E))
        assert balancer.loss(routing, CTX) is None
        balancer.on_optimizer_step()
    assert history[0] > 0.5, "the test router is not skewed"
    first = next(i for i, v in enumerate(history) if v < 0.1)
    assert first <= 300
    assert max(history[-50:]) < 0.1  # and it stays balanced


def test_bias_never_changes_the_weights_of_a_token_whose_choice_is_unchanged():
    for router_cls in (TopKRouter, SigmoidRouter):
        for order in ("softmax_then_topk", "topk_then_softmax"):
            kwargs = {"order": order} if router_cls is TopKRouter else {}
            router = skewed(router_cls(d_model=D, num_experts=E, top_k=K, **kwargs))
            x_TD = inputs()
            before = router(x_TD)
            router.selection_bias_E.copy_(torch.linspace(-0.2, 0.2, E))
            after = router(x_TD)
            ids_before, ids_after = before.expert_ids_N.view(T, K), after.expert_ids_N.view(T, K)
            same_T = (ids_before == ids_after).all(-1)
            assert 0 < same_T.sum() < T
            assert torch.equal(before.weights_N.view(T, K)[same_T], after.weights_N.view(T, K)[same_T])
            assert torch.equal(before.probs_TE, after.probs_TE)


def routing_with_counts(counts: list[int]) -> Routing:
    expert_ids_N = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = expert_ids_N.numel()
    probs_TE = torch.full((n, len(counts)), 1.0 / len(counts))
    return Routing(torch.arange(n), expert_ids_N, torch.ones(n), probs_TE.log(), probs_TE,
                   torch.bincount(expert_ids_N, minlength=len(counts)), 0, 1.0)


def attached(**kwargs) -> tuple[AuxFreeBalancer, TopKRouter]:
    router = TopKRouter(d_model=4, num_experts=4, top_k=1, order="softmax_then_topk")
    balancer = AuxFreeBalancer(**{"update_rate": 1e-3, **kwargs}).train()
    balancer.attach(router)
    return balancer, router


def test_sign_rule_uses_counts_summed_over_micro_steps():
    balancer, router = attached(update_rate=0.1, rule="sign")
    balancer.loss(routing_with_counts([3, 1, 2, 2]), CTX)
    balancer.loss(routing_with_counts([3, 1, 0, 2]), CTX)  # total [6, 2, 2, 4], mean 3.5
    balancer.on_optimizer_step()
    assert torch.allclose(router.selection_bias_E, torch.tensor([-0.1, 0.1, 0.1, -0.1]))
    assert balancer.counts_E.sum() == 0
    balancer.on_optimizer_step()  # no forward since the last step: no update
    assert torch.allclose(router.selection_bias_E, torch.tensor([-0.1, 0.1, 0.1, -0.1]))


def test_proportional_rule_and_recenter():
    balancer, router = attached(update_rate=0.1, rule="proportional")
    balancer.loss(routing_with_counts([6, 2, 2, 6]), CTX)  # mean 4: e/mean = [-0.5, 0.5, 0.5, -0.5]
    balancer.on_optimizer_step()
    assert torch.allclose(router.selection_bias_E, torch.tensor([-0.05, 0.05, 0.05, -0.05]))
    balancer, router = attached(update_rate=0.1, rule="sign", recenter=True)
    balancer.loss(routing_with_counts([5, 1, 1, 1]), CTX)  # sign(e) = [-1, 1, 1, 1] -> mean 0.5
    balancer.on_optimizer_step()
    assert torch.allclose(router.selection_bias_E, torch.tensor([-0.15, 0.05, 0.05, 0.05]))
    assert abs(router.selection_bias_E.mean().item()) < 1e-7


def test_top_k_target_raises_every_offset_of_a_layer_whose_gates_died():
    from moe.routers import ReLURouter

    router = ReLURouter(d_model=4, num_experts=4, top_k=2)
    balancer = AuxFreeBalancer(update_rate=0.1, target="top_k").train()
    balancer.attach(router)
    # 8 tokens with one assignment each, target k·T/E = 2·8/4 = 4 per expert: loads [4, 4, 0, 0] → e = [0, 0, 4, 4]
    # (the mean target, 2, would lower experts 0 and 1: it balances, but lets the layer go sparser)
    routing = routing_with_counts([4, 4, 0, 0])
    routing.top_k = 2.0
    balancer.loss(routing, CTX)
    balancer.on_optimizer_step()
    assert torch.allclose(router.selection_bias_E, torch.tensor([0.0, 0.0, 0.1, 0.1]))
    balancer.loss(  # 4 tokens, every gate off: all offsets rise
        Routing(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0),
                torch.zeros(4, 4), torch.full((4, 4), 0.25), torch.zeros(4, dtype=torch.long), 0, 2.0), CTX)
    balancer.on_optimizer_step()
    assert torch.allclose(router.selection_bias_E, torch.tensor([0.1, 0.1, 0.2, 0.2]))
    dead, router = attached(update_rate=0.1)
    dead.loss(routing_with_counts([0, 0, 0, 0]), CTX)  # every gate off: the mean target has nothing to do
    dead.on_optimizer_step()
    assert router.selection_bias_E.abs().sum() == 0


def test_relu_layer_revives_under_the_top_k_target():
    """A ReLU router whose every logit is negative routes nothing; the top_k target brings it back to
    about k experts per token within a few updates."""
    from moe.routers import ReLURouter

    torch.manual_seed(0)
    router = ReLURouter(d_model=D, num_experts=E, top_k=K)
    with torch.no_grad():
        router.scorer.weight_ED.normal_(std=0.1)
    x_TD = inputs()
    logits_TE = router.scorer(x_TD)
    with torch.no_grad():
        router.selection_bias_E.fill_(-float(logits_TE.max()) - 0.1)  # every gate off
    assert router(x_TD).expert_ids_N.numel() == 0
    balancer = AuxFreeBalancer(update_rate=0.05, target="top_k").train()
    balancer.attach(router)
    for _ in range(60):
        balancer.loss(router(x_TD), CTX)
        balancer.on_optimizer_step()
    per_token = router(x_TD).expert_ids_N.numel() / T
    assert 0.5 * K <= per_token <= 1.5 * K


def test_eval_forwards_do_not_count():
    balancer, router = attached(update_rate=0.1)
    balancer.eval()
    balancer.loss(routing_with_counts([5, 1, 1, 1]), CTX)
    balancer.on_optimizer_step()
    assert router.selection_bias_E.abs().sum() == 0


def test_validation_and_attach_errors():
    with pytest.raises(ValueError, match="rule"):
        AuxFreeBalancer(update_rate=1e-3, rule="linear")
    with pytest.raises(ValueError, match="update_rate"):
        AuxFreeBalancer(update_rate=-1.0)
    with pytest.raises(ValueError, match="coeff"):
        AuxFreeBalancer(update_rate=1e-3, coeff=0.01)
    with pytest.raises(ValueError, match="recenter"):
        AuxFreeBalancer(update_rate=1e-3, recenter="yes")
    with pytest.raises(ValueError, match=r"aux_free.target='all' is not one of \('mean', 'top_k'\)"):
        AuxFreeBalancer(update_rate=1e-3, target="all")
    with pytest.raises(ValueError, match="Linear"):
        AuxFreeBalancer(update_rate=1e-3).attach(nn.Linear(2, 2))
    balancer, router = attached()
    assert balancer.coeff == 0.0 and balancer.update_rate == 1e-3 and balancer.rule == "sign"
    assert not balancer.recenter
    assert "router" not in dict(balancer.named_modules()) and balancer.state_dict() == {}


def test_auto_update_rate_lets_the_bias_cross_the_score_scale_in_a_fraction_of_the_run():
    softmax = AuxFreeBalancer(update_rate="auto", run_steps=300)
    softmax.attach(TopKRouter(d_model=D, num_experts=16, top_k=K, order="softmax_then_topk"))
    assert softmax.update_rate == pytest.approx((1 / 16) / (0.05 * 300))  # 0.0041667: 1/E in 15 steps
    sigmoid = AuxFreeBalancer(update_rate="auto", run_steps=20_000)
    sigmoid.attach(SigmoidRouter(d_model=D, num_experts=E, top_k=K))
    assert sigmoid.update_rate == pytest.approx(1e-3)  # the papers' constant is this rule at 20k steps
    slower = AuxFreeBalancer(update_rate="auto", run_steps=300, catch_up_fraction=0.5)
    slower.attach(TopKRouter(d_model=D, num_experts=16, top_k=K, order="softmax_then_topk"))
    assert slower.update_rate == pytest.approx(softmax.update_rate / 10)
    still = AuxFreeBalancer(update_rate="auto", run_steps=0)
    still.attach(TopKRouter(d_model=D, num_experts=16, top_k=K, order="softmax_then_topk"))
    assert still.update_rate == 0.0


class UnscaledRouter(SigmoidRouter):
    """A router with a selection bias but no declared score scale."""

    def selection_score_scale(self) -> None:
        return None


def test_auto_update_rate_errors_name_the_key():
    with pytest.raises(ValueError, match=r"aux_free.run_steps=None must be an integer >= 0"):
        AuxFreeBalancer(update_rate="auto")
    with pytest.raises(ValueError, match=r"aux_free.catch_up_fraction=0 must lie in \(0, 1\]"):
        AuxFreeBalancer(update_rate="auto", run_steps=10, catch_up_fraction=0)
    with pytest.raises(ValueError, match=r"aux_free.update_rate='fast' must be a number >= 0 or 'auto'"):
        AuxFreeBalancer(update_rate="fast")
    with pytest.raises(ValueError, match=r"update_rate=auto needs the scale of UnscaledRouter's selection scores"):
        AuxFreeBalancer(update_rate="auto", run_steps=10).attach(UnscaledRouter(d_model=D, num_experts=E, top_k=K))


def test_shipped_config_sets_the_rate_from_trainer_max_steps():
    config = compose("balance=aux_free", "trainer.max_steps=300", "model.n_layers=1")
    assert config["balance"]["aux_free"]["run_steps"] == 300
    balancer = build_model(config).moe_layers[0].balancers["aux_free"]
    assert balancer.update_rate == pytest.approx((1 / 16) / (0.05 * 300))
