"""GPT-2 (HF ``model_type: gpt2``) as a dense moe-lab backbone: LayerNorm with biases, learned absolute
positions, a GELU (tanh) MLP with biases, biases on every attention projection, tied embeddings.

HF GPT-2 stores its linear maps as ``Conv1D`` weights of shape [in, out] (the transpose of
``nn.Linear``) and fuses q, k, v into ``c_attn`` [D, 3D]; the map below transposes and splits them
(k and v stay adjacent, which is our fused ``kv_proj`` layout). GPT-2's MLP cannot become SwiGLU
experts: upcycle it with ``moe.upcycle.upcycle_module`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def gpt2_model_config(cfg: Mapping[str, Any], *, seq_len_cap: int, max_seq_len: int | None) -> dict[str, Any]:
    act = cfg.get("activation_function", "gelu_new")
    if act not in GELU_TANH:
        raise ValueError(f"gpt2: activation_function={act!r} is not supported; supported: {GELU_TANH}")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            raise ValueError(f"gpt2: {flag}=true is not supported")
    if cfg.get("scale_attn_weights") is False:
        raise ValueError("gpt2: scale_attn_weights=false is not supported")
    d_model, n_positions = int(cfg["n_embd"]), int(cfg["n_positions"])
    return {
        "_target_": "moe.models.build_decoder",
        "vocab_size": int(cfg["vocab_size"]),
        "d_model": d_model,
        "n_layers": int(cfg["n_layer"]),
        "n_heads": int(cfg["n_head"]),
        "n_kv_heads": int(cfg["n_head"]),
        "d_ff": int(cfg.get("n_inner") or 4 * d_model),
        "max_seq_len": int(max_seq_len) if max_seq_len is not None else min(n_positions, seq_len_cap),
        "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5)),
        "qk_norm": False,
        "attention_bias": True,
        "attention_out_bias": True,
        "norm": "layernorm",
        "position": "learned",
        "mlp": "gelu",
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        "num_experts": 0,
    }


def gpt2_tensor_map(model_cfg: Mapping[str, Any]) -> dict[str, tuple[list[str], Callable[..., torch.Tensor]]]:
    """Our parameter name → (the HF tensors it comes from, how to combine them)."""
    D = model_cfg["d_model"]
    same = lambda t: t  # noqa: E731
    conv1d = lambda t: t.T  # [in, out] → nn.Linear's [out, in]  # noqa: E731
    names: dict[str, tuple[list[str], Callable[..., torch.Tensor]]] = {
        "embed.weight": (["transformer.wte.weight"], same),
        "pos_embed.weight": (["transformer.wpe.weight"], lambda t: t[: model_cfg["max_seq_len"]]),
        "final_norm.weight": (["transformer.ln_f.weight"], same),
        "final_norm.bias": (["transformer.ln_f.bias"], same),
    }
    if not model_cfg["tie_embeddings"]:
        names["lm_head.weight"] = (["lm_head.weight"], same)
    for i in range(model_cfg["n_layers"]):
        hf, ours = f"transformer.h.{i}", f"blocks.{i}"
        for norm, hf_norm in (("mixer_norm", "ln_1"), ("ffn_norm", "ln_2")):
            for kind in ("weight", "bias"):
                names[f"{ours}.{norm}.{kind}"] = ([f"{hf}.{hf_norm}.{kind}"], same)
        names[f"{ours}.mixer.q_proj.weight"] = ([f"{hf}.attn.c_attn.weight"], lambda t: t[:, :D].T)
        names[f"{ours}.mixer.kv_proj.weight"] = ([f"{hf}.attn.c_attn.weight"], lambda t: t[:, D:].T)
        names[f"{ours}.mixer.q_proj.bias"] = ([f"{hf}.attn.c_attn.bias"], lambda t: t[:D])
        names[f"{ours}.mixer.kv_proj.bias"] = ([f"{hf}.attn.c_attn.bias"], lambda t: t[D:])
        names[f"{ours}.mixer.o_proj.weight"] = ([f"{hf}.attn.c_proj.weight"], conv1d)
        names[f"{ours}.mixer.o_proj.bias"] = ([f"{hf}.attn.c_proj.bias"], same)
        names[f"{ours}.ffn.fc.weight"] = ([f"{hf}.mlp.c_fc.weight"], conv1d)
        names[f"{ours}.ffn.fc.bias"] = ([f"{hf}.mlp.c_fc.bias"], same)
        names[f"{ours}.ffn.proj.weight"] = ([f"{hf}.mlp.c_proj.weight"], conv1d)
        names[f"{ours}.ffn.proj.bias"] = ([f"{hf}.mlp.c_proj.bias"], same)
    return names
