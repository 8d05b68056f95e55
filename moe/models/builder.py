"""The model builder: validate a model config and wire a :class:`moe.models.decoder.DecoderLM` from
its parts (torchtune's component builders). ``build_decoder`` is the ``_target_`` of every model
config; its keyword arguments are the ``model`` node's keys, plus the ``router``, ``experts`` and
``balancers`` factories that :func:`moe.models.build.build_model` instantiates from the run config.

Every block is (token mixer, FFN). The layer plan names both per block: the mixer from
``model.attention`` (``gqa``, ``mla``, ``moa``, ``mamba`` or ``mamba2``: Mamba before every FFN or MoE, as
BlackMamba pairs them; a new mixer is one entry in ``MIXERS``, built with the options and its block index),
the FFN from the layer pattern (moe/models/pattern.py): ``moe`` for the MoE blocks, ``dense`` for the
others (``none``, an attention-only block, is supported by :class:`Block` for hybrid patterns).

Parts are created in a fixed order (embedding, positions, then each block's mixer and FFN, final norm,
head) and then initialised by :meth:`DecoderLM.reset_parameters`, so a seed gives the same weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from moe.layer import MoELayer
from moe.models.attention import Attention
from moe.models.decoder import Block, DecoderLM
from moe.models.ffn import GELUMLP, SwiGLU
from moe.models.mamba import MambaMixer
from moe.models.mamba2 import Mamba2Mixer
from moe.models.mla import MLAttention
from moe.models.moa import MixtureOfAttentionHeads
from moe.models.pattern import mixer_names, moe_block_indices
from moe.models.shared_attention import SharedAttentionBlock, SharedAttentionInput, shared_block_indices
from moe.shared_expert import SharedExpert

NORMS = {"rmsnorm": nn.RMSNorm, "layernorm": nn.LayerNorm}
POSITIONS = ("rope", "learned", "none")  # none: Jamba's attention, where the Mamba layers carry order
MLPS = {"swiglu": SwiGLU, "gelu": GELUMLP}


def _gqa(o: Mapping[str, Any], index: int) -> nn.Module:
    return Attention(d_model=o["d_model"], n_heads=o["n_heads"], n_kv_heads=o["n_kv_heads"] or o["n_heads"],
                     max_seq_len=o["max_seq_len"], rope_theta=o["rope_theta"], qk_norm=o["qk_norm"],
                     qk_norm_scope=o["qk_norm_scope"], norm_eps=o["norm_eps"], attention_bias=o["attention_bias"],
                     out_bias=o["attention_out_bias"], rope=o["position"] == "rope")


def _mla(o: Mapping[str, Any], index: int) -> nn.Module:
    # n_kv_heads is unused: every head gets its own k, v from the shared latent
    return MLAttention(d_model=o["d_model"], n_heads=o["n_heads"], max_seq_len=o["max_seq_len"],
                       rope_theta=o["rope_theta"], q_lora_rank=o["q_lora_rank"], kv_lora_rank=o["kv_lora_rank"],
                       qk_nope_head_dim=o["qk_nope_head_dim"], qk_rope_head_dim=o["qk_rope_head_dim"],
                       v_head_dim=o["v_head_dim"])


def _mamba(o: Mapping[str, Any], index: int) -> nn.Module:
    # RoPE is unused: the recurrence carries position, as in Jamba's Mamba layers
    return MambaMixer(d_model=o["d_model"], d_state=o["mamba_d_state"], d_conv=o["mamba_d_conv"],
                      expand=o["mamba_expand"], dt_rank=o["mamba_dt_rank"], conv_bias=o["mamba_conv_bias"],
                      proj_bias=o["mamba_proj_bias"], inner_norms=o["mamba_inner_norms"], norm_eps=o["norm_eps"])


def _mamba2(o: Mapping[str, Any], index: int) -> nn.Module:
    return Mamba2Mixer(d_model=o["d_model"], d_state=o["mamba_d_state"], d_conv=o["mamba_d_conv"],
                       expand=o["mamba_expand"], head_dim=o["mamba_head_dim"], n_groups=o["mamba_n_groups"],
                       conv_bias=o["mamba_conv_bias"], proj_bias=o["mamba_proj_bias"], norm_eps=o["norm_eps"])


def _moa(o: Mapping[str, Any], index: int) -> nn.Module:
    # routed like an MoE FFN: the run's router and balancers, one of each per layer
    num_experts = o["moa_num_experts"] or o["num_experts"]
    return MixtureOfAttentionHeads(router=o["router"](d_model=o["d_model"], num_experts=num_experts),
                                   balancers=_balancers(o),
                                   d_model=o["d_model"], num_experts=num_experts, heads=o["moa_heads"],
                                   head_dim=o["moa_head_dim"], max_seq_len=o["max_seq_len"],
                                   rope_theta=o["rope_theta"], rope=o["position"] == "rope",
                                   output_bias=o["moe_output_bias"], layer_index=index)


# mixer name (model.attention, model.ssm, model.mixer_layers) -> the token mixer of block ``index``, built
# from the model options
MIXERS: dict[str, Callable[[Mapping[str, Any], int], nn.Module]] = {
    "gqa": _gqa, "mla": _mla, "mamba": _mamba, "mamba2": _mamba2, "moa": _moa}
ATTENTION_MIXERS = ("gqa", "mla", "moa")
# options a mixer cannot take, with the only value it allows (attention options are refused only when no
# block attends: a hybrid's attention blocks use them)
_NO_ATTENTION_OPTIONS = {"qk_norm": False, "attention_bias": False, "attention_out_bias": False}
MIXER_LIMITS = {"mla": {**_NO_ATTENTION_OPTIONS, "position": "rope"}, "moa": _NO_ATTENTION_OPTIONS,
                "mamba": _NO_ATTENTION_OPTIONS, "mamba2": _NO_ATTENTION_OPTIONS}


def build_decoder(
    *,
    vocab_size: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int | None = None,
    d_ff: int,
    max_seq_len: int,
    rope_theta: float = 10000.0,
    norm_eps: float = 1e-6,
    final_norm_eps: float | None = None,
    qk_norm: bool = False,
    qk_norm_scope: str = "head",
    attention_bias: bool = False,
    attention_out_bias: bool = False,
    attention: str = "gqa",
    q_lora_rank: int | None = None,
    kv_lora_rank: int | None = None,
    qk_nope_head_dim: int | None = None,
    qk_rope_head_dim: int | None = None,
    v_head_dim: int | None = None,
    norm: str = "rmsnorm",
    position: str = "rope",
    ssm: str = "mamba",
    attention_every: int = 1,
    attention_offset: int = 0,
    mixer_layers: Sequence[str] | None = None,
    mamba_d_state: int = 16,
    mamba_d_conv: int = 4,
    mamba_expand: int = 2,
    mamba_dt_rank: int | str = "auto",
    mamba_conv_bias: bool = True,
    mamba_proj_bias: bool = False,
    mamba_inner_norms: bool = False,
    mamba_head_dim: int = 64,
    mamba_n_groups: int = 1,
    shared_attention_every: int | None = None,
    shared_attention_offset: int = 0,
    shared_attention_blocks: int = 1,
    shared_attention_lora_rank: int = 0,
    moa_num_experts: int | None = None,
    moa_heads: int = 2,
    moa_head_dim: int = 32,
    mlp: str = "swiglu",
    tie_embeddings: bool = True,
    embedding_multiplier: float = 1.0,
    logits_scaling: float = 1.0,
    init_std: float = 0.02,
    num_experts: int = 0,
    expert_d_ff: int | None = None,
    num_shared_experts: int = 0,
    shared_expert_d_ff: int | None = None,
    shared_expert_gate: bool = False,
    capacity_factor: float | None = None,
    eval_capacity_factor: float | None = None,
    drop_policy: str = "probs",
    moe_output_bias: bool = False,
    moe_every: int = 1,
    moe_first_dense: int = 0,
    moe_layers: Sequence[int] | None = None,
    router: Callable[..., nn.Module] | None = None,
    experts: Callable[..., nn.Module] | None = None,
    balancers: Mapping[str, Callable[..., nn.Module]] | None = None,
) -> DecoderLM:
    """A decoder-only LM from the ``model`` node; ``router``, ``experts`` and each of ``balancers`` are
    factories (Hydra ``_partial_: true``) called once per MoE layer, so stateful parts are per layer."""
    options = dict(locals())
    check_model_options(options)
    plan = layer_plan(options)
    embed = nn.Embedding(vocab_size, d_model)
    pos_embed = nn.Embedding(max_seq_len, d_model) if position == "learned" else None
    shared_inputs = _shared_attention_inputs(options)
    blocks = []
    for i, (mixer, ffn) in enumerate(plan):
        blocks.append(Block(mixer=MIXERS[mixer](options, i), ffn=_ffn(ffn, i, options),
                            mixer_norm=NORMS[norm](d_model, eps=norm_eps),
                            ffn_norm=None if ffn == "none" else NORMS[norm](d_model, eps=norm_eps),
                            mixer_input=shared_inputs.get(i)))
    final_norm = NORMS[norm](d_model, eps=norm_eps if final_norm_eps is None else final_norm_eps)
    lm_head = nn.Linear(d_model, vocab_size, bias=False)
    if tie_embeddings:
        lm_head.weight = embed.weight
    model = DecoderLM(embed=embed, pos_embed=pos_embed, blocks=blocks, final_norm=final_norm, lm_head=lm_head,
                      max_seq_len=max_seq_len, init_std=init_std, rope_theta=rope_theta,
                      embedding_multiplier=embedding_multiplier, logits_scaling=logits_scaling)
    model.reset_parameters()
    return model


def check_model_options(o: Mapping[str, Any]) -> None:
    """Build-time checks of the ``model`` node; each error names the key, the value and what is allowed."""
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
        if o[name] < 1:
            raise ValueError(f"model.{name}={o[name]} must be >= 1")
    for name in ("embedding_multiplier", "logits_scaling"):
        if not o[name] > 0:
            raise ValueError(f"model.{name}={o[name]} must be > 0")
    if o["num_experts"] < 0:
        raise ValueError(f"model.num_experts={o['num_experts']} must be >= 0 (0 = dense model)")
    if o["num_shared_experts"] < 0:
        raise ValueError(f"model.num_shared_experts={o['num_shared_experts']} must be >= 0")
    for name, allowed in (("norm", tuple(NORMS)), ("position", POSITIONS), ("mlp", tuple(MLPS)),
                          ("attention", tuple(MIXERS)), ("ssm", tuple(MIXERS))):
        if o[name] not in allowed:
            raise ValueError(f"model.{name}={o[name]!r} is not one of {allowed}")
    used = set(block_mixers(o))
    if unknown := sorted(used - set(MIXERS)):
        raise ValueError(f"model.mixer_layers names {unknown}, not among {tuple(MIXERS)}")
    if "moa" in used:
        if not (o["moa_num_experts"] or o["num_experts"]):
            raise ValueError("model.attention=moa routes attention heads to experts: set model.moa_num_experts (or "
                             "model.num_experts, which it defaults to) >= 1")
        if o["router"] is None:
            raise ValueError("model.attention=moa needs a router factory (the run's router config)")
        for name in ("moa_heads", "moa_head_dim"):
            if o[name] < 1:
                raise ValueError(f"model.{name}={o[name]} must be >= 1")
    attends = bool(used & set(ATTENTION_MIXERS))
    for kind in sorted(used):
        for name, fine in MIXER_LIMITS.get(kind, {}).items():
            if o[name] != fine and (kind in ATTENTION_MIXERS or not attends):
                raise ValueError(f"model.{name}={o[name]!r} is not supported with a {kind} mixer (allowed: {fine!r})")
    if o["num_experts"] > 0 and o["num_shared_experts"] > 0 and o["mlp"] != "swiglu":
        raise ValueError(f"model.num_shared_experts={o['num_shared_experts']} with model.mlp={o['mlp']!r}: shared "
                         f"experts are SwiGLU; set model.num_shared_experts=0 (routed experts follow model.mlp)")


def block_mixers(o: Mapping[str, Any]) -> list[str]:
    """The mixer name of every block (moe/models/pattern.py): ``attention`` where the attention pattern
    says, ``ssm`` elsewhere, or the explicit ``mixer_layers``."""
    return mixer_names(n_layers=o["n_layers"], attention=o["attention"], ssm=o["ssm"], every=o["attention_every"],
                       offset=o["attention_offset"], layers=o["mixer_layers"])


def layer_plan(o: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(mixer, ffn) of every block: the mixer from the mixer pattern, the FFN ``moe`` at the indices of
    the MoE layer pattern and ``dense`` elsewhere."""
    moe_indices = []
    if o["num_experts"] > 0:
        moe_indices = moe_block_indices(n_layers=o["n_layers"], every=o["moe_every"],
                                        first_dense=o["moe_first_dense"], layers=o["moe_layers"])
    if moe_indices and (o["router"] is None or o["experts"] is None):
        raise ValueError("an MoE model (num_experts > 0) needs a router and an experts factory")
    return [(mixer, "moe" if i in moe_indices else "dense") for i, mixer in enumerate(block_mixers(o))]


