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


def test_a_checkpoint_of_the_flat_decoder_loads_into_the_composed_one(smoke):
    """Before the builder existed the model node's target was the module itself and blocks named their
    mixer ``attention`` and its norm ``attn_norm``; such a checkpoint still builds and loads exactly."""
    import torch

    from moe.models.build import build_model

    config = smoke()
    model = build_model(config)
    old_config = {**config, "model": {**config["model"], "_target_": "moe.models.DecoderLM"}}
    old_state = {key.replace(".mixer_norm.", ".attn_norm.").replace(".mixer.", ".attention.")
                 .replace(".router.scorer.", ".router."): value for key, value in model.state_dict().items()}
    assert any(".attention." in key for key in old_state) and any(".router.weight_ED" in key for key in old_state)
    rebuilt = build_model(old_config)
    rebuilt.load_state_dict(old_state)  # strict: every old name finds its place
    ids_BS = torch.randint(0, 257, (2, 9))
    assert torch.equal(rebuilt.eval()(ids_BS).logits, model.eval()(ids_BS).logits)
    ordered = [name for name, _ in rebuilt.named_parameters()]
    assert ordered == [name for name, _ in model.named_parameters()]  # optimizer state order is unchanged
