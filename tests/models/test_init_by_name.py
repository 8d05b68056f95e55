"""``init.draws=by_name`` (moe/models/init_by_name.py): the arms of one seed start equal wherever they share
a parameter, whatever else they build and whatever the random state before."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import compose

from moe.models.build import build_model
from moe.spec import ConfigError, instantiate
from moe.upcycle import FromScratch

SMALL = ["model.d_model=32", "model.n_layers=3", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64",
         "model.expert_d_ff=16", "model.shared_expert_d_ff=32", "model.max_seq_len=16",
         "logger=none"]
# top-k, an arm with its router's shapes (sigmoid), arms whose routers or experts draw other amounts of random
# numbers (noisy_top_k, cosine, hash, random), and the dense model
ARMS = {
    "top_k": ["experiment=compare_routers", "router_arm=top_k"],
    "sigmoid": ["experiment=compare_routers", "router_arm=sigmoid"],
    "noisy_top_k": ["experiment=compare_routers", "router_arm=noisy_top_k"],
    "cosine": ["experiment=compare_routers", "router_arm=cosine"],
    "hash": ["experiment=compare_routers", "router_arm=hash"],
    "random": ["experiment=compare_routers", "router_arm=random"],
    "dense": ["model=dense_tiny"],
}


def built(arm: str, draws: str, *, seed: int = 3, rng_state: int = 0) -> dict[str, torch.Tensor]:
    """The arm's initial state dict, built after torch.manual_seed(rng_state) and initialised by init=scratch."""
    torch.manual_seed(rng_state)
    model = build_model(compose(*ARMS[arm], *SMALL))
    FromScratch(draws=draws, seed=seed)(model)
    return model.state_dict()


def shared_names(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    return [name for name in a if name in b and a[name].shape == b[name].shape]


@pytest.mark.parametrize("arm", ["sigmoid", "noisy_top_k", "cosine", "hash", "random", "dense"])
def test_by_name_every_parameter_two_arms_share_starts_equal(arm):
    reference, other = built("top_k", "by_name"), built(arm, "by_name", rng_state=1)
    names = shared_names(reference, other)
    # embeddings and the attention of the last block are shared by every arm (the check is not vacuous)
    assert {"embed.weight", "blocks.2.mixer.q_proj.weight", "blocks.2.mixer.o_proj.weight"} <= set(names)
    assert [name for name in names if not torch.equal(reference[name], other[name])] == []


def test_by_name_routers_with_the_same_scorer_start_equal():
    top_k, sigmoid = built("top_k", "by_name"), built("sigmoid", "by_name", rng_state=5)
    routers = [name for name in top_k if ".router." in name and name.endswith("weight_ED")]
    assert len(routers) == 3 and all(torch.equal(top_k[name], sigmoid[name]) for name in routers)


@pytest.mark.parametrize("arm", ["noisy_top_k", "cosine", "dense"])
def test_in_sequence_another_router_or_none_shifts_the_other_parameters(arm):
    """Why by_name exists: with one stream, these arms' attention weights are not the top-k arm's."""
    top_k, other = built("top_k", "sequence"), built(arm, "sequence")
    assert not torch.equal(top_k["blocks.2.mixer.q_proj.weight"], other["blocks.2.mixer.q_proj.weight"])


def test_sequence_keeps_the_constructors_draws():
    torch.manual_seed(7)
    model = build_model(compose(*ARMS["top_k"], *SMALL))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    FromScratch()(model)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_by_name_depends_on_the_seed_for_every_redrawn_parameter():
    seed_3, seed_4 = built("top_k", "by_name", seed=3), built("top_k", "by_name", seed=4)
    drawn = [name for name, tensor in seed_3.items() if tensor.dim() >= 2]
    assert len(drawn) > 10
    assert [name for name in drawn if torch.equal(seed_3[name], seed_4[name])] == []


def test_by_name_keeps_the_init_scale_and_the_global_random_state():
    torch.manual_seed(11)
    model = build_model(compose(*ARMS["top_k"]))  # the default sizes: 192 x 192 projections
    state = torch.get_rng_state()
    FromScratch(draws="by_name", seed=0)(model)
    assert torch.equal(torch.get_rng_state(), state)
    init_std, n_layers = model.init_std, len(model.blocks)
    q_std = model.blocks[1].mixer.q_proj.weight.std().item()
    o_std = model.blocks[1].mixer.o_proj.weight.std().item()
    # 36,864 draws each: the sample std is within 1% of the true one with overwhelming probability
    assert q_std == pytest.approx(init_std, rel=0.03)
    assert o_std == pytest.approx(init_std / math.sqrt(2 * n_layers), rel=0.03)
    assert model.blocks[1].ffn.router.scorer.weight_ED.std().item() == pytest.approx(
        model.blocks[1].ffn.router.scorer.init_std, rel=0.1)


def test_an_unknown_draws_value_is_named():
    with pytest.raises(ConfigError, match=r"init\.draws='byname' must be one of .*sequence.*by_name"):
        instantiate({"_target_": "moe.upcycle.FromScratch", "draws": "byname"}, "init")
