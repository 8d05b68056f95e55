"""Qwen2-MoE, Qwen3-MoE and OLMoE (HF ``qwen2_moe``, ``qwen3_moe``, ``olmoe``), in both directions
(transformers' MoE code). Qwen3-MoE has no shared expert and adds per-head RMSNorm on q and k (our
``qk_norm``); OLMoE has the same layout with experts of ``intermediate_size`` and q/k RMSNorm over the
full width (``qk_norm_scope: full``).

Qwen2-MoE: the Qwen2 backbone (q/k/v biases) whose MoE blocks have ``num_experts`` SwiGLU experts of
``moe_intermediate_size``, a softmax top-k router with the top-k probabilities used as they are
(``norm_topk_prob: false``, our ``softmax_then_topk``) or renormalised (``true``, our
``topk_then_softmax``), and one shared expert of ``shared_expert_intermediate_size`` scaled by a
sigmoid gate (our ``SharedExpert`` with ``gate=True``). Block i is MoE unless it is in
``mlp_only_layers`` or (i + 1) is not a multiple of ``decoder_sparse_step``; the dense blocks keep an
FFN of ``intermediate_size``. On disk: ``mlp.gate.weight`` [E, D], ``mlp.experts.{e}.{gate,up,down}_proj``,
``mlp.shared_expert.{gate,up,down}_proj`` and ``mlp.shared_expert_gate.weight`` [1, D].

Export (the first that fits: qwen3_moe, olmoe, qwen2_moe): ``norm_topk_prob`` = (router.order ==
topk_then_softmax), ``mlp_only_layers`` = the dense blocks (qwen*_moe; OLMoE makes every block MoE).
qwen2_moe always has q/k/v biases (zeros when the model has none) and a gated shared expert: a model
without one gets a zero shared expert of width 1 (output exactly 0; width 0 would read back as "no
shared expert" and its tensors be refused), and an ungated one gets gate weight 0 (σ(0) = ½ exactly)
with its down-projection doubled (a power of two rounds nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.interop.adapters.llama import FLAVOURS, Flavour, backbone_model_config, backbone_rules, swiglu_rules
from moe.interop.adapters.mixtral import (
    GROUPED_EXPERTS,
    moe_hf_config,
    moe_problems,
    routed_expert_rules,
    switch_aux_balance,
)
from moe.interop.adapters.rules import TensorRule, constant, same, scaled
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer

MODEL_TYPES = ("qwen2_moe", "qwen3_moe", "olmoe")
EXPORT_CLASSES = {"qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
BACKBONES = {"qwen2_moe": FLAVOURS["qwen2"], "qwen3_moe": FLAVOURS["qwen3"], "olmoe": Flavour(qk_norm="full")}


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    dense_model = backbone_model_config(cfg, BACKBONES[cfg["model_type"]], max_seq_len=max_seq_len)
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
    order = "topk_then_softmax" if cfg.get("norm_topk_prob") else "softmax_then_topk"
    return {
        "model": model,
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k, "order": order},
        "experts": GROUPED_EXPERTS,
        "balance": switch_aux_balance(cfg, k),
    }


def _shared_expert_rules(layer: MoELayer, ours: str, hf: str, model_type: str) -> list[TensorRule]:
    shared, D = layer.shared_expert, layer.router.scorer.weight_ED.shape[1]
    if shared is None:
        if model_type != "qwen2_moe":
            return []
        return [constant(f"{hf}.shared_expert.gate_proj.weight", (1, D)),
                constant(f"{hf}.shared_expert.up_proj.weight", (1, D)),
                constant(f"{hf}.shared_expert.down_proj.weight", (D, 1)),
                constant(f"{hf}.shared_expert_gate.weight", (1, D))]
    if shared.gate is not None:
        return [*swiglu_rules(f"{ours}.shared_expert.ffn", f"{hf}.shared_expert"),
                same(f"{ours}.shared_expert.gate.weight", f"{hf}.shared_expert_gate.weight")]
    ffn, hf_ffn = f"{ours}.shared_expert.ffn", f"{hf}.shared_expert"
    return [same(f"{ffn}.gate.weight", f"{hf_ffn}.gate_proj.weight"),
            same(f"{ffn}.up.weight", f"{hf_ffn}.up_proj.weight"),
            scaled(f"{ffn}.down.weight", f"{hf_ffn}.down_proj.weight", 2.0),  # undoes the gate's σ(0) = ½
            constant(f"{hf}.shared_expert_gate.weight", (1, D))]


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    rules = backbone_rules(model, model_type)
    for i, block in enumerate(model.blocks):
        if isinstance(block.ffn, MoELayer):
            ours, hf = f"blocks.{i}.ffn", f"model.layers.{i}.mlp"
            rules.append(same(f"{ours}.router.scorer.weight_ED", f"{hf}.gate.weight"))
            rules += routed_expert_rules(ours, hf, block.ffn.experts.num_experts)
            rules += _shared_expert_rules(block.ffn, ours, hf, model_type)
    return rules


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    return moe_problems(arch, f)


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    cfg = {**moe_hf_config(arch, f, rope_theta), "num_experts": f.num_experts,
           "norm_topk_prob": f.order == "topk_then_softmax"}
    if arch in ("qwen2_moe", "qwen3_moe"):
        dense = sorted(set(range(f.n_layers)) - set(f.moe_layers))
        cfg.update(moe_intermediate_size=f.expert_d_ff, decoder_sparse_step=1, mlp_only_layers=dense)
    if arch == "qwen2_moe":
        cfg.update(qkv_bias=True, shared_expert_intermediate_size=f.shared_d_ff or 1)
    if arch == "olmoe":
        cfg.update(intermediate_size=f.expert_d_ff, clip_qkv=None)
    return cfg
