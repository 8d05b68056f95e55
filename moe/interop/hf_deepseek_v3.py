"""DeepSeek-V3 (HF ``model_type: deepseek_v3``, 2412.19437) as a moe-lab MoE model (transformers' MoE code).

The Llama-like backbone with multi-head latent attention (``attention: mla``, moe/models/mla.py);
the first ``first_k_dense_replace`` blocks keep a dense SwiGLU of ``intermediate_size``, every later
block is an MoE layer of ``n_routed_experts`` SwiGLU experts of ``moe_intermediate_size`` plus
``n_shared_experts`` ungated shared experts of the same width (our ``SharedExpert``). The router is our
``SigmoidRouter``: s = σ(W x) in float32, group-limited top-k on s + b (b = ``e_score_correction_bias``,
loaded into ``router.selection_bias_E``), weights from the unbiased s, renormalised when
``norm_topk_prob``, times ``routed_scaling_factor``.

Balancing: HF trains none (the bias is a frozen buffer and there is no aux loss). The run config
carries the paper's recipe as ordinary moe-lab balancers, so fine-tuning an import balances like
DeepSeek-V3 did: ``aux_free`` (bias update rate 0.001, sign rule) plus the complementary ``seq_aux``
loss with α = 0.0001. ``balance=`` overrides replace them like for any other model.

On disk (transformers 5.24 ``save_pretrained``): ``self_attn.{q_a_proj, q_a_layernorm, q_b_proj}``
(or ``q_proj``), ``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``;
``mlp.{gate,up,down}_proj`` on dense blocks; ``mlp.gate.weight`` [E, D],
``mlp.gate.e_score_correction_bias`` [E], ``mlp.experts.{e}.{gate,up,down}_proj``,
``mlp.shared_experts.{gate,up,down}_proj`` on MoE blocks. Multi-token-prediction layers stored after
the last block (``model.layers.{n_layers}...``) are skipped, as transformers does.

With ``rope_interleave`` (the default, DeepSeek's own layout) the RoPE dimensions of q and k are
rotated in interleaved pairs; permuting those rows of ``q_b_proj`` / ``q_proj`` and of the rope part
of ``kv_a_proj_with_mqa`` to (even…, odd…) makes our rotate-half RoPE compute exactly that.
Unsupported features (RoPE scaling/YaRN, biases, another scoring function or top-k method, a layer
frequency other than 1, heads sharing keys) raise ValueError naming the option. ``n_shared_experts: 0``
gives no shared expert (transformers writes its empty [0, D] tensors; hf_dense.py skips empty tensors).

The export (moe/interop/hf_export.py) writes ``rope_interleave: false`` with the rows as they are, so an
exported model reads back without a permutation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from moe.interop.hf_mixtral import routed_expert_names, same, swiglu_names

_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")


def _required(cfg: Mapping[str, Any], name: str) -> int:
    if cfg.get(name) is None:
        raise ValueError(f"deepseek_v3: config.json has no {name}")
    return int(cfg[name])


def _check_supported(cfg: Mapping[str, Any], E: int, n_group: int) -> None:
    checks = (
        ("topk_method", cfg.get("topk_method"), (None, "noaux_tc")),
        ("scoring_func", cfg.get("scoring_func"), (None, "sigmoid")),
        ("moe_layer_freq", cfg.get("moe_layer_freq"), (None, 1)),
        ("num_key_value_heads", cfg.get("num_key_value_heads"), (None, cfg["num_attention_heads"])),
    )
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"deepseek_v3: {name}={value!r} is not supported (allowed: {allowed})")
    if E % n_group:
        raise ValueError(f"deepseek_v3: n_group={n_group} does not divide n_routed_experts={E}")


def deepseek_v3_run_config(cfg: Mapping[str, Any], dense_model: dict[str, Any]) -> dict[str, Any]:
    """model/router/experts/balance nodes from config.json and the Llama-like backbone's model node
    (whose RoPE scaling, attention_bias and activation checks already ran in hf_dense.py)."""
    E, k = _required(cfg, "n_routed_experts"), _required(cfg, "num_experts_per_tok")
    n_group, topk_group = int(cfg.get("n_group") or 1), int(cfg.get("topk_group") or 1)
    _check_supported(cfg, E, n_group)
    q_lora_rank = cfg.get("q_lora_rank")
    shared = int(cfg.get("n_shared_experts") or 0)
    model = {
        **dense_model,
        "n_kv_heads": None,  # MLA: every head has its own k and v
        "attention": "mla",
        "q_lora_rank": None if q_lora_rank is None else int(q_lora_rank),
        "kv_lora_rank": _required(cfg, "kv_lora_rank"),
        "qk_nope_head_dim": _required(cfg, "qk_nope_head_dim"),
        "qk_rope_head_dim": _required(cfg, "qk_rope_head_dim"),
        "v_head_dim": _required(cfg, "v_head_dim"),
        "num_experts": E,
        "expert_d_ff": _required(cfg, "moe_intermediate_size"),
        "moe_every": 1,
        "moe_first_dense": int(cfg.get("first_k_dense_replace") or 0),
        "moe_layers": None,
        "num_shared_experts": shared,
        "shared_expert_d_ff": None,  # each shared expert has the routed experts' width
        "shared_expert_gate": False,
    }
    return {
        "model": model,
        "router": {"_target_": "moe.routers.SigmoidRouter", "_partial_": True, "top_k": k, "num_groups": n_group,
                   "topk_groups": topk_group, "normalize": bool(cfg.get("norm_topk_prob", True)),
                   "routed_scaling_factor": float(cfg.get("routed_scaling_factor") or 1.0)},
        "experts": {"_target_": "moe.experts.GroupedExperts", "_partial_": True, "impl": "auto"},
        # the paper's training recipe (HF implements neither); see the module docstring
        "balance": {
            "aux_free": {"_target_": "moe.balance.AuxFreeBalancer", "_partial_": True, "coeff": 0.0,
                         "update_rate": 0.001, "rule": "sign", "recenter": False},
            "seq_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": 0.0001,
                        "scope": "sequence"},
        },
    }


def _deinterleave_rows(rope_dim: int, block: int, rope_offset: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reorder the rows of a [blocks·block, in] weight so each block's rope rows [rope_offset, +rope_dim)
    go from interleaved pairs (0, 1), (2, 3), … to (0, 2, …, 1, 3, …); the other rows stay."""
    within = torch.arange(block)
    within[rope_offset:] = rope_offset + torch.cat((torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)))

    def permute(weight: torch.Tensor) -> torch.Tensor:
        blocks = weight.shape[0] // block
        rows = (torch.arange(blocks).unsqueeze(1) * block + within).reshape(-1)
        return weight[rows]

    return permute


