"""Import a Hugging Face decoder checkpoint into :class:`DecoderLM`, dense or MoE: Llama, Mistral, Qwen2,
Qwen3, GPT-2, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 (one adapter per architecture in
moe/interop/adapters/, which documents what each maps and refuses).

    from moe.interop import load_hf
    model = load_hf("path/to/hf-model-dir")   # config.json + *.safetensors, no network

Only ``config.json`` and the safetensors files (one ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``) are read; ``transformers`` is not needed. The adapter turns
config.json into our config nodes (anything that would change the function raises ValueError instead
of silently loading a different model), the model is built from them, and every tensor rule of the
adapter fills its parameters from the checkpoint's tensors, whose shapes are checked first. A tensor
no rule reads is an error, except buffers some exports store (GPT-2's causal mask, RoPE's inv_freq),
tensors with no elements (DeepSeek-V3's ``shared_experts`` when ``n_shared_experts`` is 0) and what
the adapter declares ignorable (DeepSeek-V3's multi-token-prediction layers).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moe.interop.adapters import SUPPORTED, adapter_for
from moe.interop.adapters.rules import TensorRule
from moe.models.build import build_model
from moe.models.decoder import DecoderLM

__all__ = ["SUPPORTED", "hf_run_config", "is_hf_model_dir", "load_hf", "model_config_from_hf"]

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# buffers some older exports store; derived from the config here, so they are skipped
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias",  # GPT-2 causal-mask buffers in old files
                     "rotary_emb.inv_freq",)


def model_config_from_hf(config_json: Mapping[str, Any], *, max_seq_len: int | None = None) -> dict[str, Any]:
    """Our ``model`` config node for a HF ``config.json`` (as a dict). ``max_seq_len`` defaults to
    ``min(max_position_embeddings, 4096)``. Raises ValueError for an unsupported ``model_type`` or feature."""
    return adapter_for(config_json.get("model_type")).run_config(config_json, max_seq_len=max_seq_len)["model"]


def hf_run_config(hf_dir: str | Path, *, max_seq_len: int | None = None) -> dict[str, Any]:
    """The moe-lab config nodes (``model``, and for an MoE ``router``, ``experts``, ``balance``) of the
    model in a HF directory, read from its ``config.json`` alone. ``init=checkpoint`` adopts them so a
    fine-tuning run builds the imported architecture."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"{hf_dir} is not a directory")
    config_json = _read_config(hf_dir)
    return adapter_for(config_json.get("model_type")).run_config(config_json, max_seq_len=max_seq_len)


def load_hf(hf_dir: str | Path, *, max_seq_len: int | None = None, device: str = "cpu") -> DecoderLM:
    """Build a :class:`DecoderLM` from a HF model directory (any of ``SUPPORTED``, dense or MoE) and
    copy its weights in (cast to the model's float32). Returns the model in eval mode on ``device``.

    Raises FileNotFoundError for a missing config.json or weights file, ValueError for an
    unsupported model_type / feature, a missing or unexpected tensor, or a shape mismatch."""
    hf_dir = Path(hf_dir)
    config_json = _read_config(hf_dir)
    adapter = adapter_for(config_json.get("model_type"))
    model = build_model(hf_run_config(hf_dir, max_seq_len=max_seq_len))
    tensors = _TensorFiles(_weight_files(hf_dir))
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}  # e.g. router.selection_bias_E
    with torch.no_grad():
        for rule in adapter.tensor_rules(model, config_json["model_type"], config_json):
            if rule.ours:  # export-only constants have nothing to fill
                for name, value in zip(rule.ours, _values(rule, state, tensors), strict=True):
                    state[name].copy_(value)
    ignored = getattr(adapter, "is_ignored", lambda name, model: False)
    unexpected = sorted(
        k for k in tensors.where if k not in tensors.used and not k.endswith(_IGNORED_SUFFIXES)
        and not (k == "lm_head.weight" and model.lm_head.weight is model.embed.weight)
        # an empty tensor holds no weights: transformers writes DeepSeek-V3's shared_experts with
        # n_shared_experts=0 (and Qwen2-MoE's shared_expert of width 0) as [0, D] / [D, 0] tensors
        and not _is_empty(tensors.where[k], k) and not ignored(k, model)
    )
    if unexpected:
        raise ValueError(f"{hf_dir} has tensors the moe.models.build_decoder model cannot hold: {unexpected[:5]}")
    return model.to(device).eval()


def _values(rule: TensorRule, state: Mapping[str, torch.Tensor], tensors: _TensorFiles) -> tuple[torch.Tensor, ...]:
    """Our tensors of ``rule`` from the checkpoint, after checking every HF tensor's shape against the
    shape the rule's export would give (from config.json, through the built model)."""
    hf_values = [tensors(name) for name in rule.hf]
    if rule.exact_hf_shapes:
        expected = rule.to_hf(*(torch.empty(state[name].shape, device="meta") for name in rule.ours))
        for name, value, want in zip(rule.hf, hf_values, expected, strict=True):
            if value.shape != want.shape:
                raise ValueError(f"tensor {name} has shape {tuple(value.shape)}, expected {tuple(want.shape)} "
                                 f"(from config.json)")
    values = rule.to_ours(*hf_values)
    for name, value in zip(rule.ours, values, strict=True):
        if value.shape != state[name].shape:
            raise ValueError(f"tensor {rule.hf[0]} gives shape {tuple(value.shape)} for {name}, expected "
                             f"{tuple(state[name].shape)} (from config.json)")
    return values


def _read_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json at {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def _weight_files(hf_dir: Path) -> list[Path]:
    """``model.safetensors``, or the shards named by ``model.safetensors.index.json``."""
    single = hf_dir / WEIGHTS_NAME
    if single.is_file():
        return [single]
    index = hf_dir / WEIGHTS_INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(f"no weights in {hf_dir}: neither {single} nor {index} exists")
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{index} has no readable weight_map: {err}") from err
    shards = [hf_dir / name for name in sorted(set(weight_map.values()))]
    for shard in shards:
        if not shard.is_file():
            raise FileNotFoundError(f"shard {shard} listed in {index} does not exist")
    return shards


class _TensorFiles:
    """The tensors of a HF checkpoint's safetensors files by name; remembers which were read."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.where: dict[str, Any] = {}
        for f in files:
            handle = safe_open(str(f), framework="pt")
            for key in handle.keys():
                self.where[key] = handle
        self.used: set[str] = set()

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self.where:
            raise ValueError(f"tensor {name} is missing from {', '.join(str(f) for f in self.files)}")
        self.used.add(name)
        return self.where[name].get_tensor(name)


def _is_empty(handle: Any, name: str) -> bool:
    return 0 in handle.get_slice(name).get_shape()


def is_hf_model_dir(path: str | Path) -> bool:
    """A directory with a HF ``config.json`` and no moe-lab ``meta.json``."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "meta.json").exists()
