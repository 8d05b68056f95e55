"""RandomRouter: uniform random k distinct experts, global RNG in training, seeded in eval."""

from __future__ import annotations

import pytest
import torch

from moe.routers import RandomRouter


def test_k_distinct_experts_with_weight_one_over_k():
    router = RandomRouter(d_model=4, num_experts=6, top_k=3)
    routing = router(torch.randn(50, 4))
    routing.validate()
    expert_ids_TK = routing.expert_ids_N.view(50, 3)
    assert all(len(set(row)) == 3 for row in expert_ids_TK.tolist())
    assert torch.equal(routing.weights_N, torch.full((150,), 1 / 3))
    assert torch.equal(routing.probs_TE, torch.full((50, 6), 1 / 6)) and routing.top_k == 3.0
    assert list(router.parameters()) == []


def test_training_draws_from_the_global_rng():
    router = RandomRouter(d_model=4, num_experts=8, top_k=2).train()
    x_TD = torch.randn(20, 4)
    torch.manual_seed(3)
    first = router(x_TD).expert_ids_N
    expected = torch.rand(20, 8).topk(2, dim=-1).indices.reshape(-1)  # continues the same stream
    torch.manual_seed(3)
    assert torch.equal(router(x_TD).expert_ids_N, first)  # a restored RNG state replays the routing
    torch.manual_seed(3)
    torch.rand(20, 8)
    assert torch.equal(router(x_TD).expert_ids_N, expected)


def test_eval_uses_the_seeded_generator_and_leaves_the_global_rng_alone():
    router = RandomRouter(d_model=4, num_experts=8, top_k=2, seed=11).eval()
    x_TD = torch.randn(20, 4)
    state = torch.get_rng_state()
    first = router(x_TD).expert_ids_N
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(router(x_TD).expert_ids_N, first)
    expected = torch.rand(20, 8, generator=torch.Generator().manual_seed(11)).topk(2, dim=-1).indices
    assert torch.equal(first, expected.reshape(-1))


def test_roughly_uniform_load():
    routing = RandomRouter(d_model=4, num_experts=4, top_k=1)(torch.randn(4000, 4))
    assert (routing.tokens_per_expert_E.float() / 4000 - 0.25).abs().max() < 0.03


@pytest.mark.parametrize(("kwargs", "message"), [({"top_k": 9}, "top_k=9 > num_experts=8"), ({"top_k": 0}, "top_k=0")])
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RandomRouter(d_model=4, num_experts=8, **kwargs)
