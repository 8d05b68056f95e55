"""Build a model from the resolved run config (the ``model``, ``router``, ``experts`` and ``balance``
nodes of ``config.yaml``) — shared by training and :func:`moe.load_model`. Targets renamed since a
config was written (e.g. ``_target_: moe.models.DecoderLM``) are renamed first (moe/config_upgrade.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.config_upgrade import upgrade_config
from moe.spec import instantiate


def build_model(config: Mapping[str, Any]) -> nn.Module:
    config = upgrade_config(dict(config), former_defaults=False)  # renamed targets only
    model_cfg = config["model"]
    # truthiness, not int(): a mistyped count ("abc") goes on to instantiate, whose type check names the key
    if not model_cfg.get("num_experts") and not model_cfg.get("moa_num_experts"):
        return instantiate(model_cfg, "model")  # nothing routed: no router, experts or balancers
    balance_cfg = config.get("balance") or {}
    return instantiate(
        model_cfg,
        "model",
        router=instantiate(config["router"], "router"),
        experts=instantiate(config["experts"], "experts"),
        balancers={name: instantiate(spec, f"balance.{name}") for name, spec in balance_cfg.items()},
    )
