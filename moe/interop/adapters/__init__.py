"""One adapter per Hugging Face architecture, holding both directions (import and export), so adding an
architecture is adding one file here and one line below.

An adapter is a module with:

- ``MODEL_TYPES``: the HF ``model_type`` values it imports;
- ``EXPORT_CLASSES``: ``model_type`` → HF class name, for those it also exports;
- ``run_config(config_json, *, max_seq_len)``: our config nodes (``model``; an MoE adds ``router``,
  ``experts``, ``balance``) for a config.json, ValueError for what would change the function;
- ``tensor_rules(model, model_type, config_json)``: the :class:`~moe.interop.adapters.rules.TensorRule`
  list pairing the model's tensors with the checkpoint's, read off the built model, used by the import
  (``to_ours``) and the export (``to_hf``) alike;
- ``export_problems(arch, facts)``: why ``arch`` cannot hold a model exactly (empty: it can);
- ``hf_config(arch, facts, rope_theta)``: the architecture's own config.json keys;
- optionally ``is_ignored(name, model)``: checkpoint tensors the import may leave unread.

The generic halves that drive them: moe/interop/hf_import.py and moe/interop/hf_export.py.
"""

from __future__ import annotations

from types import ModuleType

from moe.interop.adapters import deepseek_v3, gpt2, granitemoehybrid, jamba, jetmoe, llama, mixtral, qwen2_moe

ADAPTERS: tuple[ModuleType, ...] = (llama, gpt2, mixtral, qwen2_moe, deepseek_v3, jamba, jetmoe,
                                         granitemoehybrid)
BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.MODEL_TYPES}
SUPPORTED = tuple(BY_MODEL_TYPE)
ARCHITECTURES = {arch: cls for adapter in ADAPTERS for arch, cls in adapter.EXPORT_CLASSES.items()}


def adapter_for(model_type: str | None) -> ModuleType:
    """The adapter of a HF ``model_type``; ValueError naming the supported ones."""
    if model_type not in BY_MODEL_TYPE:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    return BY_MODEL_TYPE[model_type]