def deepseek_v3_tensor_map(model_cfg: Mapping[str, Any], *, rope_interleave: bool = True,
                           ) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    """Our parameter/buffer names → (HF tensors, how to combine them) for the attention and FFN of
    every block (the embeddings and norms come from hf_dense.py's common map)."""
    E = model_cfg["num_experts"]
    n, r = model_cfg["qk_nope_head_dim"], model_cfg["qk_rope_head_dim"]
    # q rows are per head [nope | rope]; kv_a_proj's rows are [latent | rope] (one block)
    q_rows = _deinterleave_rows(r, n + r, n) if rope_interleave else same
    kv_a_rows = _deinterleave_rows(r, model_cfg["kv_lora_rank"] + r, model_cfg["kv_lora_rank"]) \
        if rope_interleave else same
    names: dict[str, tuple[list[str], Callable[..., torch.Tensor]]] = {}
    for i in range(model_cfg["n_layers"]):
        hf, ours = f"model.layers.{i}", f"blocks.{i}"
        attn, hf_attn = f"{ours}.mixer", f"{hf}.self_attn"
        if model_cfg["q_lora_rank"] is None:
            names[f"{attn}.q_proj.weight"] = ([f"{hf_attn}.q_proj.weight"], q_rows)
        else:
            names[f"{attn}.q_a_proj.weight"] = ([f"{hf_attn}.q_a_proj.weight"], same)
            names[f"{attn}.q_a_norm.weight"] = ([f"{hf_attn}.q_a_layernorm.weight"], same)
            names[f"{attn}.q_b_proj.weight"] = ([f"{hf_attn}.q_b_proj.weight"], q_rows)
        names[f"{attn}.kv_a_proj.weight"] = ([f"{hf_attn}.kv_a_proj_with_mqa.weight"], kv_a_rows)
        names[f"{attn}.kv_a_norm.weight"] = ([f"{hf_attn}.kv_a_layernorm.weight"], same)
        names[f"{attn}.kv_b_proj.weight"] = ([f"{hf_attn}.kv_b_proj.weight"], same)
        names[f"{attn}.o_proj.weight"] = ([f"{hf_attn}.o_proj.weight"], same)

        ffn, mlp = f"{ours}.ffn", f"{hf}.mlp"
        if i < model_cfg["moe_first_dense"]:
            names.update(swiglu_names(ffn, mlp))
            continue
        names[f"{ffn}.router.scorer.weight_ED"] = ([f"{mlp}.gate.weight"], same)
        names[f"{ffn}.router.selection_bias_E"] = ([f"{mlp}.gate.e_score_correction_bias"], same)
        names.update(routed_expert_names(ffn, mlp, E))
        if model_cfg["num_shared_experts"]:
            names.update(swiglu_names(f"{ffn}.shared_expert.ffn", f"{mlp}.shared_experts"))
    return names


def is_mtp_tensor(name: str, n_layers: int) -> bool:
    """A multi-token-prediction module's tensor: a ``model.layers.{j}`` with j >= num_hidden_layers."""
    match = _LAYER_KEY.match(name)
    return match is not None and int(match.group(1)) >= n_layers