def _shared_attention_inputs(o: Mapping[str, Any]) -> dict[int, SharedAttentionInput]:
    """Block index → its application of a shared attention block (Zamba): ``shared_attention_blocks``
    shared blocks, used in turn (Zamba2's ABAB...), each application with its own projection."""
    indices = shared_block_indices(n_layers=o["n_layers"], every=o["shared_attention_every"],
                                   offset=o["shared_attention_offset"])
    if not indices:
        return {}
    if o["shared_attention_blocks"] < 1:
        raise ValueError(f"model.shared_attention_blocks={o['shared_attention_blocks']} must be >= 1")
    if (2 * o["d_model"]) % o["n_heads"]:
        raise ValueError(f"model.n_heads={o['n_heads']} must divide 2 x model.d_model={2 * o['d_model']} (the "
                         f"shared attention block attends over [x; embeddings])")
    shared = [SharedAttentionBlock(d_model=o["d_model"], n_heads=o["n_heads"], n_kv_heads=o["n_kv_heads"] or
                                   o["n_heads"], d_ff=o["d_ff"], max_seq_len=o["max_seq_len"],
                                   rope_theta=o["rope_theta"], rope=o["position"] == "rope", norm_eps=o["norm_eps"])
              for _ in range(o["shared_attention_blocks"])]
    if o["shared_attention_lora_rank"] < 0:
        raise ValueError(f"model.shared_attention_lora_rank={o['shared_attention_lora_rank']} must be >= 0 (0: none)")
    return {i: SharedAttentionInput(shared[n % len(shared)], o["d_model"], o["shared_attention_lora_rank"])
            for n, i in enumerate(indices)}


