"""HashRouter (Roller et al. 2021): fixed token-id maps, random and frequency-balanced."""

from __future__ import annotations

import pytest
import torch

from moe.routers import HashRouter


def test_random_map_is_a_seeded_permutation_and_deterministic():
    router = HashRouter(d_model=4, num_experts=3, vocab_size=10, seed=5)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    expected = torch.empty(10, dtype=torch.long)
    expected[perm] = torch.arange(10) % 3
    assert torch.equal(router.table_V, expected)
    assert torch.bincount(router.table_V, minlength=3).tolist() == [4, 3, 3]
    assert torch.equal(HashRouter(d_model=4, num_experts=3, vocab_size=10, seed=5).table_V, router.table_V)
    assert not torch.equal(HashRouter(d_model=4, num_experts=3, vocab_size=10, seed=6).table_V, router.table_V)
    assert list(router.parameters()) == [] and router.uses_token_ids


def test_routing_follows_the_table_with_unit_weights():
    router = HashRouter(d_model=4, num_experts=3, vocab_size=10)
    token_ids_T = torch.tensor([7, 7, 0, 9, 3])
    routing = router(torch.randn(5, 4), token_ids_T)
    routing.validate()
    assert torch.equal(routing.expert_ids_N, router.table_V[token_ids_T])
    assert routing.token_ids_N.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(routing.weights_N, torch.ones(5))
    assert torch.equal(routing.probs_TE, torch.full((5, 3), 1 / 3))
    assert torch.equal(routing.logits_TE, torch.zeros(5, 3)) and routing.top_k == 1.0


def test_balanced_mode_greedily_evens_out_the_frequency_load():
    counts_V = torch.tensor([10.0, 9.0, 8.0, 2.0, 2.0, 1.0, 1.0, 1.0])
    router = HashRouter(d_model=4, num_experts=3, vocab_size=8, mode="balanced", token_frequencies=counts_V)
    # decreasing frequency to the least-loaded expert (ties to the lower index):
    # 10->e0, 9->e1, 8->e2, 2->e2 (10), 2->e1 (11), 1->e0 (11), 1->e2 (11), 1->e0 (12)
    assert router.table_V.tolist() == [0, 1, 2, 2, 1, 0, 2, 0]
    loads = torch.zeros(3).index_add_(0, router.table_V, counts_V)
    assert loads.tolist() == [12.0, 11.0, 11.0]
    assert float(loads.max() - loads.min()) <= 1.0


def test_balanced_mode_needs_frequencies_before_routing():
    router = HashRouter(d_model=4, num_experts=2, vocab_size=4, mode="balanced")
    with pytest.raises(ValueError, match="fit_frequencies"):
        router(torch.randn(2, 4), torch.tensor([0, 1]))
    router.fit_frequencies(torch.tensor([1, 1, 1, 1]))
    assert router(torch.randn(2, 4), torch.tensor([0, 1])).expert_ids_N.tolist() == [0, 1]
    restored = HashRouter(d_model=4, num_experts=2, vocab_size=4, mode="balanced")
    restored.load_state_dict(router.state_dict())  # the fitted table travels with the checkpoint
    assert torch.equal(restored.table_V, router.table_V) and bool(restored.fitted)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "modulo"}, "router.mode='modulo' is not one of"),
        ({"vocab_size": 0}, "router.vocab_size=0"),
        ({"token_frequencies": [1.0] * 257}, "only used with mode='balanced'"),
        ({"mode": "balanced", "token_frequencies": [1.0, 2.0]}, "vocab_size=257 entries"),
    ],
)
def test_bad_options_fail_at_build_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HashRouter(d_model=4, num_experts=8, **kwargs)
