"""Read a run's ``config.yaml`` (and its state-dict names) written by an earlier moe-lab with today's code.

A checkpoint records the resolved config it was trained with. When a constructor loses a default
(so that the config files hold the only one) or a class becomes a config of another, configs written
before the change would no longer build. Each entry below rewrites such a node into what builds the
same module today; ``moe.checkpoint.read_config`` applies them to every config it reads, so
``load_model``, resume and ``init.path`` all see upgraded configs.
"""

from __future__ import annotations

from typing import Any

# Arguments that lost their code default, with the value the code used to fill in.
FORMER_DEFAULTS: dict[str, dict[str, Any]] = {
    "moe.routers.TopKRouter": {"order": "softmax_then_topk"},
    "moe.balance.AuxFreeBalancer": {"update_rate": 1e-3},
    "moe.data.build_chat": {"tokenizer": "byte"},
}

# DeepSeek-V3's sequence-wise loss was its own class; it is the Switch loss at sequence scope.
# The decoder became a plain module of parts; its config keys are now the builder's arguments.
RENAMED_TARGETS: dict[str, tuple[str, dict[str, Any]]] = {
    "moe.balance.SeqAuxLoss": ("moe.balance.SwitchAuxLoss", {"scope": "sequence", "coeff": 1e-4}),
    "moe.models.DecoderLM": ("moe.models.build_decoder", {}),
    "moe.models.decoder.DecoderLM": ("moe.models.build_decoder", {}),
}


def upgrade_config(node: Any, *, former_defaults: bool = True) -> Any:
    """A copy of ``node`` with every ``_target_`` node rewritten to build today what it built then.
    ``former_defaults=False`` only renames targets: a config written today must still state every
    value that has no default (model building renames, checkpoints also get the former defaults)."""
    if isinstance(node, list):
        return [upgrade_config(item, former_defaults=former_defaults) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: upgrade_config(value, former_defaults=former_defaults) for key, value in node.items()}
    target = node.get("_target_")
    if target in RENAMED_TARGETS:
        target, former = RENAMED_TARGETS[target]
        node = {**former, **node, "_target_": target}
    if former_defaults and target in FORMER_DEFAULTS:
        node = {**FORMER_DEFAULTS[target], **node}
    return node


def rename_state_keys(state_dict: dict[str, Any], prefix: str, renames: dict[str, str]) -> None:
    """In place: keys of ``state_dict`` under ``prefix`` that start with an old name of ``renames``
    get the new name instead (a module's ``_load_from_state_dict`` calls this for checkpoints written
    before one of its parts moved or was renamed). A key already present under its new name wins."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in renames.items():
            if key.startswith(prefix + old):
                renamed = prefix + new + key[len(prefix + old):]
                if renamed not in state_dict:
                    state_dict[renamed] = state_dict.pop(key)
                break
