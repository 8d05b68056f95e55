"""SCMoE (moe/scmoe.py): the contrast on hand-built logits, the rank-r weak routing, β = 0 reducing to
greedy decoding, batching not changing the tokens, and bad requests refused before any work."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from moe.experts import GroupedExperts
from moe.generation import generate
from moe.models.builder import build_decoder
from moe.routers import ExpertChoiceRouter, TopKRouter
from moe.scmoe import SCMoE, contrast_logits, rank_routing, weak_routing

PROMPTS = [[5, 9, 2, 44, 7, 1, 30], [12, 3], [8, 8, 50, 21, 2]]


def build(router=None, num_experts=4):
    torch.manual_seed(0)
    model = build_decoder(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_seq_len=40,
                          num_experts=num_experts, expert_d_ff=16, experts=GroupedExperts, num_shared_experts=1,
                          router=router or functools.partial(TopKRouter, top_k=2, order="topk_then_softmax"))
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(5.0)
    return model.eval()


def test_the_contrast_on_hand_built_logits():
    strong = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]]))
    weak = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    scores = contrast_logits(strong, weak, beta=1.0, alpha=0.1)
    # plausible: p_s >= 0.1 * 0.6 = 0.06 → tokens 0 and 1; score = 2 log p_s − log p_w
    assert torch.isinf(scores[0, 2:]).all()
    torch.testing.assert_close(scores[0, :2], torch.tensor([math.log(0.36 / 0.7), math.log(0.09 / 0.1)]))
    assert int(scores.argmax()) == 1 and int(strong.argmax()) == 0  # the contrast changes the choice
    torch.testing.assert_close(contrast_logits(strong, weak, beta=0.0, alpha=1.0)[0, 0], strong[0, 0])


def test_rank_routing_sends_each_token_to_its_rth_expert_with_weight_1():
    model = build()
    layer = model.blocks[0].ffn
    x_TD = torch.randn(10, 32)
    routing = layer.router(x_TD)
    for rank in (1, 2, 4):
        weak = rank_routing(routing, rank)
        expected = routing.probs_TE.sort(dim=-1, descending=True).indices[:, rank - 1]
        assert torch.equal(weak.expert_ids_N, expected) and torch.equal(weak.weights_N, torch.ones(10))
        weak.validate()
    with torch.no_grad(), weak_routing(model, 3):
        y, aux = layer(x_TD[None])
        expected = layer.experts(x_TD, rank_routing(routing, 3)) + layer.shared_expert(x_TD)
        torch.testing.assert_close(y[0], expected)
    assert layer.routing_override is None  # restored after the block


def test_beta_zero_is_greedy_and_batching_changes_nothing():
    model = build()
    greedy = generate(model, PROMPTS, max_new_tokens=8)
    assert generate(model, PROMPTS, max_new_tokens=8, scmoe=SCMoE(beta=0.0, alpha=1e-9)) == greedy
    contrasted = generate(model, PROMPTS, max_new_tokens=8, scmoe=SCMoE(beta=0.9))
    alone = [generate(model, [p], max_new_tokens=8, scmoe=SCMoE(beta=0.9))[0] for p in PROMPTS]
    assert contrasted == alone and contrasted != greedy


@pytest.mark.filterwarnings("ignore:ExpertChoiceRouter ranks all tokens")
@pytest.mark.parametrize("make, scmoe, message", [
    (lambda: build(num_experts=0), SCMoE(), "no routed layer"),
    (lambda: build(router=ExpertChoiceRouter), SCMoE(), "SCMoE needs token-choice routing"),
    (build, SCMoE(rank=5), r"scmoe rank=5 must lie in \[1, 4\]"),
    (build, SCMoE(alpha=0.0), r"scmoe alpha=0.0 must lie in \(0, 1\]"),
])
def test_bad_scmoe_requests_are_refused(make, scmoe, message):
    with pytest.raises(ValueError, match=message):
        generate(make(), PROMPTS, max_new_tokens=4, scmoe=scmoe)
