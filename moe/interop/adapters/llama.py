"""Llama, Mistral, Qwen2 and Qwen3 (HF ``model_type`` llama, mistral, qwen2, qwen3): the dense backbone,
in both directions; the MoE adapters (mixtral.py, qwen2_moe.py, deepseek_v3.py) build on it.

These architectures are our backbone exactly: pre-norm RMSNorm, rotate-half RoPE with
inv_freq = θ^(-2i/d), GQA attention with SDPA scaling 1/√d, SwiGLU MLP, a final RMSNorm and an
optionally tied LM head. Qwen2 adds biases on q/k/v (``attention_bias``); Qwen3 adds a per-head RMSNorm
on q and k before RoPE (``qk_norm``, ``self_attn.q_norm`` / ``k_norm``, ε = ``rms_norm_eps``). HF's
separate ``k_proj`` / ``v_proj`` are our fused ``kv_proj`` (rows: all K heads, then all V heads).

Import: anything that would change the function (RoPE scaling, another activation, biases elsewhere, a
head_dim other than hidden/heads — Qwen3's class default is head_dim=128, so a Qwen3 whose
hidden_size/num_attention_heads is not 128 is refused — a sliding window shorter than ``max_seq_len``)
raises ValueError instead of silently loading a different model. ``max_seq_len`` defaults to
min(max_position_embeddings, MAX_SEQ_LEN_CAP).

Export (the first that fits, in this order): ``llama`` (no biases, no qk_norm), ``qwen2`` (q/k/v
biases; forced on a bias-free model: zero biases), ``qwen3`` (qk_norm per head). Every field the
forward depends on is written explicitly, so class defaults (Qwen3's head_dim=128, a sliding window of
4096) never apply. Mistral is imported only: it exports as llama.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from moe.interop.adapters.rules import TensorRule, concatenated, constant, same
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer
from moe.models.attention import Attention

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
EXPORT_CLASSES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# Our Attention keeps a RoPE cos/sin table of max_seq_len × head_dim floats per layer (not shared
# between layers), so Mistral's 131072 or Qwen2's 32768 positions would cost 10s of MB per layer.
# max_position_embeddings is therefore capped at this length unless max_seq_len is given.
MAX_SEQ_LEN_CAP = 4096


@dataclass(frozen=True)
class Flavour:
    """How one HF backbone differs from Llama's."""

    qkv_bias: bool = False         # Qwen2: q/k/v always carry a bias (and o_proj none)
    qk_norm: str | None = None     # head (Qwen3) | full (OLMoE) | None
    window_flag: bool = False      # the Qwen configs' sliding_window applies only with use_sliding_window


FLAVOURS = {"llama": Flavour(), "mistral": Flavour(), "qwen2": Flavour(qkv_bias=True, window_flag=True),
            "qwen3": Flavour(qk_norm="head", window_flag=True)}


# -- import: config.json → our model node

def rope_theta(cfg: Mapping[str, Any]) -> float:
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


def _check_features(cfg: Mapping[str, Any], source: str, flavour: Flavour) -> None:
    """Refuse what would change the function."""
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
    if not flavour.qkv_bias and cfg.get("attention_bias"):
        raise ValueError(f"{source}: attention_bias=true (bias on o_proj too) is not supported")


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


def backbone_model_config(cfg: Mapping[str, Any], flavour: Flavour, *, max_seq_len: int | None,
                          check_head_dim: bool = True) -> dict[str, Any]:
    """Our dense ``model`` node for a Llama-like config.json (the MoE adapters add their FFN keys)."""
    source = cfg.get("model_type")  # named in the error messages
    _check_features(cfg, source, flavour)
    d_model, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim")
    if check_head_dim and head_dim is not None and d_model % n_heads == 0 and int(head_dim) != d_model // n_heads:
        raise ValueError(
            f"{source}: head_dim={head_dim} differs from hidden_size/num_attention_heads="
            f"{d_model // n_heads}; not supported (moe-lab's attention uses head_dim = d_model / n_heads)"
        )
    return {
        "_target_": "moe.models.build_decoder",
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": d_model,
        "n_layers": int(cfg["num_hidden_layers"]),
        "n_heads": n_heads,
        "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads),
        "d_ff": int(cfg["intermediate_size"]),
        "max_seq_len": _checked_seq_len(cfg, source, max_seq_len=max_seq_len, window_flag=flavour.window_flag),
        "rope_theta": rope_theta(cfg),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "qk_norm": flavour.qk_norm is not None,
        "qk_norm_scope": flavour.qk_norm or "head",
        "attention_bias": flavour.qkv_bias,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "num_experts": 0,
    }


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    return {"model": backbone_model_config(cfg, FLAVOURS[cfg["model_type"]], max_seq_len=max_seq_len)}


# -- both directions: the tensor rules

def swiglu_rules(ours: str, hf: str) -> list[TensorRule]:
    """Our SwiGLU ``{ours}.{gate,up,down}.weight`` ↔ HF's ``{hf}.{gate,up,down}_proj.weight``."""
    return [same(f"{ours}.{proj}.weight", f"{hf}.{proj}_proj.weight") for proj in ("gate", "up", "down")]


