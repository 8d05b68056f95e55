"""DeepSeek-V3 (HF ``model_type: deepseek_v3``, 2412.19437), in both directions (transformers' MoE code).

The Llama-like backbone with multi-head latent attention (``attention: mla``, moe/models/mla.py);
the first ``first_k_dense_replace`` blocks keep a dense SwiGLU of ``intermediate_size``, every later
block is an MoE layer of ``n_routed_experts`` SwiGLU experts of ``moe_intermediate_size`` plus
``n_shared_experts`` ungated shared experts of the same width (our ``SharedExpert``: one SwiGLU of
n_shared × that width, which is HF's ``shared_experts`` MLP). The router is our ``SigmoidRouter``:
s = σ(W x) in float32, group-limited top-k on s + b (b = ``e_score_correction_bias`` =
``router.selection_bias_E``, exactly the aux_free balancer's bias), weights from the unbiased s,
renormalised when ``norm_topk_prob``, times ``routed_scaling_factor``.

Balancing: HF trains none (the bias is a frozen buffer and there is no aux loss). The imported run
config carries the paper's recipe as ordinary moe-lab balancers, so fine-tuning an import balances
like DeepSeek-V3 did: ``aux_free`` (bias update rate 0.001, sign rule) plus the complementary
``seq_aux`` loss with α = 0.0001. ``balance=`` overrides replace them like for any other model. The
export writes no coefficient (HF has no aux loss) and not aux_free's update rule, only its bias.

On disk (transformers 5.24 ``save_pretrained``): ``self_attn.{q_a_proj, q_a_layernorm, q_b_proj}``
(or ``q_proj``), ``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj``, ``o_proj``;
``mlp.{gate,up,down}_proj`` on dense blocks; ``mlp.gate.weight`` [E, D],
``mlp.gate.e_score_correction_bias`` [E], ``mlp.experts.{e}.{gate,up,down}_proj``,
``mlp.shared_experts.{gate,up,down}_proj`` on MoE blocks. Multi-token-prediction layers stored after
the last block (``model.layers.{n_layers}...``) are skipped, as transformers does. ``n_shared_experts: 0``
gives no shared expert; transformers writes its empty [0, D] / [D, 0] tensors, which the import skips
and the export writes likewise.

RoPE layout: with ``rope_interleave`` (the default, DeepSeek's own layout) the RoPE dimensions of q
and k are rotated in interleaved pairs; permuting those rows of ``q_b_proj`` / ``q_proj`` and of the
rope part of ``kv_a_proj_with_mqa`` to (even…, odd…) makes our rotate-half RoPE compute exactly that.
The export writes ``rope_interleave: false`` with the rows as they are, so it reads back without one.

Import refuses (ValueError naming the option) RoPE scaling/YaRN, biases, another scoring function or
top-k method, a layer frequency other than 1 and heads sharing keys. Export needs model.attention=mla
(HF DeepSeek-V3 has only MLA; a GQA model with a SigmoidRouter is refused, GQA having no exact MLA
form), RMSNorm/RoPE/SwiGLU, a SigmoidRouter on every MoE block and the MoE blocks contiguous to the
last one (``first_k_dense_replace`` = the leading dense blocks; a dense MLA model writes
first_k_dense_replace = num_hidden_layers and n_routed_experts = 0). Groups of one expert are written
as n_group = topk_group = 1: HF scores a group by its top-2, and with one expert per group the limit
cannot change the top-k. The MLA latent norms' ε must be 1e-6 (HF's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from moe.interop.adapters.llama import FLAVOURS, backbone_model_config, backbone_rules, swiglu_rules
from moe.interop.adapters.mixtral import GROUPED_EXPERTS, routed_expert_rules
from moe.interop.adapters.rules import TensorRule, constant, row_permuted, same
from moe.interop.hf_model_facts import ModelFacts
from moe.layer import MoELayer
from moe.models.mla import MLAttention

MODEL_TYPES = ("deepseek_v3",)
EXPORT_CLASSES = {"deepseek_v3": "DeepseekV3ForCausalLM"}
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")
HF_NAMES = {"q_proj": "q_proj", "q_b_proj": "q_b_proj", "kv_a_proj": "kv_a_proj_with_mqa"}  # rope-permuted rows


# -- import: config.json → our config nodes

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


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    # MLA: head_dim is qk_rope_head_dim, not hidden/heads; the MLA sizes are read below
    dense_model = backbone_model_config(cfg, FLAVOURS["llama"], max_seq_len=max_seq_len, check_head_dim=False)
    E, k = _required(cfg, "n_routed_experts"), _required(cfg, "num_experts_per_tok")
    n_group, topk_group = int(cfg.get("n_group") or 1), int(cfg.get("topk_group") or 1)
    _check_supported(cfg, E, n_group)
    q_lora_rank = cfg.get("q_lora_rank")
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
        "num_shared_experts": int(cfg.get("n_shared_experts") or 0),
        "shared_expert_d_ff": None,  # each shared expert has the routed experts' width
        "shared_expert_gate": False,
    }
    return {
        "model": model,
        "router": {"_target_": "moe.routers.SigmoidRouter", "_partial_": True, "top_k": k, "num_groups": n_group,
                   "topk_groups": topk_group, "normalize": bool(cfg.get("norm_topk_prob", True)),
                   "routed_scaling_factor": float(cfg.get("routed_scaling_factor") or 1.0)},
        "experts": GROUPED_EXPERTS,
        # the paper's training recipe (HF implements neither); see the module docstring
        "balance": {
            "aux_free": {"_target_": "moe.balance.AuxFreeBalancer", "_partial_": True, "coeff": 0.0,
                         "update_rate": 0.001, "rule": "sign", "recenter": False},
            "seq_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": 0.0001,
                        "scope": "sequence"},
        },
    }


def is_ignored(name: str, model: nn.Module) -> bool:
    """A multi-token-prediction module's tensor: a ``model.layers.{j}`` with j >= num_hidden_layers."""
    match = _LAYER_KEY.match(name)
    return match is not None and int(match.group(1)) >= len(model.blocks)


