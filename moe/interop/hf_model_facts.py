"""What :func:`moe.interop.save_hf` needs to know about a moe-lab model, read off its modules
(widths, heads, norms, biases, attention kind, routers, experts, shared experts, balancers), with a
ValueError for anything no Hugging Face model has. Which HF format then holds it: hf_export.py and the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from moe.balance.switch_aux import SwitchAuxLoss
from moe.experts.swiglu import SwiGLUExperts
from moe.layer import MoELayer
from moe.models.attention import Attention
from moe.models.decoder import DecoderLM
from moe.models.ffn import GELUMLP, SwiGLU
from moe.models.mamba import MambaMixer
from moe.models.mamba2 import Mamba2Mixer
from moe.models.mla import MLAttention
from moe.models.moa import MixtureOfAttentionHeads
from moe.routers.sigmoid import SigmoidRouter
from moe.routers.top_k import TopKRouter
from moe.types import TopKGated, supports

EXPORTABLE_ROUTERS = ("TopKRouter (router=top_k) → mixtral, qwen2_moe, qwen3_moe, olmoe; "
                      "SigmoidRouter (router=sigmoid) → deepseek_v3")
MLA_NORM_EPS = 1e-6  # HF DeepseekV3's q_a_layernorm / kv_a_layernorm always use the RMSNorm default


@dataclass
class ModelFacts:
    """What the export needs to know about a model, read off its modules."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    norm_eps: float
    norm: str                  # rmsnorm | layernorm
    position: str              # rope | learned
    mlp: str                   # swiglu | gelu (of the dense blocks)
    qk_norm: str | None        # None | head | full
    qkv_bias: bool
    out_bias: bool
    tied: bool
    d_ff: int | None           # dense blocks' FFN width (None: no dense block)
    moe_layers: list[int] = field(default_factory=list)
    num_experts: int = 0
    top_k: int = 0
    expert_d_ff: int = 0
    order: str = ""
    shared_d_ff: int = 0       # the (summed) shared expert width, 0 = none
    shared_gate: bool = False
    aux_coeff: float = 0.0     # switch_aux coefficient (ours: 1 at balance)
    shared_count: int = 0      # SharedExpert.num_experts (DeepSeek's n_shared_experts)
    router: str = ""           # top_k | sigmoid (MoE models)
    num_groups: int = 1        # SigmoidRouter's group-limited selection, normalisation and scale
    topk_groups: int = 1
    normalize: bool = True
    routed_scaling_factor: float = 1.0
    attention: str = "gqa"     # gqa | mla | moa
    mla: dict[str, Any] = field(default_factory=dict)  # q_lora_rank, kv_lora_rank, qk_{nope,rope}_head_dim, v_head_dim
    # Mamba hybrids: attention_layers (block indices) and the Mamba mixers' options (MambaMixer's names)
    hybrid: dict[str, Any] = field(default_factory=dict)
    # mixture of attention heads: heads, head_dim, num_experts, top_k, order, bias (MoA's output bias)
    moa: dict[str, Any] = field(default_factory=dict)
    moe_bias: bool = False     # an output bias on the MoE FFNs (MoELayer.bias_D)
    embedding_multiplier: float = 1.0  # Granite's constants (DecoderLM's)
    logits_scaling: float = 1.0
    final_norm_eps: float | None = None  # the final norm's eps where it differs from norm_eps


def _single(values: set, what: str) -> Any:
    """The one value every layer agrees on; HF configs hold a single value per field."""
    if len(values) != 1:
        raise ValueError(f"{what} differs between layers ({sorted(values, key=str)}); a HF config holds one value")
    return next(iter(values))


def _check_router(router: nn.Module, i: int) -> None:
    if type(router) is SigmoidRouter:  # → deepseek_v3; its selection_bias_E is e_score_correction_bias
        return
    if type(router) is not TopKRouter:
        raise ValueError(f"block {i}: router {type(router).__name__} has no Hugging Face equivalent (HF MoEs route "
                         f"by softmax top-k token choice); exportable routers: {EXPORTABLE_ROUTERS}")
    if router.jitter_eps:
        raise ValueError(f"block {i}: router.jitter_eps={router.jitter_eps} has no HF equivalent (Mixtral's "
                         f"router_jitter_noise also scales the experts' input); set router.jitter_eps=0")
    if router.routed_scaling_factor != 1.0:
        raise ValueError(f"block {i}: router.routed_scaling_factor={router.routed_scaling_factor} has no HF "
                         f"equivalent in the softmax top-k MoEs (only deepseek_v3's sigmoid router has one)")
    if torch.any(router.selection_bias_E != 0):
        raise ValueError(f"block {i}: the router's selection_bias_E is non-zero (aux_free balancing); HF softmax "
                         f"routers have no selection bias, so the exported model would route differently (only "
                         f"deepseek_v3's SigmoidRouter has one)")


