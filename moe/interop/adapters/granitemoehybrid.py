"""Granite-4 hybrids (HF ``model_type: granitemoehybrid``), in both directions: Mamba-2 and attention blocks
named one by one (``layer_types``), every block an MoE of SwiGLU experts plus an always-on shared MLP (or
the shared MLP alone when ``num_local_experts`` is 0).

config.json → our nodes:
- ``layer_types`` ("mamba" / "linear_attention" → ``mamba2``, "attention" → ``gqa``) is ``mixer_layers``;
  the Mamba-2 sizes are ``mamba_*`` (``mamba_d_head`` → ``mamba_head_dim``); attention has RoPE only with
  ``position_embedding_type: rope`` (Granite-4 uses none: ``position: none``);
- the router is softmax over the top-k logits (our ``TopKRouter``, ``order: topk_then_softmax``), the
  experts ``intermediate_size`` wide, the shared MLP one ungated shared expert of
  ``shared_intermediate_size``; ``router_aux_loss_coef`` becomes ``switch_aux`` as Mixtral's does;
- Granite's four constants: ``embedding_multiplier`` and ``logits_scaling`` are model keys of the same
  names (they survive tied embeddings); ``residual_multiplier`` r, which scales every mixer's and FFN's
  output before the residual add, is folded into the output projections (o_proj, the Mamba out_proj, the
  experts' and the shared MLP's down projections: W → r·W); ``attention_multiplier`` s, Granite's softmax
  scale in place of 1/√d, is folded into q_proj (W_q → s·√d·W_q; RoPE is linear, so the order does not
  matter). The export writes r = 1 and s = 1/√d, so the round trip is exact.

On disk: ``mamba.{in_proj,conv1d,out_proj}.*``, ``mamba.{dt_bias,A_log,D}`` and ``mamba.norm.weight``
(our ``norm_weight``); ``self_attn.{q,k,v,o}_proj``; ``block_sparse_moe.router.layer.weight``,
``block_sparse_moe.input_linear.weight`` [E, 2F, D] (gate rows, then up rows),
``block_sparse_moe.output_linear.weight`` [E, D, F]; ``shared_mlp.input_linear.weight`` [2F, D] and
``shared_mlp.output_linear.weight``; norms ``input_layernorm``, ``post_attention_layernorm``, ``model.norm``.

Export: Mamba-2 + GQA blocks (at least one of each), every block MoE (or every block dense), a
``TopKRouter`` in ``topk_then_softmax`` order, at most one ungated shared expert (none: a zero shared MLP,
which adds exactly nothing), no qk_norm or attention biases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from moe.interop.adapters.llama import MAX_SEQ_LEN_CAP, rope_theta
from moe.interop.adapters.mixtral import GROUPED_EXPERTS, switch_aux_balance
from moe.interop.adapters.rules import TensorRule, concatenated, constant, fused_gate_up, same, split_rows
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer
from moe.models.attention import Attention

MODEL_TYPES = ("granitemoehybrid",)
EXPORT_CLASSES = {"granitemoehybrid": "GraniteMoeHybridForCausalLM"}
MAMBA_TYPES, ATTENTION_TYPES = ("mamba", "linear_attention"), ("attention", "full_attention")
MAMBA2_TENSORS = ("in_proj.weight", "conv1d.weight", "dt_bias", "A_log", "D")


def _json_float(value: Any) -> float:
    """A float of config.json; transformers writes infinities as {"__float__": "Infinity"}."""
    return float(value["__float__"]) if isinstance(value, dict) else float(value)


def _mixers(cfg: Mapping[str, Any]) -> list[str]:
    types = list(cfg.get("layer_types") or ["mamba"] * int(cfg["num_hidden_layers"]))
    unknown = sorted({t for t in types if t not in MAMBA_TYPES + ATTENTION_TYPES})
    if unknown:
        raise ValueError(f"granitemoehybrid: layer_types {unknown} are not supported "
                         f"(only {MAMBA_TYPES + ATTENTION_TYPES})")
    return ["mamba2" if t in MAMBA_TYPES else "gqa" for t in types]


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    source = "granitemoehybrid"
    for name, fine in (("hidden_act", "silu"), ("attention_bias", False)):
        if cfg.get(name, fine) != fine:
            raise ValueError(f"{source}: {name}={cfg[name]!r} is not supported (only {fine!r})")
    limit = [_json_float(v) for v in cfg.get("time_step_limit") or (0.0, math.inf)]
    if tuple(limit) != (0.0, math.inf):
        raise ValueError(f"{source}: time_step_limit={list(limit)} is not supported (only no clamp: [0.0, inf])")
    d_model, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim")
    if head_dim is not None and int(head_dim) != d_model // n_heads:
        raise ValueError(f"{source}: head_dim={head_dim} differs from hidden_size/num_attention_heads")
    expand = int(cfg.get("mamba_expand", 2))
    mamba_head_dim = cfg.get("mamba_d_head", "auto")
    if mamba_head_dim == "auto":
        mamba_head_dim = expand * d_model // int(cfg.get("mamba_n_heads", 128))
    E, k = int(cfg.get("num_local_experts", 0)), int(cfg.get("num_experts_per_tok", 2))
    shared = int(cfg["shared_intermediate_size"])
    max_pos = int(cfg.get("max_position_embeddings", MAX_SEQ_LEN_CAP))
    model = {
        "_target_": "moe.models.build_decoder", "vocab_size": int(cfg["vocab_size"]), "d_model": d_model,
        "n_layers": int(cfg["num_hidden_layers"]), "n_heads": n_heads,
        "n_kv_heads": int(cfg.get("num_key_value_heads") or n_heads), "d_ff": shared,
        "max_seq_len": int(max_seq_len) if max_seq_len is not None else min(max_pos, MAX_SEQ_LEN_CAP),
        "rope_theta": rope_theta(cfg) if cfg.get("position_embedding_type") == "rope" else 10000.0,
        "position": "rope" if cfg.get("position_embedding_type") == "rope" else "none",
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-6)), "tie_embeddings": bool(cfg.get("tie_word_embeddings")),
        "embedding_multiplier": float(cfg.get("embedding_multiplier", 1.0)),
        "logits_scaling": float(cfg.get("logits_scaling", 1.0)),
        "mixer_layers": _mixers(cfg), "mamba_d_state": int(cfg.get("mamba_d_state", 256)),
        "mamba_d_conv": int(cfg.get("mamba_d_conv", 4)), "mamba_expand": expand, "mamba_head_dim": int(mamba_head_dim),
        "mamba_n_groups": int(cfg.get("mamba_n_groups", 1)), "mamba_conv_bias": bool(cfg.get("mamba_conv_bias", True)),
        "mamba_proj_bias": bool(cfg.get("mamba_proj_bias", False)),
        "num_experts": E, "expert_d_ff": int(cfg["intermediate_size"]), "num_shared_experts": 1 if E else 0,
        "shared_expert_d_ff": shared, "moe_every": 1, "moe_first_dense": 0, "moe_layers": None,
    }
    if not E:
        return {"model": model}
    return {"model": model,
            "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k,
                       "order": "topk_then_softmax"},
            "experts": GROUPED_EXPERTS, "balance": switch_aux_balance(cfg, k)}


def _scaled(ours: str, hf: str, factor: float, *, transpose: bool = False) -> TensorRule:
    """HF's tensor = ours / factor (optionally [E, in, out] ↔ [E, out, in]): a folded Granite constant. With
    factor 1 (our export) the numbers pass unchanged, so the round trip is exact."""
    def flip(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2) if transpose else t

    if factor == 1.0:
        return TensorRule((ours,), (hf,), to_ours=lambda t: (flip(t),), to_hf=lambda t: (flip(t),))
    return TensorRule((ours,), (hf,), to_ours=lambda t: (flip(t) * factor,), to_hf=lambda t: (flip(t) / factor,))


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    r = float(config_json.get("residual_multiplier", 1.0))
    rules = [same("embed.weight", "model.embed_tokens.weight"), same("final_norm.weight", "model.norm.weight")]
    if model.lm_head.weight is not model.embed.weight:
        rules.append(same("lm_head.weight", "lm_head.weight"))
    d_model = model.embed.weight.shape[1]
    for i, block in enumerate(model.blocks):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        rules += [same(f"{ours}.mixer_norm.weight", f"{hf}.input_layernorm.weight"),
                  same(f"{ours}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight")]
        if isinstance(block.mixer, Attention):
            head_dim = block.mixer.head_dim
            s = float(config_json.get("attention_multiplier", head_dim ** -0.5))
            q_factor = 1.0 if s == head_dim ** -0.5 else s * math.sqrt(head_dim)
            rules += [_scaled(f"{ours}.mixer.q_proj.weight", f"{hf}.self_attn.q_proj.weight", q_factor),
                      concatenated(f"{ours}.mixer.kv_proj.weight", [f"{hf}.self_attn.k_proj.weight",
                                                                    f"{hf}.self_attn.v_proj.weight"]),
                      _scaled(f"{ours}.mixer.o_proj.weight", f"{hf}.self_attn.o_proj.weight", r)]
        else:
            rules += [same(f"{ours}.mixer.{name}", f"{hf}.mamba.{name}") for name in MAMBA2_TENSORS]
            rules += [same(f"{ours}.mixer.norm_weight", f"{hf}.mamba.norm.weight"),
                      _scaled(f"{ours}.mixer.out_proj.weight", f"{hf}.mamba.out_proj.weight", r)]
            if block.mixer.conv1d.bias is not None:
                rules.append(same(f"{ours}.mixer.conv1d.bias", f"{hf}.mamba.conv1d.bias"))
            for proj in ("in_proj", "out_proj"):
                if getattr(block.mixer, proj).bias is not None:
                    rules.append(_scaled(f"{ours}.mixer.{proj}.bias", f"{hf}.mamba.{proj}.bias",
                                         r if proj == "out_proj" else 1.0))
        shared_hf = f"{hf}.shared_mlp"
        if isinstance(block.ffn, MoELayer):
            moe = f"{hf}.block_sparse_moe"
            rules += [same(f"{ours}.ffn.router.scorer.weight_ED", f"{moe}.router.layer.weight"),
                      fused_gate_up(f"{ours}.ffn.experts", f"{moe}.input_linear.weight"),
                      _scaled(f"{ours}.ffn.experts.w_down_EFD", f"{moe}.output_linear.weight", r, transpose=True)]
            if block.ffn.shared_expert is None:  # Granite always has a shared MLP: a zero one adds nothing
                rules += [constant(f"{shared_hf}.input_linear.weight", (2, d_model)),
                          constant(f"{shared_hf}.output_linear.weight", (d_model, 1))]
                continue
            dense = f"{ours}.ffn.shared_expert.ffn"
        else:
            dense = f"{ours}.ffn"
        d_ff = block.ffn.shared_expert.ffn.gate.out_features if isinstance(block.ffn, MoELayer) else \
            block.ffn.gate.out_features
        rules += [split_rows([f"{dense}.gate.weight", f"{dense}.up.weight"], f"{shared_hf}.input_linear.weight",
                             [d_ff, d_ff]),
                  _scaled(f"{dense}.down.weight", f"{shared_hf}.output_linear.weight", r)]
    return rules


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    if not f.hybrid:
        return ["no Mamba block (granitemoehybrid interleaves Mamba-2 and attention)"]
    if f.hybrid["ssm"] != "mamba2":
        return [f"model.ssm={f.hybrid['ssm']} (granitemoehybrid's Mamba blocks are Mamba-2)"]
    problems = []
    for name, value, want in (("norm", f.norm, "rmsnorm"), ("mlp", f.mlp, "swiglu")):
        if value != want:
            problems.append(f"model.{name}={value!r} (granitemoehybrid has {want!r})")
    if f.position not in ("rope", "none"):
        problems.append(f"model.position={f.position!r} (granitemoehybrid has rope or none)")
    if f.qk_norm or f.qkv_bias or f.out_bias:
        problems.append("qk_norm or attention biases (granitemoehybrid has none)")
    if f.moe_layers and f.moe_layers != list(range(f.n_layers)):
        problems.append(f"MoE blocks {f.moe_layers} (granitemoehybrid makes every block MoE, or none)")
    if f.moe_layers:
        if f.order != "topk_then_softmax":
            problems.append(f"router.order={f.order} (granitemoehybrid's softmax runs over the top-k logits)")
        if f.shared_gate or f.shared_count > 1:
            problems.append("a gated shared expert or more than one (granitemoehybrid has one ungated shared MLP)")
    return problems


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    h = f.hybrid
    attention = set(h["attention_layers"])
    cfg = {"hidden_size": f.d_model, "num_hidden_layers": f.n_layers, "num_attention_heads": f.n_heads,
           "num_key_value_heads": f.n_kv_heads, "max_position_embeddings": f.max_seq_len, "hidden_act": "silu",
           "rms_norm_eps": f.norm_eps, "attention_bias": False, "attention_dropout": 0.0,
           "layer_types": ["attention" if i in attention else "mamba" for i in range(f.n_layers)],
           "embedding_multiplier": f.embedding_multiplier, "logits_scaling": f.logits_scaling,
           "residual_multiplier": 1.0, "attention_multiplier": f.head_dim ** -0.5,
           "mamba_n_heads": h["expand"] * f.d_model // h["head_dim"], "mamba_d_head": h["head_dim"],
           "mamba_d_state": h["d_state"], "mamba_d_conv": h["d_conv"], "mamba_expand": h["expand"],
           "mamba_n_groups": h["n_groups"], "mamba_conv_bias": h["conv_bias"], "mamba_proj_bias": h["proj_bias"],
           "position_embedding_type": "rope" if f.position == "rope" else None,
           "num_local_experts": f.num_experts if f.moe_layers else 0, "num_experts_per_tok": f.top_k or 1,
           "intermediate_size": f.expert_d_ff or f.d_ff,
           "shared_intermediate_size": (f.shared_d_ff or 1) if f.moe_layers else f.d_ff,
           "router_aux_loss_coef": f.aux_coeff / f.top_k if f.top_k else 0.0, "output_router_logits": False}
    if f.position == "rope":
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": float(rope_theta)}
    return cfg
