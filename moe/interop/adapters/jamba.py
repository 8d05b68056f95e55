"""Jamba (HF ``model_type: jamba``; Lieber et al. 2403.19887), import only: Mamba-1 and attention blocks
interleaved, MoE in every ``expert_layer_period``-th block.

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
Export to Jamba is not written yet (issue 14 item 5's other half).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.interop.adapters.llama import FLAVOURS, attention_rules, backbone_model_config, swiglu_rules
from moe.interop.adapters.mixtral import GROUPED_EXPERTS, routed_expert_rules, switch_aux_balance
from moe.interop.adapters.rules import TensorRule, same
from moe.layer import MoELayer
from moe.models.attention import Attention

MODEL_TYPES = ("jamba",)
EXPORT_CLASSES: dict[str, str] = {}
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
