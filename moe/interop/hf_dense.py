"""Import Hugging Face decoder checkpoints into :class:`DecoderLM`: dense Llama, Mistral, Qwen2, Qwen3 and
GPT-2 (moe/interop/hf_gpt2.py), and the Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and DeepSeek-V3 MoEs
(moe/interop/hf_mixtral.py, hf_qwen2_moe.py, hf_deepseek_v3.py).

    from moe.interop import load_hf_dense
    model = load_hf_dense("path/to/hf-model-dir")   # config.json + *.safetensors, no network

Only ``config.json`` and the safetensors files (one ``model.safetensors`` or the shards listed in
``model.safetensors.index.json``) are read; ``transformers`` is not needed. The dense architectures
are our backbone exactly: pre-norm RMSNorm, rotate-half RoPE with inv_freq = θ^(-2i/d), GQA
attention with SDPA scaling 1/√d, SwiGLU MLP, a final RMSNorm and an optionally tied LM head.
Qwen2 adds biases on q/k/v (``attention_bias``); Qwen3 adds a per-head RMSNorm on q and k before RoPE
(``qk_norm``, ``self_attn.q_norm`` / ``k_norm``, ε = ``rms_norm_eps``). HF's separate ``k_proj`` /
``v_proj`` are fused into our ``kv_proj`` (rows: all K heads, then all V heads), so no row permutation
is needed.

Anything that would change the function (RoPE scaling, another activation, biases elsewhere, a
head_dim other than hidden/heads — Qwen3's class default is head_dim=128, so a Qwen3 whose
hidden_size/num_attention_heads is not 128 is refused — a sliding window shorter than ``max_seq_len``)
raises ValueError instead of silently loading a different model. Tensors with no elements (e.g.
DeepSeek-V3's ``shared_experts`` when ``n_shared_experts`` is 0) hold nothing and are skipped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from moe.interop.hf_deepseek_v3 import deepseek_v3_run_config, deepseek_v3_tensor_map, is_mtp_tensor
from moe.interop.hf_gpt2 import gpt2_model_config, gpt2_tensor_map
from moe.interop.hf_mixtral import mixtral_run_config, mixtral_tensor_map
from moe.interop.hf_qwen2_moe import qwen2_moe_run_config, qwen2_moe_tensor_map
from moe.models.build import build_model
from moe.models.decoder import DecoderLM

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")

# Our Attention keeps a RoPE cos/sin table of max_seq_len × head_dim floats per layer (not shared
# between layers), so Mistral's 131072 or Qwen2's 32768 positions would cost 10s of MB per layer.
# max_position_embeddings is therefore capped at this length unless max_seq_len is given.
MAX_SEQ_LEN_CAP = 4096

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# buffers some older exports store; derived from the config here, so they are skipped
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias",  # GPT-2 causal-mask buffers in old files
                     "rotary_emb.inv_freq",)


def _rope_theta(cfg: Mapping[str, Any]) -> float:
    """θ from ``rope_parameters`` (transformers >= 5) or ``rope_theta`` / ``rope_scaling`` (4.x)."""
    params = cfg.get("rope_parameters")
    if params is not None:
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope_parameters.rope_type={rope_type!r} is not supported (only plain RoPE)")
        return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    if cfg.get("rope_scaling") is not None:
        raise ValueError(f"rope_scaling={cfg['rope_scaling']!r} is not supported (only plain RoPE)")
    return float(cfg.get("rope_theta", 10000.0))


def model_config_from_hf(config_json: Mapping[str, Any], *, max_seq_len: int | None = None) -> dict[str, Any]:
    """Our ``model`` config node for a HF ``config.json`` (as a dict). ``max_seq_len`` defaults to
    ``min(max_position_embeddings, MAX_SEQ_LEN_CAP)``. Raises ValueError for an unsupported
    ``model_type`` or feature."""
    cfg = config_json
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {', '.join(SUPPORTED)}")
    if model_type == "gpt2":
        return gpt2_model_config(cfg, seq_len_cap=MAX_SEQ_LEN_CAP, max_seq_len=max_seq_len)
    # Qwen3 is Llama-like attention plus per-head RMSNorm on q and k (our qk_norm); the MoE models sit on
    # one of these backbones, their MoE parts: hf_mixtral.py, hf_qwen2_moe.py (also Qwen3-MoE and OLMoE)
    backbone = {"qwen3": "llama", "mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "llama",
                "olmoe": "llama", "deepseek_v3": "llama"}
    source = model_type  # named in the error messages
    # the Qwen configs carry a sliding_window that only applies with use_sliding_window
    window_flag = model_type in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    qk_norm = model_type in ("qwen3", "qwen3_moe", "olmoe")
    qk_norm_scope = "full" if model_type == "olmoe" else "head"  # OLMoE normalises q and k over all heads
    if model_type == "deepseek_v3":  # MLA: head_dim is qk_rope_head_dim; hf_deepseek_v3.py reads the MLA sizes
        cfg = {key: value for key, value in cfg.items() if key != "head_dim"}
    if model_type in backbone:
        model_type = backbone[model_type]
        cfg = {**cfg, "model_type": model_type}
    attention_bias = _checked_features(cfg, source)
    d_model, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    n_kv_heads = int(cfg.get("num_key_value_heads") or n_heads)
    head_dim = cfg.get("head_dim")
    if head_dim is not None and d_model % n_heads == 0 and int(head_dim) != d_model // n_heads:
        raise ValueError(
            f"{source}: head_dim={head_dim} differs from hidden_size/num_attention_heads="
            f"{d_model // n_heads}; not supported (moe-lab's attention uses head_dim = d_model / n_heads)"
        )
    seq_len = _checked_seq_len(cfg, source, max_seq_len=max_seq_len, window_flag=window_flag)
    return {
        "_target_": "moe.models.build_decoder",
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": d_model,
        "n_layers": int(cfg["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "d_ff": int(cfg["intermediate_size"]),
        "max_seq_len": seq_len,
        "rope_theta": _rope_theta(cfg),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "qk_norm": qk_norm,
        "qk_norm_scope": qk_norm_scope,
        "attention_bias": attention_bias,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "num_experts": 0,
    }


def _checked_features(cfg: Mapping[str, Any], source: str) -> bool:
    """Refuse what would change the function; returns whether q/k/v carry biases (Qwen2)."""
    if cfg.get("clip_qkv") is not None:
        raise ValueError(f"{source}: clip_qkv={cfg['clip_qkv']} is not supported")
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{source}: hidden_act={act!r} is not supported (only silu, as SwiGLU)")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{source}: mlp_bias=true is not supported")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise ValueError(f"{source}: pretraining_tp={cfg['pretraining_tp']} is not supported")
    # Llama's attention_bias also puts a bias on o_proj, which our Attention does not have;
    # Qwen2 always has q/k/v biases and none on o_proj.
    if cfg["model_type"] == "qwen2":
        return True
    if cfg.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias=true (bias on o_proj too) is not supported")
    return False


def _checked_seq_len(cfg: Mapping[str, Any], source: str, *, max_seq_len: int | None, window_flag: bool) -> int:
    """``max_seq_len``, or min(max_position_embeddings, MAX_SEQ_LEN_CAP); refuses a shorter sliding window
    (sliding-window attention equals full causal attention while the sequence fits in the window)."""
    max_pos = int(cfg.get("max_position_embeddings", MAX_SEQ_LEN_CAP))
    seq_len = int(max_seq_len) if max_seq_len is not None else min(max_pos, MAX_SEQ_LEN_CAP)
    window = cfg.get("sliding_window")
    uses_window = window is not None and (not window_flag or cfg.get("use_sliding_window", False))
    if uses_window and int(window) < seq_len:
        raise ValueError(
            f"{source}: sliding_window={window} is shorter than max_seq_len={seq_len}; sliding-window "
            f"attention is not supported, pass max_seq_len <= {window}"
        )
    return seq_len


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


def _hf_names(model_cfg: Mapping[str, Any]) -> dict[str, list[str]]:
    """Our parameter name → the HF tensor names that fill it (two for the fused kv_proj)."""
    names: dict[str, list[str]] = {"embed.weight": ["model.embed_tokens.weight"],
                                   "final_norm.weight": ["model.norm.weight"]}
    if not model_cfg["tie_embeddings"]:
        names["lm_head.weight"] = ["lm_head.weight"]
    for i in range(model_cfg["n_layers"]):
        hf, ours = f"model.layers.{i}", f"blocks.{i}"
        names[f"{ours}.mixer_norm.weight"] = [f"{hf}.input_layernorm.weight"]
        names[f"{ours}.ffn_norm.weight"] = [f"{hf}.post_attention_layernorm.weight"]
        kinds = ("weight", "bias") if model_cfg["attention_bias"] else ("weight",)
        for kind in kinds if model_cfg.get("attention", "gqa") == "gqa" else ():  # MLA: its model's own map
            names[f"{ours}.mixer.q_proj.{kind}"] = [f"{hf}.self_attn.q_proj.{kind}"]
            names[f"{ours}.mixer.kv_proj.{kind}"] = [f"{hf}.self_attn.k_proj.{kind}",
                                                         f"{hf}.self_attn.v_proj.{kind}"]
        if model_cfg.get("attention", "gqa") == "gqa":
            names[f"{ours}.mixer.o_proj.weight"] = [f"{hf}.self_attn.o_proj.weight"]
        if model_cfg["qk_norm"]:
            names[f"{ours}.mixer.q_norm.weight"] = [f"{hf}.self_attn.q_norm.weight"]
            names[f"{ours}.mixer.k_norm.weight"] = [f"{hf}.self_attn.k_norm.weight"]
        for proj in ("gate", "up", "down") if not model_cfg.get("num_experts") else ():  # MoE models: their own map
            names[f"{ours}.ffn.{proj}.weight"] = [f"{hf}.mlp.{proj}_proj.weight"]
    return names


def hf_run_config(hf_dir: str | Path, *, max_seq_len: int | None = None) -> dict[str, Any]:
    """The moe-lab config nodes (``model``, and for an MoE ``router``, ``experts``, ``balance``) of the
    model in a HF directory, read from its ``config.json`` alone. ``init=checkpoint`` adopts them so a
    fine-tuning run builds the imported architecture."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"{hf_dir} is not a directory")
    config_json = _read_config(hf_dir)
    model_cfg = model_config_from_hf(config_json, max_seq_len=max_seq_len)
    moe_config = {"mixtral": mixtral_run_config, "qwen2_moe": qwen2_moe_run_config,
                  "qwen3_moe": qwen2_moe_run_config, "olmoe": qwen2_moe_run_config,
                  "deepseek_v3": deepseek_v3_run_config}.get(config_json["model_type"])
    return moe_config(config_json, model_cfg) if moe_config else {"model": model_cfg}


