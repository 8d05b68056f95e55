"""Configs written by earlier code (checkpoints' config.yaml) build today what they built then."""

from __future__ import annotations

import yaml

from moe.balance import SwitchAuxLoss
from moe.checkpoint import read_config
from moe.config_upgrade import upgrade_config
from moe.routers import TopKRouter


def test_a_router_without_order_gets_the_order_it_had_before_order_became_required():
    old = {"router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 2}}
    assert upgrade_config(old)["router"]["order"] == "softmax_then_topk"
    written = {"_target_": "moe.routers.TopKRouter", "top_k": 2, "order": "topk_then_softmax"}
    assert upgrade_config(written) == written  # a value the file holds is never replaced


def test_seq_aux_becomes_switch_aux_at_sequence_scope_with_its_coefficient():
    old = {"balance": {"seq_aux": {"_target_": "moe.balance.SeqAuxLoss", "_partial_": True}},
           "other": [{"_target_": "moe.balance.SeqAuxLoss", "coeff": 0.5}]}
    new = upgrade_config(old)
    assert new["balance"]["seq_aux"] == {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True,
                                         "scope": "sequence", "coeff": 1e-4}
    assert new["other"] == [{"_target_": "moe.balance.SwitchAuxLoss", "scope": "sequence", "coeff": 0.5}]
    assert old["balance"]["seq_aux"]["_target_"] == "moe.balance.SeqAuxLoss"  # the input is not modified
    node = dict(new["other"][0])
    del node["_target_"]
    assert SwitchAuxLoss(**node).scope == "sequence"


def test_read_config_upgrades_what_it_reads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"router": {"_target_": "moe.routers.TopKRouter", "top_k": 1},
                                    "balance": {"aux_free": {"_target_": "moe.balance.AuxFreeBalancer"}}}))
    config = read_config(path)
    assert config["balance"]["aux_free"]["update_rate"] == 1e-3
    router = {key: value for key, value in config["router"].items() if key != "_target_"}
    assert TopKRouter(d_model=4, num_experts=2, **router).order == "softmax_then_topk"
