"""JetMoE (HF ``model_type: jetmoe``; Shen et al. 2404.07413), in both directions: every block a mixture of
attention heads (MoA) and an MoE FFN, each with its own router over the same ``num_local_experts``
experts and ``num_experts_per_tok``.

config.json → our nodes:
- the attention is our ``moa`` mixer: ``num_key_value_heads`` heads (``moa_heads``) of ``kv_channels``
  (``moa_head_dim``) per attention expert, keys and values shared, RoPE (``rope_parameters``);
  ``num_attention_heads`` (= heads × k) is derived;
- the FFN an MoE of SwiGLU experts of ``intermediate_size`` (``activation_function: silu``);
- both routers are softmax over the top-k logits, i.e. our ``TopKRouter`` with ``order: topk_then_softmax``
  (the run's one router config serves both layers); both layers add one output bias (``moe_output_bias``);
- ``aux_loss_coef`` (HF convention: k at balance) becomes ``switch_aux`` as Mixtral's coefficient does;
- the block norms use RMSNorm's default ε = 1e-6 whatever the config says (JetMoeDecoderLayer builds
  them without ``rms_norm_eps``); only the final norm reads ``rms_norm_eps`` (``final_norm_eps``).

On disk: ``self_attention.experts.input_linear.weight`` [E, h·d, D] (our ``w_q_EDX`` transposed),
``.output_linear.weight`` [E, D, h·d] (``w_o_EXD``), ``.router.layer.weight`` [E, D], ``.bias`` [D] and
``self_attention.kv_proj.weight`` (keys then values, as ours); ``mlp.input_linear.weight`` [E, 2F, D] holds
each expert's gate rows then its up rows, ``mlp.output_linear.weight`` [E, D, F], ``mlp.router.layer.weight``,
``mlp.bias``; block norms ``input_layernorm`` / ``post_attention_layernorm``, the final one ``model.norm``.

Export: a model whose every block is ``moa`` + MoE with one expert count and one k for both, TopKRouters in
``topk_then_softmax`` order, RoPE, RMSNorm, SwiGLU experts, no shared expert and block norms with ε = 1e-6.
A model without output biases exports with zero biases (which add exactly nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.interop.adapters.llama import MAX_SEQ_LEN_CAP, rope_theta
from moe.interop.adapters.mixtral import GROUPED_EXPERTS
from moe.interop.adapters.rules import TensorRule, constant, fused_gate_up, same
from moe.interop.hf_model_facts import ModelFacts

MODEL_TYPES = ("jetmoe",)
EXPORT_CLASSES = {"jetmoe": "JetMoeForCausalLM"}
BLOCK_NORM_EPS = 1e-6  # JetMoeRMSNorm's default, which JetMoeDecoderLayer's two norms keep


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    act = cfg.get("activation_function", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"jetmoe: activation_function={act!r} is not supported (only silu, as SwiGLU)")
    E, k, heads = int(cfg.get("num_local_experts", 8)), int(cfg.get("num_experts_per_tok", 2)), \
        int(cfg.get("num_key_value_heads", 16))
    max_pos = int(cfg.get("max_position_embeddings", 4096))
    model = {
        "_target_": "moe.models.build_decoder", "vocab_size": int(cfg["vocab_size"]),
        "d_model": int(cfg["hidden_size"]), "n_layers": int(cfg["num_hidden_layers"]),
        "n_heads": heads * k, "n_kv_heads": heads, "d_ff": int(cfg["intermediate_size"]),
        "max_seq_len": int(max_seq_len) if max_seq_len is not None else min(max_pos, MAX_SEQ_LEN_CAP),
        "rope_theta": rope_theta(cfg), "norm_eps": BLOCK_NORM_EPS,
        "final_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        "attention": "moa", "moa_heads": heads, "moa_head_dim": int(cfg.get("kv_channels", 128)),
        "moa_num_experts": None, "num_experts": E, "expert_d_ff": int(cfg["intermediate_size"]),
        "num_shared_experts": 0, "moe_output_bias": True, "moe_every": 1, "moe_first_dense": 0, "moe_layers": None,
    }
    coeff = float(cfg.get("aux_loss_coef") or 0.0)
    balance = {"switch_aux": {"_target_": "moe.balance.SwitchAuxLoss", "_partial_": True, "coeff": k * coeff,
                              "scope": "micro"}} if coeff else {}
    return {"model": model,
            "router": {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": k,
                       "order": "topk_then_softmax"},
            "experts": GROUPED_EXPERTS, "balance": balance}


def _stack_transposed(ours: str, hf: str) -> TensorRule:
    """Our [E, in, out] stack ↔ HF's [E, out, in] (JetMoeParallelExperts' layout)."""
    return TensorRule((ours,), (hf,), to_ours=lambda t: (t.transpose(1, 2),), to_hf=lambda t: (t.transpose(1, 2),))


def _bias_rule(layer: nn.Module, ours: str, hf: str) -> TensorRule:
    """The layer's output bias, or zeros for a model without one (export only)."""
    return same(f"{ours}.bias_D", hf) if layer.bias_D is not None else constant(hf, (layer.router.d_model,))


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    rules = [same("embed.weight", "model.embed_tokens.weight"), same("final_norm.weight", "model.norm.weight")]
    if model.lm_head.weight is not model.embed.weight:
        rules.append(same("lm_head.weight", "lm_head.weight"))
    for i, block in enumerate(model.blocks):
        ours, hf = f"blocks.{i}", f"model.layers.{i}"
        attention, mlp = f"{hf}.self_attention", f"{hf}.mlp"
        rules += [same(f"{ours}.mixer_norm.weight", f"{hf}.input_layernorm.weight"),
                  same(f"{ours}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight"),
                  same(f"{ours}.mixer.router.scorer.weight_ED", f"{attention}.experts.router.layer.weight"),
                  _stack_transposed(f"{ours}.mixer.experts.w_q_EDX", f"{attention}.experts.input_linear.weight"),
                  _stack_transposed(f"{ours}.mixer.experts.w_o_EXD", f"{attention}.experts.output_linear.weight"),
                  _bias_rule(block.mixer, f"{ours}.mixer", f"{attention}.experts.bias"),
                  same(f"{ours}.mixer.kv_proj.weight", f"{attention}.kv_proj.weight"),
                  same(f"{ours}.ffn.router.scorer.weight_ED", f"{mlp}.router.layer.weight"),
                  fused_gate_up(f"{ours}.ffn.experts", f"{mlp}.input_linear.weight"),
                  _stack_transposed(f"{ours}.ffn.experts.w_down_EFD", f"{mlp}.output_linear.weight"),
                  _bias_rule(block.ffn, f"{ours}.ffn", f"{mlp}.bias")]
    return rules


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    if f.attention != "moa":
        return [f"model.attention={f.attention} (jetmoe's attention is a mixture of attention heads: moa)"]
    problems = []
    if f.moe_layers != list(range(f.n_layers)):
        problems.append(f"MoE blocks {f.moe_layers} (jetmoe makes every block MoE)")
    for name, value, want in (("norm", f.norm, "rmsnorm"), ("position", f.position, "rope"),
                              ("norm_eps", f.norm_eps, BLOCK_NORM_EPS)):
        if value != want:
            problems.append(f"model.{name}={value!r} (jetmoe has {want!r})")
    if f.moe_layers:
        moa = f.moa
        if (moa["num_experts"], moa["top_k"]) != (f.num_experts, f.top_k):
            problems.append(f"attention experts {moa['num_experts']} top-{moa['top_k']} vs FFN experts "
                            f"{f.num_experts} top-{f.top_k} (jetmoe has one num_local_experts and one k)")
        for what, order in (("attention", moa["order"]), ("FFN", f.order)):
            if order != "topk_then_softmax":
                problems.append(f"the {what} router's order {order} (jetmoe's softmax runs over the top-k logits)")
        if moa["bias"] != f.moe_bias:
            problems.append("an output bias on only one of the attention and FFN layers")
        if f.shared_d_ff:
            problems.append("a shared expert (jetmoe has none)")
    return problems


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    return {"hidden_size": f.d_model, "num_hidden_layers": f.n_layers, "num_key_value_heads": f.n_kv_heads,
            "kv_channels": f.head_dim, "intermediate_size": f.expert_d_ff, "max_position_embeddings": f.max_seq_len,
            "activation_function": "silu", "num_local_experts": f.num_experts, "num_experts_per_tok": f.top_k,
            "aux_loss_coef": f.aux_coeff / f.top_k, "output_router_logits": False,
            "rms_norm_eps": f.norm_eps if f.final_norm_eps is None else f.final_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)}, "attention_dropout": 0.0}
