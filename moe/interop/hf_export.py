"""The conversion half of :func:`moe.interop.save_hf`: a moe-lab :class:`DecoderLM` → a Hugging Face
``config.json`` dict and the tensors of its ``model.safetensors``, in the per-expert (v4 legacy) layout
that transformers 5.24 ``save_pretrained`` writes and ``from_pretrained`` merges into fused experts
(transformers' MoE config contract). No I/O and no ``transformers`` import: the config is a plain dict.

Everything is read off the model's modules (widths, heads, norms, biases, routers, shared experts,
balancers; moe/interop/hf_model_facts.py), so an upcycled or hand-edited model exports as it is;
only RoPE's θ, which the model keeps only as a cos/sin table, comes from the run config (and is
checked against that table). Each architecture's adapter (moe/interop/adapters/) says whether it can
hold the model exactly, writes its config.json keys and lists the tensor rules whose ``to_hf`` gives
the tensors — the same rules the import reads with.

Which ``model_type`` (``arch``): when not forced, the first that holds the model exactly, in this order::

    moe-lab model                                         HF model_type   adapter
    dense, RMSNorm+RoPE+SwiGLU, no biases, no qk_norm      llama           llama.py
    dense, ... + attention_bias (q/k/v)                    qwen2           llama.py
    dense, ... + qk_norm head                              qwen3           llama.py
    dense, layernorm + learned + gelu                      gpt2            gpt2.py
    MoE TopKRouter topk_then_softmax, every block MoE,     mixtral         mixtral.py
      no qk_norm, no biases, no shared expert
    MoE TopKRouter, qk_norm head, no shared expert         qwen3_moe       qwen2_moe.py
    MoE TopKRouter, qk_norm full, every block MoE,         olmoe           qwen2_moe.py
      no shared expert
    MoE TopKRouter, no qk_norm (any order, dense blocks,   qwen2_moe       qwen2_moe.py
      q/k/v biases, one shared expert)
    model.attention=mla and/or SigmoidRouter               deepseek_v3     deepseek_v3.py (the only
                                                                           candidate for such a model)
    Mamba blocks + GQA attention blocks (position: none)   jamba           jamba.py
    model.attention=moa, every block MoE                   jetmoe          jetmoe.py
    Mamba-2 blocks + GQA blocks, every block MoE or dense  granitemoehybrid granitemoehybrid.py

Common to every target: ``max_position_embeddings`` = ``max_seq_len``; tied embeddings →
``tie_word_embeddings: true`` and no ``lm_head.weight``; all weights float32; no tokenizer ids (moe-lab
writes its tokenizer files separately). Refused by every target (ValueError from hf_model_facts.py,
naming the option): routers other than TopKRouter and SigmoidRouter (HF MoEs are softmax or sigmoid
token choice), a non-zero ``selection_bias_E`` on a TopKRouter (aux_free's; HF softmax routers have no
bias), ``capacity_factor`` / ``eval_capacity_factor`` (HF is dropless), router jitter, and per-layer
differences a HF config cannot express. Balancers are training-only: ``switch_aux`` becomes
``router_aux_loss_coef`` (mixtral.py); z_loss, seq_aux, importance, remoe_l1 and the others have no HF
counterpart and are not exported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe.interop.adapters import ARCHITECTURES, BY_MODEL_TYPE
from moe.interop.hf_model_facts import ModelFacts, model_facts
from moe.models.attention import rope_cos_sin
from moe.models.decoder import DecoderLM
from moe.models.mla import MLAttention

DENSE_TARGETS = ("llama", "qwen2", "qwen3", "gpt2")
MOE_TARGETS = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe")  # also the order tried when arch is not forced


def arch_problems(arch: str, f: ModelFacts) -> list[str]:
    """Why ``arch`` cannot hold this model exactly (empty: it can)."""
    if arch not in ARCHITECTURES:
        return [f"arch={arch!r} is not one of {', '.join(ARCHITECTURES)}"]
    problems = []
    if arch != "jetmoe":  # what only JetMoE has
        if f.attention == "moa":
            problems.append("model.attention=moa (mixture of attention heads: only jetmoe has it)")
        if f.moe_bias:
            problems.append("model.moe_output_bias (a bias on the MoE output: only jetmoe has it)")
        if f.final_norm_eps is not None:
            problems.append(f"model.final_norm_eps={f.final_norm_eps} differs from norm_eps={f.norm_eps} "
                            f"(only jetmoe's norms differ so)")
    if arch != "granitemoehybrid":
        for name in ("embedding_multiplier", "logits_scaling"):
            if getattr(f, name) != 1.0:
                problems.append(f"model.{name}={getattr(f, name)} (only granitemoehybrid has it)")
    return problems + BY_MODEL_TYPE[arch].export_problems(arch, f)


def choose_arch(f: ModelFacts, arch: str | None = None) -> str:
    """``arch`` if it holds the model exactly, else the first target that does; ValueError otherwise."""
    if arch is not None:
        problems = arch_problems(arch, f)
        if problems:
            raise ValueError(f"arch={arch!r} cannot represent this model: {'; '.join(problems)}")
        return arch
    if f.attention == "mla" or f.router == "sigmoid":
        candidates: tuple[str, ...] = ("deepseek_v3",)  # no other HF model has MLA or sigmoid routing
    elif f.hybrid:
        candidates = ("jamba", "granitemoehybrid")  # HF's Mamba-1 and Mamba-2 hybrids
    elif f.attention == "moa":
        candidates = ("jetmoe",)  # the one HF model with a mixture of attention heads
    else:
        candidates = MOE_TARGETS if f.moe_layers else DENSE_TARGETS
    reasons = {}
    for candidate in candidates:
        reasons[candidate] = arch_problems(candidate, f)
        if not reasons[candidate]:
            return candidate
    detail = " | ".join(f"{c}: {'; '.join(r)}" for c, r in reasons.items())
    raise ValueError(f"no Hugging Face architecture represents this model exactly — {detail}")


def hf_config(arch: str, f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    """The ``config.json`` of ``arch`` for this model (every field the forward depends on is explicit, so
    class defaults such as Qwen3's head_dim=128 or a sliding window of 4096 never apply)."""
    common = {"architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": f.vocab_size,
              "tie_word_embeddings": f.tied, "dtype": "float32", "use_cache": True,
              # moe-lab knows no tokenizer; null instead of the class defaults (e.g. GPT-2's 50256)
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {**common, **BY_MODEL_TYPE[arch].hf_config(arch, f, rope_theta)}


def hf_tensors(arch: str, model: DecoderLM, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """HF tensor name → float32, contiguous, unshared CPU tensor (what safetensors.save_file accepts),
    from the adapter's tensor rules."""
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for rule in BY_MODEL_TYPE[arch].tensor_rules(model, arch, config):
            tensors.update(zip(rule.hf, rule.to_hf(*(state[name] for name in rule.ours)), strict=True))
    return {name: value.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)
            for name, value in tensors.items()}


def check_rope_theta(model: DecoderLM, rope_theta: float) -> None:
    """The model keeps θ only as its cos table; a config whose θ does not rebuild that table is wrong."""
    attn = next(b.mixer for b in model.blocks if hasattr(b.mixer, "rope_cos_SR"))  # the first attention block
    rotary_dim = attn.rope_dim if isinstance(attn, MLAttention) else attn.head_dim
    cos_SR, _ = rope_cos_sin(attn.max_seq_len, rotary_dim, float(rope_theta))
    table = attn.rope_cos_SR.detach().to("cpu", torch.float32)
    atol = 1e-5 if attn.rope_cos_SR.dtype == torch.float32 else 1e-2
    if not torch.allclose(table, cos_SR, atol=atol):
        raise ValueError(f"rope_theta={rope_theta} from the config does not match the model's RoPE table; "
                         f"pass the config the model was built from")


def export_hf(model: nn.Module, *, rope_theta: float | None, arch: str | None = None
              ) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(model_type, config.json dict, safetensors tensors) for ``model``; ``rope_theta`` is needed for
    RoPE models. Raises ValueError when no (or not the forced) HF architecture holds the model exactly."""
    facts = model_facts(model)
    arch = choose_arch(facts, arch)
    if arch not in ("gpt2", "jamba") and facts.position == "rope":  # learned positions, or none
        if rope_theta is None:
            raise ValueError("a RoPE model needs rope_theta: pass config= (the run config the model was built from)")
        check_rope_theta(model, rope_theta)
    config = hf_config(arch, facts, rope_theta)
    return arch, config, hf_tensors(arch, model, config)
