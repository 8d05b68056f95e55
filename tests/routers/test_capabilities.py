"""Router capabilities (moe/types.py Protocols) of every shipped router, and the helper that checks them."""

from __future__ import annotations

import pytest
import torch
from conftest import group_files
from torch import nn

from moe.models.build import build_model
from moe.routers import CMoERouter, CosineRouter, NoisyTopKRouter, TopKRouter
from moe.types import (
    DeclaresScoreScale,
    HasSelectionBias,
    LinearScored,
    ReadsTokenIds,
    Scored,
    TakesRepresentatives,
    TopKGated,
    supports,
)

ROUTER_PROTOCOLS = (ReadsTokenIds, Scored, HasSelectionBias, DeclaresScoreScale, TopKGated)
SCORER_PROTOCOLS = (LinearScored, TakesRepresentatives)
LEARNED = {Scored, HasSelectionBias, DeclaresScoreScale}
EXPECTED = {
    "top_k": LEARNED | {TopKGated, LinearScored},
    "noisy_top_k": LEARNED | {LinearScored}, "sigmoid": LEARNED | {LinearScored},
    "relu": LEARNED | {LinearScored}, "sinkhorn": LEARNED | {LinearScored},
    "cosine": LEARNED,  # scores by cosine in a projected space: no linear weight_ED
    "cmoe": LEARNED | {TakesRepresentatives},
    "expert_choice": {Scored, DeclaresScoreScale, LinearScored},  # no bias: a constant cannot reorder a column
    "hash": {ReadsTokenIds},
    "random": set(),
}


def capabilities(router: nn.Module) -> set[type]:
    """The router's protocols and, for a learned router, its scorer's."""
    found = {protocol for protocol in ROUTER_PROTOCOLS if supports(router, protocol)}
    if Scored in found:
        found |= {protocol for protocol in SCORER_PROTOCOLS if supports(router.scorer, protocol)}
    return found


def test_every_router_config_is_listed():
    assert sorted(EXPECTED) == sorted(path.stem for path in group_files("router"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_router_has_exactly_its_capabilities(name, smoke):
    router = build_model(smoke(f"router={name}")).moe_layers[0].router
    assert capabilities(router) == EXPECTED[name]


LEGACY_STATE = {  # state-dict names written before scorers were modules → where they live now
    TopKRouter: {"weight_ED": "scorer.weight_ED"},
    NoisyTopKRouter: {"weight_ED": "scorer.weight_ED", "noise_weight_ED": "noise_scorer.weight_ED"},
    CosineRouter: {name: f"scorer.{name}" for name in ("proj_PD", "expert_embed_EP", "log_temperature")},
    CMoERouter: {"gate_ED": "scorer.gate_ED", "up_ED": "scorer.up_ED"},
}


@pytest.mark.parametrize("router_class", list(LEGACY_STATE), ids=lambda cls: cls.__name__)
def test_checkpoints_with_the_flat_names_still_load(router_class):
    kwargs = {"order": "softmax_then_topk"} if router_class is TopKRouter else {}
    router = router_class(d_model=4, num_experts=3, top_k=2, **kwargs)
    torch.manual_seed(1)
    new_state = {name: torch.randn_like(value) for name, value in router.state_dict().items()}
    renamed = LEGACY_STATE[router_class]
    old_state = {next((old for old, new in renamed.items() if new == name), name): value
                 for name, value in new_state.items()}
    assert set(old_state) != set(new_state)
    router.load_state_dict(old_state)  # strict: every old name has found its place
    for name, value in router.state_dict().items():
        assert torch.equal(value, new_state[name]), name


def test_supports_sees_buffers_and_parameters_and_methods():
    module = nn.Module()
    assert not supports(module, HasSelectionBias) and not supports(module, LinearScored)
    module.register_buffer("selection_bias_E", torch.zeros(3))
    module.weight_ED = nn.Parameter(torch.zeros(3, 2))
    assert supports(module, HasSelectionBias) and supports(module, LinearScored)
    assert not supports(module, TopKGated)  # needs both top_k and order
    module.top_k = 2
    assert not supports(module, TopKGated)
    module.order = "topk_then_softmax"
    assert supports(module, TopKGated)
    assert not supports(module, DeclaresScoreScale)
    module.selection_score_scale = lambda: 0.5
    assert supports(module, DeclaresScoreScale)
