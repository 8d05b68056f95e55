"""Mixtral (HF ``model_type: mixtral``), in both directions: the Mistral backbone with every FFN an MoE
layer of ``num_local_experts`` SwiGLU experts and a softmax top-k router whose k weights are
renormalised to sum to 1 — our ``TopKRouter`` with ``order: topk_then_softmax`` (transformers' MoE code:
``p = softmax(logits)``, ``topk(p, k)``, ``w /= w.sum()``, which equals the softmax over the k chosen
logits). On disk each expert is ``block_sparse_moe.experts.{e}.w1`` (gate, [F, D]), ``w3`` (up) and
``w2`` (down, [D, F]); the router is ``block_sparse_moe.gate.weight`` [E, D].

The run config it produces is an ordinary moe-lab config (model, router, experts, balance), so
``router=`` / ``balance=`` overrides apply to an imported Mixtral like to any other model.
Balancing: Mixtral's aux loss (``router_aux_loss_coef``, HF convention: k at balance) is our
``switch_aux`` with coefficient k × router_aux_loss_coef, set only when the checkpoint trains with it;
the export writes coeff / k with ``output_router_logits: false`` (HF's default: HF adds no aux loss
unless asked). HF pools the counts over all layers, ours sums per-layer losses, so the coefficient
matches per layer, not in total.

Export: a model whose every block is MoE with a ``TopKRouter`` in ``topk_then_softmax`` order, no
qk_norm, no biases and no shared expert. Router jitter is refused (Mixtral's jitter also scales the
experts' input, ours only the router's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from moe.interop.adapters.llama import (
    FLAVOURS,
    backbone_hf_config,
    backbone_model_config,
    backbone_problems,
    backbone_rules,
)
from moe.interop.adapters.rules import TensorRule, expert_stack, same
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer

MODEL_TYPES = ("mixtral",)
EXPORT_CLASSES = {"mixtral": "MixtralForCausalLM"}
GROUPED_EXPERTS = {"_target_": "moe.experts.GroupedExperts", "_partial_": True, "impl": "auto"}


def switch_aux_balance(cfg: Mapping[str, Any], top_k: int) -> dict[str, Any]:
    """HF's ``router_aux_loss_coef`` (k at balance) as our switch_aux (1 at balance); none when 0."""
    coeff = float(cfg.get("router_aux_loss_coef") or 0.0)
    return {"switch_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": top_k * coeff,
                           "scope": "micro"}} if coeff else {}


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    dense_model = backbone_model_config(cfg, FLAVOURS["mistral"], max_seq_len=max_seq_len)
    E, k = int(cfg["num_local_experts"]), int(cfg["num_experts_per_tok"])
    model = {**dense_model, "num_experts": E, "expert_d_ff": dense_model["d_ff"], "moe_every": 1,
             "moe_first_dense": 0, "moe_layers": None}
    return {
        "model": model,
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k,
                   "order": "topk_then_softmax", "jitter_eps": float(cfg.get("router_jitter_noise") or 0.0)},
        "experts": GROUPED_EXPERTS,
        "balance": switch_aux_balance(cfg, k),
    }


def routed_expert_rules(ours: str, hf: str, num_experts: int,
                        projections: Sequence[tuple[str, str]] = (("w_gate_EDF", "gate_proj"), ("w_up_EDF", "up_proj"),
                                                                   ("w_down_EFD", "down_proj"))) -> list[TensorRule]:
    """Our expert stacks of the MoE layer ``ours`` ↔ HF's per-expert ``{hf}.experts.{e}.{proj}.weight``."""
    return [expert_stack(f"{ours}.experts.{stack}", [f"{hf}.experts.{e}.{proj}.weight" for e in range(num_experts)])
            for stack, proj in projections]


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    rules = backbone_rules(model, model_type)
    for i, block in enumerate(model.blocks):
        if isinstance(block.ffn, MoELayer):
            ours, hf = f"blocks.{i}.ffn", f"model.layers.{i}.block_sparse_moe"
            rules.append(same(f"{ours}.router.scorer.weight_ED", f"{hf}.gate.weight"))
            rules += routed_expert_rules(ours, hf, block.ffn.experts.num_experts,
                                         (("w_gate_EDF", "w1"), ("w_up_EDF", "w3"), ("w_down_EFD", "w2")))
    return rules


def moe_problems(arch: str, f: ModelFacts) -> list[str]:
    """What the softmax top-k MoE targets (mixtral, qwen*_moe, olmoe) have in common."""
    problems = backbone_problems(arch, f)
    if not f.moe_layers:
        problems.append(f"{arch} is an MoE but the model has no MoE block")
    if arch in ("mixtral", "olmoe") and f.moe_layers and len(f.moe_layers) != f.n_layers:
        problems.append(f"dense blocks {sorted(set(range(f.n_layers)) - set(f.moe_layers))} ({arch} makes every "
                        f"block MoE; qwen2_moe / qwen3_moe have mlp_only_layers)")
    if f.shared_d_ff and arch != "qwen2_moe":
        problems.append(f"a shared expert ({arch} has none; qwen2_moe has one, gated)")
    return problems


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    problems = moe_problems(arch, f)
    if f.order and f.order != "topk_then_softmax":
        problems.append(f"router.order={f.order} (mixtral always renormalises the top-k weights: "
                        f"topk_then_softmax)")
    return problems


def moe_hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    """The backbone's config.json plus the keys every softmax top-k MoE target shares."""
    return {**backbone_hf_config(arch, f, rope_theta), "num_experts_per_tok": f.top_k,
            "router_aux_loss_coef": f.aux_coeff / f.top_k, "output_router_logits": False}


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    return {**moe_hf_config(arch, f, rope_theta), "sliding_window": None, "intermediate_size": f.expert_d_ff,
            "num_local_experts": f.num_experts, "router_jitter_noise": 0.0}
