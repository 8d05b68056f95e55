"""Router capabilities (moe/types.py Protocols) of every shipped router, and the helper that checks them."""

from __future__ import annotations

import pytest
import torch
from conftest import group_files
from torch import nn

from moe.models.build import build_model
from moe.types import (
    DeclaresScoreScale,
    HasSelectionBias,
    LinearScored,
    ReadsTokenIds,
    TakesRepresentatives,
    TopKGated,
    supports,
)

PROTOCOLS = (ReadsTokenIds, HasSelectionBias, DeclaresScoreScale, LinearScored, TopKGated, TakesRepresentatives)
SCORED = {HasSelectionBias, DeclaresScoreScale, LinearScored}
EXPECTED = {
    "top_k": SCORED | {TopKGated},
    "noisy_top_k": SCORED, "sigmoid": SCORED, "relu": SCORED, "sinkhorn": SCORED,
    "cosine": {HasSelectionBias, DeclaresScoreScale},  # scores by cosine in a projected space, no weight_ED
    "cmoe": {HasSelectionBias, DeclaresScoreScale, TakesRepresentatives},
    "expert_choice": {DeclaresScoreScale, LinearScored},  # no bias: a constant cannot reorder an expert's tokens
    "hash": {ReadsTokenIds},
    "random": set(),
}


def test_every_router_config_is_listed():
    assert sorted(EXPECTED) == sorted(path.stem for path in group_files("router"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_router_has_exactly_its_capabilities(name, smoke):
    router = build_model(smoke(f"router={name}")).moe_layers[0].router
    assert {protocol for protocol in PROTOCOLS if supports(router, protocol)} == EXPECTED[name]


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
