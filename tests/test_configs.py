"""Every option of every config group composes with the rest and builds; bad values fail early."""

from __future__ import annotations

import pytest
from conftest import compose, group_files
from hydra.errors import ConfigCompositionException, MissingConfigException

from moe.models.build import build_model
from moe.spec import instantiate

GROUP_OPTIONS = [
    (group, path.stem)
    for group in ("model", "router", "experts", "balance", "optim", "trainer", "logger", "experiment")
    for path in group_files(group)
]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_builds(group, option, smoke):
    config = smoke(f"{group}={option}")
    model = build_model(config)
    assert model.vocab_size == config["model"]["vocab_size"]
    instantiate(config["logger"], "logger")  # a partial: checks the target and its keywords
    if group == "experiment":
        return
    if group == "model":
        assert bool(model.moe_layers) == (config["model"]["num_experts"] > 0)


@pytest.mark.parametrize("option", [p.stem for p in group_files("data")])
def test_every_data_option_composes_and_names_real_keywords(option, smoke, tmp_path):
    extra = [f"data.data_files={tmp_path / 'x.txt'}"] if option == "hf" else []  # hf's data_files is mandatory
    if option == "tokens":  # shards on disk: no cache_dir, a mandatory path
        config = compose("experiment=smoke", "data=tokens", f"data.path={tmp_path}")
    else:
        config = smoke(f"data={option}", *extra)
    assert config["data"]["seq_len"] == config["model"]["max_seq_len"]
    # bind without building: checks the target imports and every key is one of its parameters
    instantiate({**config["data"], "_partial_": True}, "data")


@pytest.mark.parametrize("option", [p.stem for p in group_files("init")])
def test_every_init_option_composes_and_names_real_keywords(option, smoke, tmp_path):
    extra = [f"init.path={tmp_path}"] if option != "scratch" else []  # path is mandatory for the others
    config = smoke(f"init={option}", *extra)
    instantiate({**config["init"], "_partial_": True}, "init")


def test_balancers_combine_and_none_leaves_none(smoke):
    both = build_model(smoke("balance=[switch_aux,z_loss]"))
    assert sorted(both.moe_layers[0].balancers) == ["switch_aux", "z_loss"]
    assert len(build_model(smoke("balance=none")).moe_layers[0].balancers) == 0


def test_command_line_swaps_reach_the_model(smoke):
    model = build_model(smoke("router.top_k=1", "experts=loop", "model.num_experts=4", "model.moe_every=2"))
    layer = model.moe_layers[0]
    assert layer.router.top_k == 1 and type(layer.experts).__name__ == "LoopExperts"
    assert model.moe_indices == [1]


def test_unknown_group_option_lists_the_available_ones(smoke):
    with pytest.raises(MissingConfigException, match="top_k"):
        smoke("router=nonexistent")


def test_unknown_key_is_rejected(smoke):
    with pytest.raises(ConfigCompositionException, match="topk"):
        smoke("router.topk=1")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("router.top_k=17", "top_k=17 > num_experts=16"),
        ("model.n_heads=5", "d_model=64 is not divisible by model.n_heads=5"),
        ("router.order=sideways", "router.order='sideways' is not one of"),
        ("model.moe_layers=[7]", "outside"),
        # wrong types are caught by the annotations, before torch sees them
        ("router.top_k=2.5", r"^router.top_k=2.5 must be an integer$"),
        ("model.moe_layers=[a]", r"^model.moe_layers=\['a'\] must be a list of integers or null$"),
        ("balance.switch_aux.scope=2", r"^balance.switch_aux.scope=2 must be a string$"),
        # a part's own refusal is prefixed with the node the user wrote, also for parts built inside the model
        ("balance.switch_aux.coeff=-1", r"^balance.switch_aux: balancer coeff=-1 must be >= 0$"),
        ("model.d_model=0", r"^model.d_model=0 must be >= 1$"),
    ],
)
def test_bad_values_fail_at_build_time(smoke, override, message):
    with pytest.raises(ValueError, match=message):
        build_model(smoke(override))


def test_a_literal_annotation_admits_exactly_its_choices():
    from typing import Literal

    from moe.config_types import describe, has_type

    choice = Literal["a", 1]
    assert [has_type(v, choice) for v in ("a", 1, "b", 2, True, 1.0)] == [True, True, False, False, False, False]
    assert has_type(None, choice | None) and describe(choice) == "one of ('a', 1)"


def test_a_required_argument_missing_from_a_config_names_the_node():
    config = {"model": {"_target_": "moe.models.build_decoder", "vocab_size": 8, "d_model": 8, "n_layers": 1,
                        "n_heads": 2, "d_ff": 8, "max_seq_len": 8, "num_experts": 2},
              "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 1},
              "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True}}
    with pytest.raises(ValueError, match=r"^router: .*missing 1 required keyword-only argument: 'order'"):
        build_model(config)
