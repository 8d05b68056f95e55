"""The optimizer's parameter groups and the LR schedule, against direct computations."""

import math

import pytest
import torch

from moe.lr_schedule import lr_multiplier, warmup_cosine
from moe.optim import build_optimizer


def _model():
    from conftest import compose

    from moe.models.build import build_model

    config = compose("experiment=smoke", "logger=none")
    return build_model(config)


def test_router_lr_scale_gives_every_router_parameter_its_own_lr():
    model = _model()
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, router_lr_scale=0.25)
    router_params = {id(p) for name, p in model.named_parameters() if ".router." in name}
    assert router_params
    seen = 0
    for group in optimizer.param_groups:
        in_router = {id(p) in router_params for p in group["params"]}
        assert len(in_router) == 1  # a group holds routers only or no router at all
        assert group["lr"] == (2.5e-4 if in_router == {True} else 1e-3)
        assert group["weight_decay"] == (0.1 if group["params"][0].dim() >= 2 else 0.0)
        seen += len(group["params"])
    assert seen == len(list(model.parameters()))
    assert len(build_optimizer(model, lr=1e-3).param_groups) == 2  # scale 1: the two plain groups, as before
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps=4, max_steps=10))
    assert {g["lr"] for g in optimizer.param_groups} == {1e-3 / 4, 2.5e-4 / 4}  # the schedule scales both
    scheduler.step()
    assert {round(g["lr"], 12) for g in optimizer.param_groups} == {2.5e-4 / 2, 1e-3 / 2}


def test_cosine_schedule_values():
    multiplier = warmup_cosine(warmup_steps=2, max_steps=12, min_lr_ratio=0.1)
    assert [multiplier(s) for s in (0, 1)] == [0.5, 1.0]
    assert multiplier(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert multiplier(12) == pytest.approx(0.1) and multiplier(50) == pytest.approx(0.1)


def test_bad_router_lr_scale_is_named():
    with pytest.raises(ValueError, match="optim.router_lr_scale=0 must be > 0"):
        build_optimizer(torch.nn.Linear(2, 2), lr=1e-3, router_lr_scale=0)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_choice_reaches_adamw(fused):
    optimizer = build_optimizer(torch.nn.Linear(2, 2), lr=1e-3, fused=fused)
    assert optimizer.defaults["fused"] is fused


def test_wsd_holds_the_peak_then_cools_down_as_one_minus_sqrt():
    # 2 warmup steps, 20 steps, the last 5 cool down from 1 to 0.1
    multiplier = lr_multiplier(schedule="wsd", warmup_steps=2, max_steps=20, min_lr_ratio=0.1,
                               decay_fraction=0.25, decay_shape="sqrt")
    assert [multiplier(s) for s in range(16)] == [0.5] + [1.0] * 15
    assert [multiplier(s) for s in range(15, 20)] == pytest.approx(
        [0.1 + 0.9 * (1 - math.sqrt(i / 5)) for i in range(5)])
    assert multiplier(20) == pytest.approx(0.1) and multiplier(99) == pytest.approx(0.1)
    linear = lr_multiplier(schedule="wsd", warmup_steps=2, max_steps=20, decay_fraction=0.25, decay_shape="linear")
    assert [linear(s) for s in range(15, 21)] == pytest.approx([1.0, 0.82, 0.64, 0.46, 0.28, 0.1])


def test_wsd_stable_phase_does_not_depend_on_the_run_length():
    short, long = (lr_multiplier(schedule="wsd", warmup_steps=3, max_steps=n, decay_fraction=0.2) for n in (50, 500))
    assert [short(s) for s in range(40)] == [long(s) for s in range(40)]


def test_wsd_edge_cases():
    constant = lr_multiplier(schedule="wsd", warmup_steps=2, max_steps=10, decay_fraction=0.0)
    assert [constant(s) for s in range(12)] == [0.5] + [1.0] * 11  # no cooldown: the peak LR to the end
    # a cooldown longer than what follows the warmup starts right after it
    short = lr_multiplier(schedule="wsd", warmup_steps=4, max_steps=6, min_lr_ratio=0.0, decay_fraction=1.0,
                          decay_shape="linear")
    assert [short(s) for s in range(7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 0.5, 0.0]


def test_cosine_is_the_default_schedule():
    assert [lr_multiplier(warmup_steps=2, max_steps=12)(s) for s in range(14)] == [
        warmup_cosine(warmup_steps=2, max_steps=12)(s) for s in range(14)]
