"""Qwen2-MoE and Qwen3-MoE (HF ``qwen2_moe``, ``qwen3_moe``) as moe-lab MoE models (transformers' MoE code).
Qwen3-MoE has no shared expert and adds per-head RMSNorm on q and k (our ``qk_norm``); OLMoE has the
same layout with experts of ``intermediate_size`` and q/k RMSNorm over the full width
(``qk_norm_scope: full``).

The Qwen2 backbone (q/k/v biases) whose MoE blocks have ``num_experts`` SwiGLU experts of
``moe_intermediate_size``, a softmax top-k router with the top-k probabilities used as they are
(``norm_topk_prob: false``, our ``softmax_then_topk``) or renormalised (``true``, our
``topk_then_softmax``), and one shared expert of ``shared_expert_intermediate_size`` scaled by a
sigmoid gate (our ``SharedExpert`` with ``gate=True``). Block i is MoE unless it is in
``mlp_only_layers`` or (i + 1) is not a multiple of ``decoder_sparse_step``; the dense blocks keep an
FFN of ``intermediate_size``. On disk: ``mlp.gate.weight`` [E, D], ``mlp.experts.{e}.{gate,up,down}_proj``,
``mlp.shared_expert.{gate,up,down}_proj`` and ``mlp.shared_expert_gate.weight`` [1, D].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from moe.interop.hf_mixtral import routed_expert_names, same, swiglu_names


def qwen2_moe_run_config(cfg: Mapping[str, Any], dense_model: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 writes Qwen3-MoE's expert count as num_local_experts
    E = int(cfg.get("num_experts") or cfg["num_local_experts"])
    k, n_layers = int(cfg["num_experts_per_tok"]), dense_model["n_layers"]
    step, dense_only = int(cfg.get("decoder_sparse_step", 1)), set(cfg.get("mlp_only_layers") or [])
    moe_layers = [i for i in range(n_layers) if i not in dense_only and (i + 1) % step == 0]
    shared = int(cfg.get("shared_expert_intermediate_size") or 0)
    expert_d_ff = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])  # OLMoE: the latter
    model = {**dense_model, "num_experts": E, "expert_d_ff": expert_d_ff,
             "moe_layers": moe_layers, "num_shared_experts": 1 if shared else 0,
             "shared_expert_d_ff": shared or None, "shared_expert_gate": bool(shared)}
    coeff = float(cfg.get("router_aux_loss_coef") or 0.0)
    balance = {"switch_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": k * coeff,
                              "scope": "micro"}} if coeff else {}
    order = "topk_then_softmax" if cfg.get("norm_topk_prob") else "softmax_then_topk"
    return {
        "model": model,
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k, "order": order},
        "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True, "impl": "auto"},
        "balance": balance,
    }


def qwen2_moe_tensor_map(model_cfg: Mapping[str, Any]) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    E = model_cfg["num_experts"]
    names: dict[str, tuple[list[str], Callable[..., torch.Tensor]]] = {}
    for i in range(model_cfg["n_layers"]):
        hf, ours = f"model.layers.{i}.mlp", f"blocks.{i}.ffn"
        if i not in model_cfg["moe_layers"]:
            names.update(swiglu_names(ours, hf))
            continue
        names[f"{ours}.router.scorer.weight_ED"] = ([f"{hf}.gate.weight"], same)
        names.update(routed_expert_names(ours, hf, E))
        if model_cfg["num_shared_experts"]:
            names.update(swiglu_names(f"{ours}.shared_expert.ffn", f"{hf}.shared_expert"))
            names[f"{ours}.shared_expert.gate.weight"] = ([f"{hf}.shared_expert_gate.weight"], same)
    return names
