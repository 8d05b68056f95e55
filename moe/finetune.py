"""Fine-tuning a checkpoint (moe-lab or Hugging Face): what ``run()`` does before building anything.

- ``init=checkpoint`` adopts the checkpoint's config nodes (``init.config_from_checkpoint``, default
  model, router, experts, balance), so a HF model is fine-tuned without retyping its architecture and
  the run's config.yaml rebuilds the fine-tuned model.
- ``init=upcycle`` (every method, carve included) adopts the dense source's backbone and sizes the
  experts from it (moe/upcycle/source_backbone.py).
- ``data.tokenizer=auto`` becomes init.path's tokenizer.json (or the tokenizer of the moe-lab run it
  continues), else the byte tokenizer.
- ``trainer.freeze`` turns off gradients of the router, the routed experts, or everything but the
  routed experts (Aurora's expert-only tuning); frozen parameters are left out of the optimizer.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from moe.checkpoint import read_config, resolve_checkpoint
from moe.spec import locate
from moe.upcycle import FromCheckpoint, Upcycle
from moe.upcycle.source_backbone import adopt_dense_backbone, source_tokenizer, step0_caveat


def _source_config(path: str) -> dict[str, Any]:
    """The run-config nodes of a checkpoint: a HF directory's (from config.json), else a moe-lab
    checkpoint's or run directory's config.yaml."""
    from moe.interop import hf_run_config  # lazy: moe.interop imports moe.models
    from moe.interop.hf_import import is_hf_model_dir

    if is_hf_model_dir(path):
        return hf_run_config(path)
    return read_config(resolve_checkpoint(path) / "config.yaml")


def adopt_checkpoint_config(config: dict[str, Any]) -> dict[str, Any]:
    """For ``init=checkpoint``: the config with the nodes of ``init.config_from_checkpoint`` replaced
    by the checkpoint's (a node the checkpoint lacks, e.g. a dense HF model's router, stays as
    configured). Other inits: the config unchanged. Never mutates ``config``."""
    init = config.get("init") or {}
    if "_target_" not in init or locate(init["_target_"]) is not FromCheckpoint:
        return config
    nodes = FromCheckpoint.check_nodes(init.get("config_from_checkpoint", FromCheckpoint.ADOPTABLE_NODES))
    if not nodes:
        return config
    source = _source_config(init["path"])
    return {**config, **{node: source[node] for node in nodes if node in source}}


def adopt_upcycle_source(config: dict[str, Any], explicit_model_keys: Iterable[str] = ()) -> dict[str, Any]:
    """For ``init=upcycle``: the config with the dense source's backbone (moe/upcycle/source_backbone.py);
    warns in one line when the router settings will not start at the dense model's function. Other inits,
    a missing path or an MoE source (``Upcycle`` reports both in its own words): the config unchanged."""
    init = config.get("init") or {}
    if "_target_" not in init or locate(init["_target_"]) is not Upcycle or not Path(str(init.get("path"))).exists():
        return config
    source = _source_config(init["path"])["model"]
    if source.get("num_experts"):
        return config
    config = adopt_dense_backbone(config, source, path=init["path"], explicit=explicit_model_keys)
    if (caveat := step0_caveat(config)) is not None:
        warnings.warn(f"init.method={init.get('method')}: step 0 will not equal the dense model: {caveat}",
                      stacklevel=2)
    return config


def resolve_tokenizer(config: dict[str, Any]) -> dict[str, Any]:
    """Replace ``data.tokenizer=auto`` (the data builder sees only its own node) by what it means."""
    data = config.get("data") or {}
    if data.get("tokenizer") != "auto":
        return config
    return {**config, "data": {**data, "tokenizer": source_tokenizer((config.get("init") or {}).get("path"))}}


_FROZEN_BY = {  # trainer.freeze option -> does it freeze the parameter of this name?
    "none": lambda name: False,
    "router": lambda name: ".router." in name,
    "experts": lambda name: ".experts." in name,  # routed experts only: shared experts are ".shared_expert."
    "all_but_experts": lambda name: ".experts." not in name,
}


def freeze_parameters(model: torch.nn.Module, freeze: tuple[str, ...]) -> tuple[int, int]:
    """Turn off gradients as ``trainer.freeze`` says; returns (trainable, total) parameter counts.
    A freeze that matches nothing, or leaves nothing to train, is a ValueError (a dense model has
    neither router nor routed experts). Buffers are not parameters: a loss-free balancer still moves
    its router bias under ``freeze=router`` (pick ``balance`` accordingly)."""
    for name, param in model.named_parameters():
        if any(_FROZEN_BY[option](name) for option in freeze):
            param.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if freeze != ("none",) and trainable == total:
        raise ValueError(f"trainer.freeze={','.join(freeze)} matches no parameter of this model (no router or routed "
                         f"experts: a dense model?)")
    if trainable == 0:
        raise ValueError(f"trainer.freeze={','.join(freeze)} leaves no trainable parameter (no routed experts: a dense "
                         f"model?)")
    return trainable, total