def _balancers(o: Mapping[str, Any]) -> dict[str, nn.Module]:
    """One fresh instance of every balancer for a routed layer (they keep per-layer state)."""
    return {name: make() for name, make in (o["balancers"] or {}).items()}


def _ffn(kind: str, index: int, o: Mapping[str, Any]) -> nn.Module | None:
    """The FFN of block ``index``: ``dense`` (SwiGLU or GELU MLP), ``moe`` or ``none``."""
    if kind == "none":
        return None
    if kind == "dense":
        return MLPS[o["mlp"]](d_model=o["d_model"], d_ff=o["d_ff"])
    d_model, num_experts, expert_d_ff = o["d_model"], o["num_experts"], o["expert_d_ff"] or o["d_ff"]
    # created in this order (router, experts, balancers, shared expert): routers keep their
    # construction-time init, so the order fixes which random numbers they draw
    router = o["router"](d_model=d_model, num_experts=num_experts)
    # routed experts are MLPs of the backbone's kind (passed only when not the default, so a custom
    # SwiGLU-only experts class keeps working)
    activation = {} if o["mlp"] == "swiglu" else {"activation": o["mlp"]}
    experts = o["experts"](num_experts=num_experts, d_model=d_model, d_ff=expert_d_ff, **activation)
    balancers = _balancers(o)
    shared = SharedExpert(d_model=d_model, num_experts=o["num_shared_experts"],
                          d_ff=o["shared_expert_d_ff"] or expert_d_ff, gate=o["shared_expert_gate"],
                          ) if o["num_shared_experts"] else None
    return MoELayer(router=router, experts=experts, balancers=balancers, shared_expert=shared, layer_index=index,
                    capacity_factor=o["capacity_factor"], eval_capacity_factor=o["eval_capacity_factor"],
                    drop_policy=o["drop_policy"], output_bias=o["moe_output_bias"])
