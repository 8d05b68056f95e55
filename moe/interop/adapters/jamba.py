"""Jamba (HF ``model_type: jamba``; Lieber et al. 2403.19887), in both directions: Mamba-1 and attention
blocks interleaved, MoE in every ``expert_layer_period``-th block.

config.json → our nodes:
- block i attends iff ``i % attn_layer_period == attn_layer_offset`` (``attention_every`` /
  ``attention_offset``), the others are Mamba-1 mixers with Jamba's RMSNorms on dt, B and C
  (``mamba_inner_norms``); attention has no positional encoding (``position: none``);
- block i is MoE iff ``i % expert_layer_period == expert_layer_offset`` and ``num_experts > 1``
  (``moe_layers``), each expert a SwiGLU of ``intermediate_size``; the other blocks are dense SwiGLUs
  of the same size;
- the router is softmax then top-k **without** renormalising the k weights (our ``TopKRouter`` with
  ``order: softmax_then_topk``); ``router_aux_loss_coef`` becomes ``switch_aux`` as for Mixtral.

On disk: ``model.layers.{i}.mamba.*`` has our Mamba mixer's names except the norms
(``dt_layernorm`` → ``inner_norms.dt``, ``b_layernorm`` → ``inner_norms.B``, ``c_layernorm`` →
``inner_norms.C``); ``self_attn.{q,k,v,o}_proj``; ``feed_forward.{gate,up,down}_proj`` (dense) or
``feed_forward.router`` and ``feed_forward.experts.{e}.{gate,up,down}_proj`` (MoE); the block norms are
``input_layernorm`` and ``pre_ff_layernorm``, the final one ``model.final_layernorm``.

Export: a Mamba hybrid whose attention blocks (at least one) and MoE blocks each follow one period and
offset, GQA attention without positions, biases or qk_norm, Mamba mixers of one configuration with the
inner norms, a ``TopKRouter`` in ``softmax_then_topk`` order, no shared expert, and experts as wide as
the dense FFNs (Jamba has one ``intermediate_size``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.interop.adapters.llama import FLAVOURS, attention_rules, backbone_model_config, swiglu_rules
from moe.interop.adapters.mixtral import GROUPED_EXPERTS, routed_expert_rules, switch_aux_balance
from moe.interop.adapters.rules import TensorRule, same
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer
from moe.models.attention import Attention

MODEL_TYPES = ("jamba",)
EXPORT_CLASSES = {"jamba": "JambaForCausalLM"}
MAMBA_TENSORS = ("A_log", "D", "conv1d.weight", "in_proj.weight", "x_proj.weight", "dt_proj.weight",
                 "dt_proj.bias", "out_proj.weight")
INNER_NORMS = {"dt": "dt_layernorm", "B": "b_layernorm", "C": "c_layernorm"}


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    dense = backbone_model_config(cfg, FLAVOURS["mistral"], max_seq_len=max_seq_len)
    n_layers, E, k = dense["n_layers"], int(cfg.get("num_experts", 16)), int(cfg.get("num_experts_per_tok", 2))
    period, offset = int(cfg.get("expert_layer_period", 2)), int(cfg.get("expert_layer_offset", 1))
    moe_layers = [i for i in range(n_layers) if i % period == offset] if E > 1 else []
    dt_rank = cfg.get("mamba_dt_rank", "auto")
    model = {
        **dense, "position": "none", "attention": "gqa", "ssm": "mamba",
        "attention_every": int(cfg.get("attn_layer_period", 8)),
        "attention_offset": int(cfg.get("attn_layer_offset", 4)),
        "mamba_d_state": int(cfg.get("mamba_d_state", 16)), "mamba_d_conv": int(cfg.get("mamba_d_conv", 4)),
        "mamba_expand": int(cfg.get("mamba_expand", 2)),
        "mamba_dt_rank": math.ceil(dense["d_model"] / 16) if dt_rank == "auto" else int(dt_rank),
        "mamba_conv_bias": bool(cfg.get("mamba_conv_bias", True)),
        "mamba_proj_bias": bool(cfg.get("mamba_proj_bias", False)),
        "mamba_inner_norms": True,
        "num_experts": E if moe_layers else 0, "expert_d_ff": dense["d_ff"], "num_shared_experts": 0,
        "moe_layers": moe_layers or None,
    }
    if not moe_layers:
        return {"model": model}
    return {"model": model,
            "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k,
                       "order": "softmax_then_topk"},
            "experts": GROUPED_EXPERTS, "balance": switch_aux_balance(cfg, k)}


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    rules = [same("embed.weight", "model.embed_tokens.weight"),
             same("final_norm.weight", "model.final_layernorm.weight")]
    if model.lm_head.weight is not model.embed.weight:
        rules.append(same("lm_head.weight", "lm_head.weight"))
    for i, block in enumerate(model.blocks):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        rules += [same(f"{ours}.mixer_norm.weight", f"{hf}.input_layernorm.weight"),
                  same(f"{ours}.ffn_norm.weight", f"{hf}.pre_ff_layernorm.weight")]
        if isinstance(block.mixer, Attention):
            rules += attention_rules(block.mixer, f"{ours}.mixer", f"{hf}.self_attn", zero_qkv_bias=False)
        else:
            rules += [same(f"{ours}.mixer.{name}", f"{hf}.mamba.{name}") for name in MAMBA_TENSORS]
            if block.mixer.conv1d.bias is not None:
                rules.append(same(f"{ours}.mixer.conv1d.bias", f"{hf}.mamba.conv1d.bias"))
            for proj in ("in_proj", "out_proj"):
                if getattr(block.mixer, proj).bias is not None:
                    rules.append(same(f"{ours}.mixer.{proj}.bias", f"{hf}.mamba.{proj}.bias"))
            rules += [same(f"{ours}.mixer.inner_norms.{key}.weight", f"{hf}.mamba.{name}.weight")
                      for key, name in INNER_NORMS.items()]
        if isinstance(block.ffn, MoELayer):
            rules.append(same(f"{ours}.ffn.router.scorer.weight_ED", f"{hf}.feed_forward.router.weight"))
            rules += routed_expert_rules(f"{ours}.ffn", f"{hf}.feed_forward", block.ffn.experts.num_experts)
        else:
            rules += swiglu_rules(f"{ours}.ffn", f"{hf}.feed_forward")
    return rules


def period_and_offset(indices: list[int], n_layers: int) -> tuple[int, int] | None:
    """(period, offset) with ``[i for i in range(n_layers) if i % period == offset] == indices``, the
    smallest period; an empty list is a period no block reaches; None when no pair gives the list."""
    if not indices:
        return n_layers + 1, n_layers
    for period in range(1, n_layers + 1):
        offset = indices[0] % period
        if [i for i in range(n_layers) if i % period == offset] == indices:
            return period, offset
    return None


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    if not f.hybrid:
        return ["no Mamba block (jamba interleaves Mamba and attention)"]
    if f.hybrid["ssm"] != "mamba":
        return [f"model.ssm={f.hybrid['ssm']} (jamba's Mamba blocks are Mamba-1)"]
    problems = []
    if period_and_offset(f.hybrid["attention_layers"], f.n_layers) is None:
        problems.append(f"attention blocks {f.hybrid['attention_layers']} follow no period/offset")
    if period_and_offset(f.moe_layers, f.n_layers) is None:
        problems.append(f"MoE blocks {f.moe_layers} follow no period/offset")
    for name, value, want in (("position", f.position, "none"), ("norm", f.norm, "rmsnorm"), ("mlp", f.mlp, "swiglu"),
                              ("mamba_inner_norms", f.hybrid["inner_norms"], True)):
        if value != want:
            problems.append(f"model.{name}={value!r} (jamba has {want!r})")
    if f.qk_norm or f.qkv_bias or f.out_bias:
        problems.append("qk_norm or attention biases (jamba has none)")
    if f.moe_layers:
        if f.order != "softmax_then_topk":
            problems.append(f"router.order={f.order} (jamba does not renormalise the top-k weights)")
        if f.shared_d_ff:
            problems.append("a shared expert (jamba has none)")
        if f.d_ff is not None and f.d_ff != f.expert_d_ff:
            problems.append(f"expert_d_ff={f.expert_d_ff} != d_ff={f.d_ff} (jamba has one intermediate_size)")
    return problems


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    attn_period, attn_offset = period_and_offset(f.hybrid["attention_layers"], f.n_layers)
    expert_period, expert_offset = period_and_offset(f.moe_layers, f.n_layers)
    h = f.hybrid
    return {"hidden_size": f.d_model, "intermediate_size": f.d_ff or f.expert_d_ff, "num_hidden_layers": f.n_layers,
            "num_attention_heads": f.n_heads, "num_key_value_heads": f.n_kv_heads, "hidden_act": "silu",
            "max_position_embeddings": f.max_seq_len, "rms_norm_eps": f.norm_eps, "attention_dropout": 0.0,
            "attn_layer_period": attn_period, "attn_layer_offset": attn_offset,
            "expert_layer_period": expert_period, "expert_layer_offset": expert_offset,
            "num_experts": f.num_experts if f.moe_layers else 1, "num_experts_per_tok": f.top_k or 1,
            "router_aux_loss_coef": f.aux_coeff / f.top_k if f.top_k else 0.0, "output_router_logits": False,
            "mamba_d_state": h["d_state"], "mamba_d_conv": h["d_conv"], "mamba_expand": h["expand"],
            "mamba_dt_rank": h["dt_rank"], "mamba_conv_bias": h["conv_bias"], "mamba_proj_bias": h["proj_bias"]}

