"""Mixtral (HF ``model_type: mixtral``) as a moe-lab MoE model: the Mistral backbone with every FFN an
MoE layer of ``num_local_experts`` SwiGLU experts and a softmax top-k router whose k weights are
renormalised to sum to 1 — our ``TopKRouter`` with ``order: topk_then_softmax`` (transformers' MoE code:
``p = softmax(logits)``, ``topk(p, k)``, ``w /= w.sum()``, which equals the softmax over the k chosen
logits). On disk each expert is ``block_sparse_moe.experts.{e}.w1`` (gate, [F, D]), ``w3`` (up) and
``w2`` (down, [D, F]); the router is ``block_sparse_moe.gate.weight`` [E, D].

The run config it produces is an ordinary moe-lab config (model, router, experts, balance), so
``router=`` / ``balance=`` overrides apply to an imported Mixtral like to any other model.
Mixtral's own aux loss (``router_aux_loss_coef``, HF convention: k at balance) is our ``switch_aux``
with coefficient k × router_aux_loss_coef; it is set only when the checkpoint trains with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def stacked_experts(*per_expert: torch.Tensor) -> torch.Tensor:
    """E HF expert matrices (nn.Linear [out, in]) → our stack in the "x @ w" layout [E, in, out]."""
    return torch.stack([w.T for w in per_expert])


def same(t: torch.Tensor) -> torch.Tensor:
    return t


SWIGLU_PROJECTIONS = (("w_gate_EDF", "gate_proj"), ("w_up_EDF", "up_proj"), ("w_down_EFD", "down_proj"))


def routed_expert_names(ours: str, hf: str, num_experts: int, projections=SWIGLU_PROJECTIONS
                        ) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    """Our expert stacks of the MoE layer ``ours`` ← HF's per-expert ``{hf}.experts.{e}.{proj}.weight``."""
    return {f"{ours}.experts.{our_name}": ([f"{hf}.experts.{e}.{proj}.weight" for e in range(num_experts)],
                                           stacked_experts) for our_name, proj in projections}


def swiglu_names(ours: str, hf: str) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    """Our SwiGLU ``{ours}.{gate,up,down}.weight`` ← HF's ``{hf}.{gate,up,down}_proj.weight``."""
    return {f"{ours}.{proj}.weight": ([f"{hf}.{proj}_proj.weight"], same) for proj in ("gate", "up", "down")}


def mixtral_run_config(cfg: Mapping[str, Any], dense_model: dict[str, Any]) -> dict[str, Any]:
    """model/router/experts/balance nodes from config.json and the Mistral backbone's model node."""
    E, k = int(cfg["num_local_experts"]), int(cfg["num_experts_per_tok"])
    model = {**dense_model, "num_experts": E, "expert_d_ff": dense_model["d_ff"], "moe_every": 1,
             "moe_first_dense": 0, "moe_layers": None}
    coeff = float(cfg.get("router_aux_loss_coef") or 0.0)
    balance = {"switch_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": k * coeff,
                              "scope": "micro"}} if coeff else {}
    return {
        "model": model,
        "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k,
                   "order": "topk_then_softmax", "jitter_eps": float(cfg.get("router_jitter_noise") or 0.0)},
        "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True, "impl": "auto"},
        "balance": balance,
    }


def mixtral_tensor_map(model_cfg: Mapping[str, Any]) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    """Our MoE parameter names → (HF tensors, how to combine them): stacked and transposed experts."""
    E = model_cfg["num_experts"]
    names: dict[str, tuple[list[str], Callable[..., torch.Tensor]]] = {}
    for i in range(model_cfg["n_layers"]):
        hf, ours = f"model.layers.{i}.block_sparse_moe", f"blocks.{i}.ffn"
        names[f"{ours}.router.scorer.weight_ED"] = ([f"{hf}.gate.weight"], same)
        names.update(routed_expert_names(ours, hf, E, (("w_gate_EDF", "w1"), ("w_up_EDF", "w3"), ("w_down_EFD", "w2"))))
    return names