def load_hf_dense(hf_dir: str | Path, *, max_seq_len: int | None = None, device: str = "cpu") -> DecoderLM:
    """Build a :class:`DecoderLM` from a HF model directory (any of ``SUPPORTED``, dense or MoE) and
    copy its weights in (cast to the model's float32). Returns the model in eval mode on ``device``.

    Raises FileNotFoundError for a missing config.json or weights file, ValueError for an
    unsupported model_type / feature, a missing or unexpected tensor, or a shape mismatch."""
    hf_dir = Path(hf_dir)
    config_json = _read_config(hf_dir)
    run_config = hf_run_config(hf_dir, max_seq_len=max_seq_len)
    files = _weight_files(hf_dir)
    model_cfg = run_config["model"]
    model = build_model(run_config)
    params = dict(model.named_parameters())  # tied lm_head is shared with embed and listed once
    params.update(model.named_buffers())  # e.g. DeepSeek-V3's router bias → router.selection_bias_E
    tensors = _TensorFiles(files)
    with torch.no_grad():
        for ours, hf_names in _tensor_map(config_json, model_cfg).items():
            params[ours].copy_(_hf_value(ours, hf_names, params[ours].shape, tensors))
    unexpected = sorted(
        k for k in tensors.where if k not in tensors.used and not k.endswith(_IGNORED_SUFFIXES)
        and not (k == "lm_head.weight" and model_cfg["tie_embeddings"])
        # an empty tensor holds no weights: transformers writes DeepSeek-V3's shared_experts with
        # n_shared_experts=0 (and Qwen2-MoE's shared_expert of width 0) as [0, D] / [D, 0] tensors
        and not _is_empty(tensors.where[k], k)
        # DeepSeek-V3's multi-token-prediction layers after the last block (transformers skips them too)
        and not (config_json["model_type"] == "deepseek_v3" and is_mtp_tensor(k, model_cfg["n_layers"]))
    )
    if unexpected:
        raise ValueError(f"{hf_dir} has tensors the {model_cfg['_target_']} cannot hold: {unexpected[:5]}")
    return model.to(device).eval()


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