def model_facts(model: nn.Module) -> ModelFacts:
    """Read the architecture off a :class:`DecoderLM`. Raises ValueError for what no HF model has."""
    if not isinstance(model, DecoderLM):
        raise ValueError(f"save_hf exports a moe.models.DecoderLM, got {type(model).__name__}")
    blocks = list(model.blocks)
    if any(b.mixer_input is not None for b in blocks):
        raise ValueError("model.shared_attention_every is set: a shared attention block (Zamba) has no Hugging Face "
                         "export here (Zamba's HF classes are dense and scale attention by (head_dim/2)^-0.5)")
    if any(isinstance(b.mixer, (MambaMixer, Mamba2Mixer)) for b in blocks):
        facts = _finish_facts(model, _hybrid_facts(model))
    else:
        facts = _attention_model_facts(model)
    facts.embedding_multiplier, facts.logits_scaling = model.embedding_multiplier, model.logits_scaling
    return facts


def _attention_model_facts(model: DecoderLM) -> ModelFacts:
    """A model whose every block attends (one attention kind)."""
    blocks = list(model.blocks)
    kinds = _single({type(b.mixer) for b in blocks}, "the attention type")
    if kinds is MixtureOfAttentionHeads:
        return _finish_facts(model, _moa_facts(model))
    if kinds not in (Attention, MLAttention):
        raise ValueError(f"attention {kinds.__name__} has no Hugging Face equivalent")
    if kinds is MLAttention:
        return _mla_model_facts(model)
    return _finish_facts(model, _gqa_facts(model))


def _latent_norms(model: DecoderLM) -> list[nn.Module]:
    """MLA's q_a_norm / kv_a_norm (their ε is fixed, not the model's norm_eps)."""
    return [m for b in model.blocks if isinstance(b.mixer, MLAttention)
            for m in (b.mixer.q_a_norm, b.mixer.kv_a_norm) if m is not None]


def _gqa_facts(model: DecoderLM, blocks: list[nn.Module] | None = None) -> ModelFacts:
    """The attention half, from ``blocks`` (default: all; a hybrid passes its attention blocks)."""
    blocks = list(model.blocks) if blocks is None else blocks
    attn = blocks[0].mixer
    norms = [m for m in model.modules() if isinstance(m, (nn.RMSNorm, nn.LayerNorm))]
    norm_kinds = {type(m).__name__ for b in blocks for m in (b.mixer_norm, b.ffn_norm)} | {
        type(model.final_norm).__name__}
    qk = {None if b.mixer.q_norm is None else ("full" if b.mixer.qk_norm_full else "head") for b in blocks}
    facts = ModelFacts(
        vocab_size=model.embed.weight.shape[0], d_model=model.embed.weight.shape[1], n_layers=len(blocks),
        n_heads=attn.n_heads, n_kv_heads=attn.n_kv_heads, head_dim=attn.head_dim, max_seq_len=model.max_seq_len,
        norm_eps=float(_single({m.eps for m in norms}, "the norm eps")),
        norm="layernorm" if _single(norm_kinds, "the norm type") == "LayerNorm" else "rmsnorm",
        position="learned" if model.pos_embed is not None else "rope",
        mlp="swiglu", qk_norm=_single(qk, "qk_norm"),
        qkv_bias=_single({b.mixer.q_proj.bias is not None for b in blocks}, "attention_bias"),
        out_bias=_single({b.mixer.o_proj.bias is not None for b in blocks}, "attention_out_bias"),
        tied=model.lm_head.weight is model.embed.weight, d_ff=None)
    if facts.position == "rope" and not _single({b.mixer.rope for b in blocks}, "rope"):
        facts.position = "none"  # only Jamba's attention has neither (the adapters refuse it otherwise)
    return facts


MAMBA_OPTIONS = ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "proj_bias", "inner_norms")
MAMBA2_OPTIONS = ("d_state", "d_conv", "expand", "head_dim", "n_groups", "conv_bias", "proj_bias")


def _mamba_options(mixer: MambaMixer | Mamba2Mixer) -> dict[str, Any]:
    expand = mixer.d_inner // mixer.in_proj.in_features
    conv_bias, proj_bias = mixer.conv1d.bias is not None, mixer.in_proj.bias is not None
    if isinstance(mixer, Mamba2Mixer):
        values = (mixer.d_state, mixer.conv1d.kernel_size[0], expand, mixer.head_dim, mixer.n_groups, conv_bias,
                  proj_bias)
        return {"ssm": "mamba2", **dict(zip(MAMBA2_OPTIONS, values, strict=True))}
    values = (mixer.d_state, mixer.conv1d.kernel_size[0], expand, mixer.dt_rank, conv_bias, proj_bias,
              mixer.inner_norms is not None)
    return {"ssm": "mamba", **dict(zip(MAMBA_OPTIONS, values, strict=True))}