def attention_rules(attn: Attention, ours: str, hf: str, *, zero_qkv_bias: bool) -> list[TensorRule]:
    rules = [same(f"{ours}.q_proj.weight", f"{hf}.q_proj.weight"),
             concatenated(f"{ours}.kv_proj.weight", (f"{hf}.k_proj.weight", f"{hf}.v_proj.weight")),
             same(f"{ours}.o_proj.weight", f"{hf}.o_proj.weight")]
    if attn.q_proj.bias is not None:
        rules += [same(f"{ours}.q_proj.bias", f"{hf}.q_proj.bias"),
                  concatenated(f"{ours}.kv_proj.bias", (f"{hf}.k_proj.bias", f"{hf}.v_proj.bias"))]
    elif zero_qkv_bias:  # Qwen2's q/k/v always carry a bias: a bias-free model exports zeros
        kv_rows = attn.kv_proj.out_features // 2
        rules += [constant(f"{hf}.q_proj.bias", (attn.q_proj.out_features,)),
                  constant(f"{hf}.k_proj.bias", (kv_rows,)), constant(f"{hf}.v_proj.bias", (kv_rows,))]
    if attn.q_norm is not None:
        rules += [same(f"{ours}.q_norm.weight", f"{hf}.q_norm.weight"),
                  same(f"{ours}.k_norm.weight", f"{hf}.k_norm.weight")]
    return rules


def backbone_rules(model: nn.Module, model_type: str) -> list[TensorRule]:
    """Embeddings, norms, GQA attention and the dense blocks' SwiGLU; MoE blocks' FFNs and MLA attention
    are left to their adapters."""
    rules = [same("embed.weight", "model.embed_tokens.weight"), same("final_norm.weight", "model.norm.weight")]
    if model.lm_head.weight is not model.embed.weight:
        rules.append(same("lm_head.weight", "lm_head.weight"))
    for i, block in enumerate(model.blocks):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        rules += [same(f"{ours}.mixer_norm.weight", f"{hf}.input_layernorm.weight"),
                  same(f"{ours}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight")]
        if isinstance(block.mixer, Attention):
            rules += attention_rules(block.mixer, f"{ours}.mixer", f"{hf}.self_attn",
                                      zero_qkv_bias=model_type in ("qwen2", "qwen2_moe"))
        if not isinstance(block.ffn, MoELayer):
            rules += swiglu_rules(f"{ours}.ffn", f"{hf}.mlp")
    return rules


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    return backbone_rules(model, model_type)


# -- export: which arch holds a model, and its config.json

def backbone_problems(arch: str, f: ModelFacts) -> list[str]:
    """Why the Llama-like backbone of ``arch`` cannot hold this model's attention, norms and MLP."""
    want_qk = {"qwen3": "head", "qwen3_moe": "head", "olmoe": "full"}.get(arch)
    problems = []
    if f.attention == "mla":
        problems.append("model.attention=mla (multi-head latent attention: only deepseek_v3 has it)")
    if f.hybrid:
        problems.append("Mamba blocks (only jamba has them)")
    if f.router == "sigmoid":
        problems.append(f"router SigmoidRouter ({arch} routes by softmax top-k; sigmoid routing is deepseek_v3's)")
    for name, value, want in (("norm", f.norm, "rmsnorm"), ("position", f.position, "rope"), ("mlp", f.mlp, "swiglu")):
        if value != want:
            problems.append(f"model.{name}={value!r} ({arch} needs {want!r}; only gpt2 has layernorm/learned/gelu, "
                            f"and needs all three)")
    if f.qk_norm != want_qk:
        problems.append(f"qk_norm={'off' if f.qk_norm is None else 'on, qk_norm_scope=' + f.qk_norm} "
                        f"({arch} has {'no qk_norm' if want_qk is None else 'qk_norm_scope=' + want_qk})")
    if f.out_bias:
        problems.append(f"attention_out_bias (a bias on o_proj; {arch} has none)")
    if f.qkv_bias and arch not in ("qwen2", "qwen2_moe"):
        problems.append(f"attention_bias (q/k/v biases; only qwen2 / qwen2_moe have them, {arch} does not)")
    return problems


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    problems = backbone_problems(arch, f)
    if f.moe_layers:
        problems.append(f"{arch} is dense but blocks {f.moe_layers} are MoE")
    return problems


def backbone_hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    """config.json of the Llama-like backbone (the MoE adapters add their keys)."""
    cfg = {"hidden_size": f.d_model, "intermediate_size": f.d_ff or f.expert_d_ff,
           "num_hidden_layers": f.n_layers, "num_attention_heads": f.n_heads, "num_key_value_heads": f.n_kv_heads,
           "head_dim": f.head_dim, "hidden_act": "silu", "max_position_embeddings": f.max_seq_len,
           "rms_norm_eps": f.norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)},
           "attention_dropout": 0.0}
    if arch in ("llama", "qwen3", "qwen3_moe", "olmoe"):
        cfg.update(attention_bias=False)  # in these four it would put a bias on o_proj too
    if arch in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=f.n_layers)
    return cfg


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    cfg = backbone_hf_config(arch, f, rope_theta)
    if arch == "llama":
        cfg.update(mlp_bias=False, pretraining_tp=1)
    return cfg