def _tensor_map(config_json: Mapping[str, Any], model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Our parameter/buffer name → the HF tensor names that fill it (or (names, combine))."""
    mapping = gpt2_tensor_map(model_cfg) if config_json["model_type"] == "gpt2" else _hf_names(model_cfg)
    deepseek_v3_map = functools.partial(deepseek_v3_tensor_map,
                                        rope_interleave=bool(config_json.get("rope_interleave", True)))
    moe_map = {"mixtral": mixtral_tensor_map, "qwen2_moe": qwen2_moe_tensor_map,
               "qwen3_moe": qwen2_moe_tensor_map, "olmoe": qwen2_moe_tensor_map,
               "deepseek_v3": deepseek_v3_map}.get(config_json["model_type"])
    if moe_map:
        mapping.update(moe_map(model_cfg))
    return mapping


def _hf_value(ours: str, hf_names: Any, shape: torch.Size, tensor: _TensorFiles) -> torch.Tensor:
    """The value of our tensor ``ours`` from its HF tensors, shape-checked against ``shape``."""
    if isinstance(hf_names, tuple):  # (names, combine): GPT-2's transposed / fused tensors
        hf_names, combine = hf_names
        value = combine(*[tensor(name) for name in hf_names])
        if value.shape != shape:
            raise ValueError(f"tensor {hf_names[0]} gives shape {tuple(value.shape)} for {ours}, "
                             f"expected {tuple(shape)} (from config.json)")
        return value
    parts = [tensor(name) for name in hf_names]
    if len(parts) == 2:  # k_proj, v_proj → kv_proj: the output is viewed as (2, J, d)
        half = (shape[0] // 2, *shape[1:])
        for name, part in zip(hf_names, parts):
            if tuple(part.shape) != half:
                raise ValueError(f"tensor {name} has shape {tuple(part.shape)}, expected {half} "
                                 f"(from config.json)")
        return torch.cat(parts, dim=0)
    if parts[0].shape != shape:
        raise ValueError(f"tensor {hf_names[0]} has shape {tuple(parts[0].shape)}, expected "
                         f"{tuple(shape)} (from config.json)")
    return parts[0]


def _is_empty(handle: Any, name: str) -> bool:
    return 0 in handle.get_slice(name).get_shape()


def is_hf_model_dir(path: str | Path) -> bool:
    """A directory with a HF ``config.json`` and no moe-lab ``meta.json``."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "meta.json").exists()