def _hybrid_facts(model: DecoderLM) -> ModelFacts:
    """A Mamba hybrid: GQA attention blocks (at least one) and Mamba-1 or Mamba-2 blocks of one configuration."""
    blocks = list(model.blocks)
    attention = [i for i, b in enumerate(blocks) if not isinstance(b.mixer, (MambaMixer, Mamba2Mixer))]
    if not attention or not all(isinstance(blocks[i].mixer, Attention) for i in attention):
        raise ValueError("a Mamba model exports only as Jamba or GraniteMoeHybrid: its other blocks must be GQA "
                         "attention (at least one; model.attention_every / attention_offset or mixer_layers)")
    facts = _gqa_facts(model, [blocks[i] for i in attention])
    facts.n_layers = len(blocks)  # _gqa_facts counted the attention blocks
    options = _single({tuple(_mamba_options(b.mixer).items()) for b in blocks
                       if isinstance(b.mixer, (MambaMixer, Mamba2Mixer))}, "the Mamba mixers' options")
    facts.hybrid = {"attention_layers": attention, **dict(options)}
    return facts


def _moa_facts(model: DecoderLM) -> ModelFacts:
    """Mixture of attention heads in every block (JetMoE): RMSNorm, RoPE, routed by TopKRouters. The final
    norm's eps may differ from the blocks' (JetMoE's block norms keep 1e-6)."""
    blocks = list(model.blocks)
    mixers = [b.mixer for b in blocks]
    for i, mixer in enumerate(mixers):
        _check_router(mixer.router, i)
    block_norms = [m for b in blocks for m in (b.mixer_norm, b.ffn_norm) if m is not None]
    norm_kinds = {type(m).__name__ for m in [*block_norms, model.final_norm]}
    heads = _single({m.heads for m in mixers}, "model.moa_heads")
    top_k = _single({m.router.top_k for m in mixers}, "the attention router's top_k")
    norm_eps = float(_single({m.eps for m in block_norms}, "the block norms' eps"))
    return ModelFacts(
        vocab_size=model.embed.weight.shape[0], d_model=model.embed.weight.shape[1], n_layers=len(blocks),
        n_heads=heads * top_k, n_kv_heads=heads, head_dim=_single({m.head_dim for m in mixers}, "model.moa_head_dim"),
        max_seq_len=model.max_seq_len, norm_eps=norm_eps,
        norm="layernorm" if _single(norm_kinds, "the norm type") == "LayerNorm" else "rmsnorm",
        position="learned" if model.pos_embed is not None else
        ("rope" if _single({m.rope for m in mixers}, "rope") else "none"),
        mlp="swiglu", qk_norm=None, qkv_bias=False, out_bias=False, tied=model.lm_head.weight is model.embed.weight,
        d_ff=None, attention="moa",
        final_norm_eps=None if model.final_norm.eps == norm_eps else float(model.final_norm.eps),
        moa={"heads": heads, "top_k": top_k,
             "num_experts": _single({m.experts.num_experts for m in mixers}, "model.moa_num_experts"),
             "order": _single({m.router.order for m in mixers}, "the attention router's order"),
             "bias": _single({m.bias_D is not None for m in mixers}, "model.moe_output_bias")})


def _mla_model_facts(model: DecoderLM) -> ModelFacts:
    """Multi-head latent attention (only deepseek_v3 has it): no q/k norm, biases or learned positions."""
    blocks = list(model.blocks)
    latent = _latent_norms(model)
    latent_ids = {id(m) for m in latent}
    norms = [m for m in model.modules() if isinstance(m, (nn.RMSNorm, nn.LayerNorm)) and id(m) not in latent_ids]
    for m in latent:
        if m.eps != MLA_NORM_EPS:
            raise ValueError(f"an MLA latent RMSNorm has eps={m.eps}; HF DeepSeek-V3 fixes it at {MLA_NORM_EPS}")
    norm_kinds = {type(b.mixer_norm).__name__ for b in blocks} | {type(b.ffn_norm).__name__ for b in blocks} | {
        type(model.final_norm).__name__}
    sizes = {(None if a.q_proj is not None else a.q_a_proj.out_features, a.kv_lora_rank, a.nope_dim, a.rope_dim,
              a.v_dim) for a in (b.mixer for b in blocks)}
    q_lora_rank, kv_lora_rank, nope, rope, v = _single(sizes, "the MLA sizes")
    attn = blocks[0].mixer
    return _finish_facts(model, ModelFacts(
        vocab_size=model.embed.weight.shape[0], d_model=model.embed.weight.shape[1], n_layers=len(blocks),
        n_heads=_single({b.mixer.n_heads for b in blocks}, "n_heads"), n_kv_heads=attn.n_heads,
        head_dim=rope, max_seq_len=model.max_seq_len,
        norm_eps=float(_single({m.eps for m in norms}, "the norm eps")),
        norm="layernorm" if _single(norm_kinds, "the norm type") == "LayerNorm" else "rmsnorm",
        position="learned" if model.pos_embed is not None else "rope", mlp="swiglu", qk_norm=None,
        qkv_bias=False, out_bias=False, tied=model.lm_head.weight is model.embed.weight, d_ff=None,
        attention="mla", mla={"q_lora_rank": q_lora_rank, "kv_lora_rank": kv_lora_rank, "qk_nope_head_dim": nope,
                              "qk_rope_head_dim": rope, "v_head_dim": v}))


