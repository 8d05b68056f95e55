"""GPT-2 (HF ``model_type: gpt2``), in both directions: LayerNorm with biases, learned absolute positions,
a GELU (tanh) MLP with biases, biases on every attention projection, tied embeddings.

HF GPT-2 stores its linear maps as ``Conv1D`` weights of shape [in, out] (the transpose of
``nn.Linear``) and fuses q, k, v into ``c_attn`` [D, 3D]; the rules transpose and split them (k and v
stay adjacent, which is our fused ``kv_proj`` layout). GPT-2's MLP cannot become SwiGLU experts:
upcycle it with ``moe.upcycle.upcycle_module`` instead. The export writes a model with
``norm: layernorm``, ``position: learned`` and ``mlp: gelu``; the q/k/v/o biases it lacks are written
as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from moe.interop.adapters.llama import MAX_SEQ_LEN_CAP
from moe.interop.adapters.rules import TensorRule, constant, same, split_rows, transposed
from moe.interop.hf_model_facts import ModelFacts

MODEL_TYPES = ("gpt2",)
EXPORT_CLASSES = {"gpt2": "GPT2LMHeadModel"}
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def run_config(cfg: Mapping[str, Any], *, max_seq_len: int | None) -> dict[str, Any]:
    act = cfg.get("activation_function", "gelu_new")
    if act not in GELU_TANH:
        raise ValueError(f"gpt2: activation_function={act!r} is not supported; supported: {GELU_TANH}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            raise ValueError(f"gpt2: {flag}=true is not supported")
    if cfg.get("scale_attn_weights") is False:
        raise ValueError("gpt2: scale_attn_weights=false is not supported")
    d_model, n_positions = int(cfg["n_embd"]), int(cfg["n_positions"])
    return {"model": {
        "_target_": "moe.models.build_decoder",
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": d_model,
        "n_layers": int(cfg["n_layer"]),
        "n_heads": int(cfg["n_head"]),
        "n_kv_heads": int(cfg["n_head"]),
        "d_ff": int(cfg.get("n_inner") or 4 * d_model),
        "max_seq_len": int(max_seq_len) if max_seq_len is not None else min(n_positions, MAX_SEQ_LEN_CAP),
        "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5)),
        "qk_norm": False,
        "attention_bias": True,
        "attention_out_bias": True,
        "norm": "layernorm",
        "position": "learned",
        "mlp": "gelu",
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        "num_experts": 0,
    }}


def _positions(max_seq_len: int) -> TensorRule:
    """wpe holds n_positions rows; we keep the first max_seq_len (the export writes exactly those)."""
    return TensorRule(("pos_embed.weight",), ("transformer.wpe.weight",), to_ours=lambda t: (t[:max_seq_len],),
                      to_hf=lambda t: (t,), exact_hf_shapes=False)


def tensor_rules(model: nn.Module, model_type: str, config_json: Mapping[str, Any]) -> list[TensorRule]:
    D = model.embed.weight.shape[1]
    rules = [same("embed.weight", "transformer.wte.weight"), _positions(model.max_seq_len),
             same("final_norm.weight", "transformer.ln_f.weight"), same("final_norm.bias", "transformer.ln_f.bias")]
    if model.lm_head.weight is not model.embed.weight:
        rules.append(same("lm_head.weight", "lm_head.weight"))
    for i, block in enumerate(model.blocks):
        ours, hf, attn = f"blocks.{i}", f"transformer.h.{i}", block.mixer
        for norm, hf_norm in (("mixer_norm", "ln_1"), ("ffn_norm", "ln_2")):
            rules += [same(f"{ours}.{norm}.{kind}", f"{hf}.{hf_norm}.{kind}") for kind in ("weight", "bias")]
        q_kv = (f"{ours}.mixer.q_proj", f"{ours}.mixer.kv_proj")
        rules.append(split_rows([f"{p}.weight" for p in q_kv], f"{hf}.attn.c_attn.weight", (D, 2 * D), transpose=True))
        rules.append(split_rows([f"{p}.bias" for p in q_kv], f"{hf}.attn.c_attn.bias", (D, 2 * D))
                     if attn.q_proj.bias is not None else constant(f"{hf}.attn.c_attn.bias", (3 * D,)))
        rules.append(transposed(f"{ours}.mixer.o_proj.weight", f"{hf}.attn.c_proj.weight"))
        rules.append(same(f"{ours}.mixer.o_proj.bias", f"{hf}.attn.c_proj.bias")
                     if attn.o_proj.bias is not None else constant(f"{hf}.attn.c_proj.bias", (D,)))
        for ffn, hf_ffn in (("fc", "c_fc"), ("proj", "c_proj")):
            rules += [transposed(f"{ours}.ffn.{ffn}.weight", f"{hf}.mlp.{hf_ffn}.weight"),
                      same(f"{ours}.ffn.{ffn}.bias", f"{hf}.mlp.{hf_ffn}.bias")]
    return rules


def export_problems(arch: str, f: ModelFacts) -> list[str]:
    problems = []
    if f.attention == "mla":
        problems.append("model.attention=mla (multi-head latent attention: only deepseek_v3 has it)")
    if f.router == "sigmoid":
        problems.append("router SigmoidRouter (gpt2 routes by softmax top-k; sigmoid routing is deepseek_v3's)")
    if f.moe_layers:
        problems.append(f"gpt2 is dense but blocks {f.moe_layers} are MoE")
    for name, value, want in (("norm", f.norm, "layernorm"), ("position", f.position, "learned"),
                              ("mlp", f.mlp, "gelu")):
        if value != want:
            problems.append(f"model.{name}={value!r} (gpt2 needs {want!r})")
    if f.n_kv_heads != f.n_heads:
        problems.append(f"n_kv_heads={f.n_kv_heads} < n_heads={f.n_heads} (gpt2 has no grouped-query attention)")
    if f.qk_norm:
        problems.append("qk_norm (gpt2 has none)")
    return problems


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    return {"n_embd": f.d_model, "n_layer": f.n_layers, "n_head": f.n_heads, "n_inner": f.d_ff,
            "n_positions": f.max_seq_len, "activation_function": "gelu_new",  # our GELU is the tanh one
            "layer_norm_epsilon": f.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