# -- both directions: the tensor rules

def _deinterleaved_rows(num_rows: int, rope_dim: int, block: int, rope_offset: int) -> torch.Tensor:
    """The row order that takes each block's rope rows [rope_offset, +rope_dim) of a [blocks·block, in]
    weight from interleaved pairs (0, 1), (2, 3), … to (0, 2, …, 1, 3, …); the other rows stay."""
    within = torch.arange(block)
    within[rope_offset:] = rope_offset + torch.cat((torch.arange(0, rope_dim, 2), torch.arange(1, rope_dim, 2)))
    return (torch.arange(num_rows // block).unsqueeze(1) * block + within).reshape(-1)


def _attention_rules(attn: MLAttention, ours: str, hf: str, rope_interleave: bool) -> list[TensorRule]:
    n, r, c = attn.nope_dim, attn.rope_dim, attn.kv_lora_rank

    def rows(name: str, weight: torch.Tensor, block: int, rope_offset: int) -> TensorRule:
        if not rope_interleave:
            return same(f"{ours}.{name}.weight", f"{hf}.{HF_NAMES[name]}.weight")
        order = _deinterleaved_rows(weight.shape[0], r, block, rope_offset)
        return row_permuted(f"{ours}.{name}.weight", f"{hf}.{HF_NAMES[name]}.weight", order)

    # q rows are per head [nope | rope]; kv_a_proj's rows are [latent | rope] (one block)
    if attn.q_proj is not None:
        rules = [rows("q_proj", attn.q_proj.weight, n + r, n)]
    else:
        rules = [same(f"{ours}.q_a_proj.weight", f"{hf}.q_a_proj.weight"),
                 same(f"{ours}.q_a_norm.weight", f"{hf}.q_a_layernorm.weight"),
                 rows("q_b_proj", attn.q_b_proj.weight, n + r, n)]
    return rules + [rows("kv_a_proj", attn.kv_a_proj.weight, c + r, c),
                    same(f"{ours}.kv_a_norm.weight", f"{hf}.kv_a_layernorm.weight"),
                    same(f"{ours}.kv_b_proj.weight", f"{hf}.kv_b_proj.weight"),
                    same(f"{ours}.o_proj.weight", f"{hf}.o_proj.weight")]


def _moe_rules(layer: MoELayer, ours: str, hf: str) -> list[TensorRule]:
    rules = [same(f"{ours}.router.scorer.weight_ED", f"{hf}.gate.weight"),
             same(f"{ours}.router.selection_bias_E", f"{hf}.gate.e_score_correction_bias"),
             *routed_expert_rules(ours, hf, layer.experts.num_experts)]
    if layer.shared_expert is not None:
        return rules + swiglu_rules(f"{ours}.shared_expert.ffn", f"{hf}.shared_experts")
    D = layer.router.scorer.weight_ED.shape[1]  # n_shared_experts = 0: empty tensors, as transformers writes
    return rules + [constant(f"{hf}.shared_experts.gate_proj.weight", (0, D)),
                    constant(f"{hf}.shared_experts.up_proj.weight", (0, D)),
                    constant(f"{hf}.shared_experts.down_proj.weight", (D, 0))]


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    rope_interleave = bool(config_json.get("rope_interleave", True))
    rules = backbone_rules(model, model_type)  # embeddings, norms, dense blocks
    for i, block in enumerate(model.blocks):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        rules += _attention_rules(block.mixer, f"{ours}.mixer", f"{hf}.self_attn", rope_interleave)
        if isinstance(block.ffn, MoELayer):
            rules += _moe_rules(block.ffn, f"{ours}.ffn", f"{hf}.mlp")
    return rules


# -- export

def export_problems(arch: str, f: ModelFacts) -> list[str]:
    problems = []
    if f.attention != "mla":
        problems.append(f"model.attention={f.attention} (deepseek_v3 needs model.attention=mla: HF DeepSeek-V3 "
                        f"has only multi-head latent attention, and GQA has no exact MLA equivalent)")
    for name, value, want in (("norm", f.norm, "rmsnorm"), ("position", f.position, "rope"), ("mlp", f.mlp, "swiglu")):
        if value != want:
            problems.append(f"model.{name}={value!r} (deepseek_v3 needs {want!r})")
    if not f.moe_layers:
        return problems
    if f.router != "sigmoid":
        problems.append("router TopKRouter (deepseek_v3 routes with sigmoid scores and group-limited top-k: "
                        "router=sigmoid, moe.routers.SigmoidRouter)")
    k = f.moe_layers[0]
    if f.moe_layers != list(range(k, f.n_layers)):
        problems.append(f"MoE blocks {f.moe_layers}: deepseek_v3 has dense blocks only before the first MoE block "
                        f"(first_k_dense_replace), then every block MoE (model.moe_first_dense, moe_every=1)")
    if f.shared_d_ff and f.shared_gate:
        problems.append("a gated shared expert (deepseek_v3's shared experts have no gate; qwen2_moe has one)")
    if f.shared_d_ff and f.shared_d_ff != f.shared_count * f.expert_d_ff:
        problems.append(f"shared expert width {f.shared_d_ff} != num_shared_experts × expert_d_ff = "
                        f"{f.shared_count} × {f.expert_d_ff} (deepseek_v3's n_shared_experts have "
                        f"moe_intermediate_size each; set model.shared_expert_d_ff=null)")
    if f.num_experts < 2:
        problems.append("a single routed expert (deepseek_v3 scores expert groups by their top-2 experts)")
    return problems


def groups(f: ModelFacts) -> tuple[int, int]:
    """(n_group, topk_group). HF scores a group by its top-2 experts, so groups of one expert cannot be
    written as they are; with one expert per group the group limit is a no-op (the top-k experts always lie
    in the top-``topk_groups`` ≥ k groups), so it is written as a single group."""
    if f.num_experts // f.num_groups == 1:
        return 1, 1
    return f.num_groups, f.topk_groups


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    first_dense = f.moe_layers[0] if f.moe_layers else f.n_layers
    n_group, topk_group = groups(f) if f.moe_layers else (1, 1)
    return {"hidden_size": f.d_model, "num_hidden_layers": f.n_layers, "num_attention_heads": f.n_heads,
            "num_key_value_heads": f.n_heads, "hidden_act": "silu", "max_position_embeddings": f.max_seq_len,
            "rms_norm_eps": f.norm_eps, "attention_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)},
            # our RoPE is rotate-half, so the rows are written as they are and HF told not to interleave
            "rope_interleave": False,
            **f.mla,
            "intermediate_size": f.d_ff or f.expert_d_ff or f.d_model,  # dense blocks (unused without one)
            "first_k_dense_replace": first_dense,
            "n_routed_experts": f.num_experts, "num_experts_per_tok": f.top_k,
            "moe_intermediate_size": f.expert_d_ff or f.d_ff, "n_shared_experts": f.shared_count,
            "n_group": n_group, "topk_group": topk_group, "norm_topk_prob": f.normalize,
            "routed_scaling_factor": f.routed_scaling_factor, "topk_method": "noaux_tc", "scoring_func": "sigmoid",
            "num_nextn_predict_layers": 0, "output_router_logits": False}