def _finish_facts(model: DecoderLM, facts: ModelFacts) -> ModelFacts:
    """The FFN half (dense widths, MoE routers, experts, shared experts, balancers)."""
    blocks = list(model.blocks)
    dense = [b.ffn for b in blocks if not isinstance(b.ffn, MoELayer)]
    if dense:
        for ffn in dense:
            if not isinstance(ffn, (SwiGLU, GELUMLP)):
                raise ValueError(f"dense FFN {type(ffn).__name__} has no HF equivalent (SwiGLU or GELU MLP)")
        facts.mlp = _single({"gelu" if isinstance(f, GELUMLP) else "swiglu" for f in dense}, "model.mlp")
        facts.d_ff = _single({(f.fc if isinstance(f, GELUMLP) else f.gate).out_features for f in dense},
                             "the dense FFN width d_ff")

    moe = [(i, b.ffn) for i, b in enumerate(blocks) if isinstance(b.ffn, MoELayer)]
    if not moe:
        return facts
    facts.moe_layers = [i for i, _ in moe]
    facts.moe_bias = _single({layer.bias_D is not None for _, layer in moe}, "model.moe_output_bias")
    for i, layer in moe:
        _check_router(layer.router, i)
        if layer.capacity_factor is not None or layer.eval_capacity_factor is not None:
            raise ValueError(f"block {i}: model.capacity_factor={layer.capacity_factor} / eval_capacity_factor="
                             f"{layer.eval_capacity_factor}: HF MoEs are dropless; set both to null to export")
        if not isinstance(layer.experts, SwiGLUExperts) or layer.experts.activation != "swiglu":
            raise ValueError(f"block {i}: experts {layer.experts!r} are not SwiGLU experts (no HF MoE has GELU ones)")
        shared = layer.shared_expert
        if shared is not None and not isinstance(shared.ffn, SwiGLU):
            raise ValueError(f"block {i}: shared expert {type(shared.ffn).__name__} is not SwiGLU")
    facts.num_experts = _single({layer.experts.num_experts for _, layer in moe}, "num_experts")
    facts.top_k = _single({layer.router.top_k for _, layer in moe}, "router.top_k")
    facts.expert_d_ff = _single({layer.experts.d_ff for _, layer in moe}, "the expert width expert_d_ff")
    facts.order = _single({layer.router.order if supports(layer.router, TopKGated) else "" for _, layer in moe},
                          "router.order")
    facts.shared_d_ff = _single({0 if layer.shared_expert is None else layer.shared_expert.ffn.gate.out_features
                                 for _, layer in moe}, "the shared expert")
    facts.shared_gate = _single({layer.shared_expert is not None and layer.shared_expert.gate is not None
                                 for _, layer in moe}, "shared_expert_gate")
    facts.shared_count = _single({0 if layer.shared_expert is None else layer.shared_expert.num_experts
                                  for _, layer in moe}, "num_shared_experts")
    routers = [layer.router for _, layer in moe]
    facts.router = _single({"sigmoid" if isinstance(r, SigmoidRouter) else "top_k" for r in routers}, "the router")
    if facts.router == "sigmoid":
        facts.num_groups = _single({r.num_groups for r in routers}, "router.num_groups")
        facts.topk_groups = _single({r.topk_groups for r in routers}, "router.topk_groups")
        facts.normalize = _single({r.normalize for r in routers}, "router.normalize")
        facts.routed_scaling_factor = _single({r.routed_scaling_factor for r in routers},
                                              "router.routed_scaling_factor")
    coeffs = set()
    for _, layer in moe:
        switch = [b.coeff for b in layer.balancers.values() if isinstance(b, SwitchAuxLoss)]
        if len(switch) > 1:
            raise ValueError("more than one switch_aux balancer per layer; HF has a single router_aux_loss_coef")
        coeffs.add(switch[0] if switch else 0.0)
    facts.aux_coeff = _single(coeffs, "the switch_aux coefficient")
    return facts
