"""Specialisation measures on hand-built selections with known answers."""

import math

import pytest
import torch

from moe.analysis import (
    coactivation,
    domain_expert_frequency,
    mutual_information,
    routing_saturation,
    token_id_specialisation,
)


def one_hot_selection(expert_ids_TK: list[list[int]], E: int) -> torch.Tensor:
    selected_TE = torch.zeros(len(expert_ids_TK), E, dtype=torch.bool)
    for t, ids in enumerate(expert_ids_TK):
        selected_TE[t, ids] = True
    return selected_TE


def test_domain_blind_routing_has_zero_mutual_information():
    # both domains spread their tokens over the 4 experts in the same proportions
    pattern = [[0, 1], [2, 3], [0, 2], [1, 3]]
    selected_TE = one_hot_selection(pattern * 2, 4)
    domain_T = torch.tensor([0] * 4 + [1] * 4)
    freq_DE, mi = domain_expert_frequency(selected_TE, domain_T, 2)
    assert mi == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(freq_DE, torch.full((2, 4), 0.25, dtype=torch.float64))


def test_domain_split_routing_has_mutual_information_log2():
    selected_TE = one_hot_selection([[0, 1], [0, 1], [2, 3], [2, 3]], 4)
    domain_T = torch.tensor([0, 0, 1, 1])
    freq_DE, mi = domain_expert_frequency(selected_TE, domain_T, 2)
    assert mi == pytest.approx(math.log(2), abs=1e-12)
    assert freq_DE.tolist() == [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]


def test_mutual_information_of_unequal_domains_is_their_entropy_when_split():
    # 3 tokens of domain 0 on expert 0, 1 token of domain 1 on expert 1: I = H(D) = H(3/4, 1/4)
    counts = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert mutual_information(counts) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert mutual_information(torch.zeros(2, 2)) == 0.0


def test_token_id_determined_routing_is_fully_specialised():
    # token id v always goes to expert v % 4 (top-1), ids equally frequent
    token_T = torch.tensor([0, 1, 2, 3] * 5)
    selected_TE = one_hot_selection([[v % 4] for v in token_T.tolist()], 4)
    spec = token_id_specialisation(selected_TE, token_T)
    assert spec == {"determinism": 1.0, "baseline": 0.25, "mi_ratio": pytest.approx(1.0)}


def test_token_id_blind_routing_sits_at_the_baseline():
    # every id visits each pair of experts equally often: p(e | v) = 1/2 for k=2 of E=4 → top-2 share 1/2
    token_T = torch.tensor([7] * 4 + [9] * 4)
    pairs = [[0, 1], [2, 3], [0, 1], [2, 3]]
    spec = token_id_specialisation(one_hot_selection(pairs * 2, 4), token_T)
    assert spec["determinism"] == pytest.approx(0.5)
    assert spec["baseline"] == 0.5
    assert spec["mi_ratio"] == pytest.approx(0.0, abs=1e-12)


def test_coactivation_is_conditional_selection_frequency():
    selected_TE = one_hot_selection([[0, 1], [0, 2], [0, 1], [3]], 4)
    C = coactivation(selected_TE)
    assert C[0].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    assert C[1].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert C[3].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_routing_saturation_counts_shared_selections():
    later = one_hot_selection([[0, 1], [2, 3]], 4)
    assert routing_saturation(later, later) == 1.0
    assert routing_saturation(one_hot_selection([[2, 3], [0, 1]], 4), later) == 0.0
    assert routing_saturation(one_hot_selection([[0, 2], [2, 3]], 4), later) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="same tokens"):
        routing_saturation(later[:1], later)


def test_collect_routing_traces_every_moe_layer_of_a_model(smoke):
    from moe.analysis import collect_routing
    from moe.models.build import build_model

    model = build_model(smoke())
    input_ids = torch.randint(0, 257, (5, 16))
    domain_ids = torch.tensor([0, 0, 1, 1, 1])
    traces = collect_routing(model, input_ids, domain_ids, batch_size=2)
    out = model.eval()(input_ids)
    assert sorted(traces) == sorted(out.layer_aux)
    for layer, trace in traces.items():
        k = out.layer_aux[layer].routing.top_k
        assert trace.selected_TE.shape == (80, model.moe_layers[0].experts.num_experts)
        assert trace.selected_TE.sum(1).tolist() == [k] * 80  # dropless top-k
        assert torch.equal(trace.load_E, out.layer_aux[layer].routing.tokens_per_expert_E)
        assert torch.equal(trace.token_ids_T, input_ids.flatten())
        assert trace.domain_ids_T.tolist() == [0] * 32 + [1] * 48


def test_active_parameters_count_k_of_E_routed_experts(smoke):
    from moe.analysis import param_counts
    from moe.models.build import build_model

    model = build_model(smoke())  # 2 MoE blocks, 16 experts of d_ff 64 over d_model 64, top-2
    counts = param_counts(model)
    per_layer_experts = 16 * 3 * 64 * 64
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] - counts["active"] == 2 * per_layer_experts * 14 // 16
