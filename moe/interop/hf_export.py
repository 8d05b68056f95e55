"""The conversion half of :func:`moe.interop.save_hf`: a moe-lab :class:`DecoderLM` → a Hugging Face
``config.json`` dict and the tensors of its ``model.safetensors``, in the per-expert (v4 legacy) layout
that transformers 5.24 ``save_pretrained`` writes and ``from_pretrained`` merges into fused experts
(transformers' MoE config contract). No I/O and no ``transformers`` import: the config is a plain dict.

Everything is read off the model's modules (widths, heads, norms, biases, routers, shared experts,
balancers; moe/interop/hf_model_facts.py), so an upcycled or hand-edited model exports as it is;
only RoPE's θ, which the model keeps only as a cos/sin table, comes from the run config (and is
checked against that table).

Which ``model_type`` (``arch``; the first that fits in this order when not forced)::

    moe-lab model                                         HF model_type   conversions
    dense, RMSNorm+RoPE+SwiGLU, no biases, no qk_norm      llama
    dense, ... + attention_bias (q/k/v)                    qwen2           (forced on a bias-free model:
                                                                            zero q/k/v biases)
    dense, ... + qk_norm head                              qwen3
    dense, layernorm + learned + gelu                      gpt2            Conv1D [in, out] = our weightᵀ;
                                                                            c_attn = [q; k; v]ᵀ; missing
                                                                            q/k/v/o biases written as zeros
    MoE TopKRouter topk_then_softmax, every block MoE,     mixtral         router_aux_loss_coef = coeff / k
      no qk_norm, no biases, no shared expert
    MoE TopKRouter, qk_norm head, no shared expert         qwen3_moe       norm_topk_prob = (order ==
                                                                            topk_then_softmax);
                                                                            mlp_only_layers = dense blocks
    MoE TopKRouter, qk_norm full, every block MoE,         olmoe           norm_topk_prob as above
      no shared expert
    MoE TopKRouter, no qk_norm (any order, dense blocks,   qwen2_moe       zero q/k/v biases when the model
      q/k/v biases, one shared expert)                                      has none; no shared expert = a
                                                                            zero shared expert of width 1
                                                                            (output exactly 0); ungated:
                                                                            gate weight 0 (σ = 1/2 exactly)
                                                                            and down_proj × 2
    model.attention=mla and/or SigmoidRouter               deepseek_v3     see below (the only
                                                                            candidate for such a model)

deepseek_v3 (DeepseekV3ForCausalLM) needs model.attention=mla (HF DeepSeek-V3 has only MLA; a GQA model
with a SigmoidRouter is refused, GQA having no exact MLA form), RMSNorm/RoPE/SwiGLU, a SigmoidRouter on
every MoE block, and the MoE blocks contiguous to the last one (``first_k_dense_replace`` = the number
of leading dense blocks; a dense MLA model writes first_k_dense_replace = num_hidden_layers and
n_routed_experts = 0). Config: n_routed_experts, num_experts_per_tok = top_k, n_group / topk_group =
num_groups / topk_groups (groups of one expert are written as n_group = topk_group = 1: HF scores a
group by its top-2, and with one expert per group the limit cannot change the top-k), norm_topk_prob =
normalize, routed_scaling_factor, topk_method noaux_tc, scoring_func sigmoid, moe_intermediate_size =
expert_d_ff, intermediate_size = the dense d_ff, n_shared_experts = SharedExpert.num_experts (ours is
one ungated SwiGLU of num_experts × expert_d_ff, HF's one MLP of moe_intermediate_size ×
n_shared_experts; another shared width or a gate is refused; none = n_shared_experts 0 with [0, D] /
[D, 0] shared_experts tensors, as transformers writes them), q_lora_rank (null = plain ``q_proj``),
kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, num_key_value_heads = num_attention_heads,
``rope_interleave: false`` (our RoPE is rotate-half, so the q / kv_a rows are written unpermuted; the
import reads the flag and permutes only when it is true), num_nextn_predict_layers 0. Tensors:
``self_attn.{q_a_proj, q_a_layernorm, q_b_proj | q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj,
o_proj}``, ``mlp.{gate,up,down}_proj`` on dense blocks, ``mlp.gate.weight``,
``mlp.gate.e_score_correction_bias`` = ``router.selection_bias_E`` (exactly the aux_free balancer's
bias), ``mlp.experts.{e}.*``, ``mlp.shared_experts.*``. The MLA latent norms' ε must be 1e-6 (HF's).

Common to every target: our ``kv_proj`` rows are [K heads; V heads] → ``k_proj``, ``v_proj``; expert
stacks ``w_*_EDF`` / ``w_down_EFD`` ([E, in, out], "x @ w") → per expert ``nn.Linear`` weights [out, in]
(Mixtral ``w1``/``w3``/``w2``, others ``gate_proj``/``up_proj``/``down_proj``); the router's
``scorer.weight_ED`` → ``gate.weight``; ``max_position_embeddings`` = ``max_seq_len``; tied embeddings →
``tie_word_embeddings: true`` and no ``lm_head.weight``; all weights float32.

Refused (ValueError, naming the option and what would export): routers other than TopKRouter and
SigmoidRouter (e.g. expert_choice, hash, sinkhorn: HF MoEs are softmax or sigmoid token choice), a
non-zero ``selection_bias_E`` on a TopKRouter (the aux_free balancer's; HF softmax routers have no
bias), ``capacity_factor`` / ``eval_capacity_factor`` (HF is dropless), router jitter (Mixtral's
jitter also scales the experts' input, ours only the router's), a
bias on ``o_proj`` outside gpt2, mixed norm/position/MLP combinations, and per-layer differences HF
cannot express.

Balancers are training-only: ``switch_aux`` becomes ``router_aux_loss_coef = coeff / k`` (HF's loss is k
at balance, ours 1 — the inverse of the import's k × coef) with ``output_router_logits: false`` (HF's
default, so HF adds no aux loss unless asked). HF pools f and P over all layers; ours sums the
per-layer losses, so the coefficient matches per layer, not in total. aux_free's state is the router's
``selection_bias_E``, exported as deepseek_v3's ``e_score_correction_bias`` (a frozen buffer in HF; its
update rule is not exported). HF DeepSeek-V3 has no aux loss, so no coefficient is written for it
(moe-lab's import gives an imported DeepSeek-V3 the paper's aux_free + seq_aux recipe). z_loss,
seq_aux, importance, remoe_l1 and the other balancers have no HF counterpart and are not exported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moe.interop.hf_model_facts import ModelFacts, model_facts
from moe.layer import MoELayer
from moe.models.attention import rope_cos_sin
from moe.models.decoder import DecoderLM
from moe.models.mla import MLAttention

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "gpt2": "GPT2LMHeadModel", "mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                 "olmoe": "OlmoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                 "deepseek_v3": "DeepseekV3ForCausalLM"}
DENSE_TARGETS = ("llama", "qwen2", "qwen3", "gpt2")
MOE_TARGETS = ("mixtral", "qwen3_moe", "olmoe", "qwen2_moe")  # also the order tried when arch is not forced
def arch_problems(arch: str, f: ModelFacts) -> list[str]:
    """Why ``arch`` cannot hold this model exactly (empty: it can)."""
    if arch not in ARCHITECTURES:
        return [f"arch={arch!r} is not one of {', '.join(ARCHITECTURES)}"]
    if arch == "deepseek_v3":
        return _deepseek_v3_problems(f)
    problems = []
    if f.attention == "mla":
        problems.append("model.attention=mla (multi-head latent attention: only deepseek_v3 has it)")
    if f.router == "sigmoid":
        problems.append(f"router SigmoidRouter ({arch} routes by softmax top-k; sigmoid routing is deepseek_v3's)")
    if arch in DENSE_TARGETS and f.moe_layers:
        problems.append(f"{arch} is dense but blocks {f.moe_layers} are MoE")
    if arch in MOE_TARGETS and not f.moe_layers:
        problems.append(f"{arch} is an MoE but the model has no MoE block")
    if arch == "gpt2":
        for name, value, want in (("norm", f.norm, "layernorm"), ("position", f.position, "learned"),
                                  ("mlp", f.mlp, "gelu")):
            if value != want:
                problems.append(f"model.{name}={value!r} (gpt2 needs {want!r})")
        if f.n_kv_heads != f.n_heads:
            problems.append(f"n_kv_heads={f.n_kv_heads} < n_heads={f.n_heads} (gpt2 has no grouped-query attention)")
        if f.qk_norm:
            problems.append("qk_norm (gpt2 has none)")
        return problems
    for name, value, want in (("norm", f.norm, "rmsnorm"), ("position", f.position, "rope"), ("mlp", f.mlp, "swiglu")):
        if value != want:
            problems.append(f"model.{name}={value!r} ({arch} needs {want!r}; only gpt2 has layernorm/learned/gelu, "
                            f"and needs all three)")
    want_qk = {"qwen3": "head", "qwen3_moe": "head", "olmoe": "full"}.get(arch)
    if f.qk_norm != want_qk:
        problems.append(f"qk_norm={'off' if f.qk_norm is None else 'on, qk_norm_scope=' + f.qk_norm} "
                        f"({arch} has {'no qk_norm' if want_qk is None else 'qk_norm_scope=' + want_qk})")
    if f.out_bias:
        problems.append(f"attention_out_bias (a bias on o_proj; {arch} has none)")
    if f.qkv_bias and arch not in ("qwen2", "qwen2_moe"):
        problems.append(f"attention_bias (q/k/v biases; only qwen2 / qwen2_moe have them, {arch} does not)")
    if arch in ("mixtral", "olmoe") and f.moe_layers and len(f.moe_layers) != f.n_layers:
        problems.append(f"dense blocks {sorted(set(range(f.n_layers)) - set(f.moe_layers))} ({arch} makes every "
                        f"block MoE; qwen2_moe / qwen3_moe have mlp_only_layers)")
    if arch == "mixtral" and f.order and f.order != "topk_then_softmax":
        problems.append(f"router.order={f.order} (mixtral always renormalises the top-k weights: "
                        f"topk_then_softmax)")
    if f.shared_d_ff and arch != "qwen2_moe":
        problems.append(f"a shared expert ({arch} has none; qwen2_moe has one, gated)")
    return problems


def _deepseek_v3_problems(f: ModelFacts) -> list[str]:
    """deepseek_v3 = MLA attention + (optional) sigmoid-routed MoE blocks after the dense leading ones."""
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


def deepseek_v3_groups(f: ModelFacts) -> tuple[int, int]:
    """(n_group, topk_group). HF scores a group by its top-2 experts, so groups of one expert cannot be
    written as they are; with one expert per group the group limit is a no-op (the top-k experts always lie
    in the top-``topk_groups`` ≥ k groups), so it is written as a single group."""
    if f.num_experts // f.num_groups == 1:
        return 1, 1
    return f.num_groups, f.topk_groups


def choose_arch(f: ModelFacts, arch: str | None = None) -> str:
    """``arch`` if it holds the model exactly, else the first target that does; ValueError otherwise."""
    if arch is not None:
        problems = arch_problems(arch, f)
        if problems:
            raise ValueError(f"arch={arch!r} cannot represent this model: {'; '.join(problems)}")
        return arch
    if f.attention == "mla" or f.router == "sigmoid":
        candidates: tuple[str, ...] = ("deepseek_v3",)  # no other HF model has MLA or sigmoid routing
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
    if arch == "deepseek_v3":
        return _deepseek_v3_config(common, f, rope_theta)
    if arch == "gpt2":
        return {**common, "n_embd": f.d_model, "n_layer": f.n_layers, "n_head": f.n_heads, "n_inner": f.d_ff,
                "n_positions": f.max_seq_len, "activation_function": "gelu_new",  # our GELU is the tanh one
                "layer_norm_epsilon": f.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    cfg = {**common, "hidden_size": f.d_model, "intermediate_size": f.d_ff or f.expert_d_ff,
           "num_hidden_layers": f.n_layers, "num_attention_heads": f.n_heads, "num_key_value_heads": f.n_kv_heads,
           "head_dim": f.head_dim, "hidden_act": "silu", "max_position_embeddings": f.max_seq_len,
           "rms_norm_eps": f.norm_eps, "rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)},
           "attention_dropout": 0.0}
    if arch in ("llama", "qwen3", "qwen3_moe", "olmoe"):
        cfg.update(attention_bias=False)  # in these four it would put a bias on o_proj too
    if arch == "llama":
        cfg.update(mlp_bias=False, pretraining_tp=1)
    if arch in ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"):
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=f.n_layers)
    if arch == "mixtral":
        cfg.update(sliding_window=None, intermediate_size=f.expert_d_ff, num_local_experts=f.num_experts,
                   router_jitter_noise=0.0)
    if arch in ("qwen2_moe", "qwen3_moe", "olmoe"):
        cfg.update(num_experts=f.num_experts, norm_topk_prob=f.order == "topk_then_softmax")
    if arch in ("qwen2_moe", "qwen3_moe"):
        dense = sorted(set(range(f.n_layers)) - set(f.moe_layers))
        cfg.update(moe_intermediate_size=f.expert_d_ff, decoder_sparse_step=1, mlp_only_layers=dense)
    if arch == "qwen2_moe":
        cfg.update(qkv_bias=True, shared_expert_intermediate_size=f.shared_d_ff or 1)
    if arch == "olmoe":
        cfg.update(intermediate_size=f.expert_d_ff, clip_qkv=None)
    if arch in MOE_TARGETS:
        cfg.update(num_experts_per_tok=f.top_k, router_aux_loss_coef=f.aux_coeff / f.top_k,
                   output_router_logits=False)
    return cfg


def _deepseek_v3_config(common: dict[str, Any], f: ModelFacts, rope_theta: float | None) -> dict[str, Any]:
    first_dense = f.moe_layers[0] if f.moe_layers else f.n_layers
    n_group, topk_group = deepseek_v3_groups(f) if f.moe_layers else (1, 1)
    return {**common, "hidden_size": f.d_model, "num_hidden_layers": f.n_layers, "num_attention_heads": f.n_heads,
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


def _deepseek_v3_tensors(model: DecoderLM, f: ModelFacts) -> dict[str, torch.Tensor]:
    t = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.final_norm.weight}
    if not f.tied:
        t["lm_head.weight"] = model.lm_head.weight
    D = f.d_model
    for i, block in enumerate(model.blocks):
        p, a = f"model.layers.{i}", block.mixer
        t[f"{p}.input_layernorm.weight"] = block.mixer_norm.weight
        t[f"{p}.post_attention_layernorm.weight"] = block.ffn_norm.weight
        sa = f"{p}.self_attn"
        if a.q_proj is not None:
            t[f"{sa}.q_proj.weight"] = a.q_proj.weight
        else:
            t[f"{sa}.q_a_proj.weight"], t[f"{sa}.q_a_layernorm.weight"] = a.q_a_proj.weight, a.q_a_norm.weight
            t[f"{sa}.q_b_proj.weight"] = a.q_b_proj.weight
        t[f"{sa}.kv_a_proj_with_mqa.weight"], t[f"{sa}.kv_a_layernorm.weight"] = a.kv_a_proj.weight, a.kv_a_norm.weight
        t[f"{sa}.kv_b_proj.weight"], t[f"{sa}.o_proj.weight"] = a.kv_b_proj.weight, a.o_proj.weight
        ffn, mlp = block.ffn, f"{p}.mlp"
        if not isinstance(ffn, MoELayer):
            for proj in ("gate", "up", "down"):
                t[f"{mlp}.{proj}_proj.weight"] = getattr(ffn, proj).weight
            continue
        t.update(_moe_tensors("deepseek_v3", ffn, mlp, f))
        t[f"{mlp}.gate.e_score_correction_bias"] = ffn.router.selection_bias_E  # aux_free's bias
        if ffn.shared_expert is None:  # n_shared_experts = 0: empty tensors, as transformers itself writes them
            t.update({f"{mlp}.shared_experts.gate_proj.weight": torch.zeros(0, D),
                      f"{mlp}.shared_experts.up_proj.weight": torch.zeros(0, D),
                      f"{mlp}.shared_experts.down_proj.weight": torch.zeros(D, 0)})
        else:  # our one SwiGLU of n_shared × d_ff = HF's shared_experts MLP of the same width
            for proj in ("gate", "up", "down"):
                t[f"{mlp}.shared_experts.{proj}_proj.weight"] = getattr(ffn.shared_expert.ffn, proj).weight
    return t


def _gpt2_tensors(model: DecoderLM, f: ModelFacts) -> dict[str, torch.Tensor]:
    D = f.d_model
    t = {"transformer.wte.weight": model.embed.weight, "transformer.wpe.weight": model.pos_embed.weight,
         "transformer.ln_f.weight": model.final_norm.weight, "transformer.ln_f.bias": model.final_norm.bias}
    for i, block in enumerate(model.blocks):
        h, a, ffn = f"transformer.h.{i}", block.mixer, block.ffn
        for ours, theirs in ((block.mixer_norm, "ln_1"), (block.ffn_norm, "ln_2")):
            t[f"{h}.{theirs}.weight"], t[f"{h}.{theirs}.bias"] = ours.weight, ours.bias
        # Conv1D stores [in, out]: c_attn = [W_q; W_k; W_v]ᵀ (our kv_proj rows are already K then V)
        t[f"{h}.attn.c_attn.weight"] = torch.cat((a.q_proj.weight, a.kv_proj.weight)).T
        t[f"{h}.attn.c_attn.bias"] = (torch.cat((a.q_proj.bias, a.kv_proj.bias)) if f.qkv_bias
                                      else torch.zeros(3 * D))
        t[f"{h}.attn.c_proj.weight"] = a.o_proj.weight.T
        t[f"{h}.attn.c_proj.bias"] = a.o_proj.bias if f.out_bias else torch.zeros(D)
        t[f"{h}.mlp.c_fc.weight"], t[f"{h}.mlp.c_fc.bias"] = ffn.fc.weight.T, ffn.fc.bias
        t[f"{h}.mlp.c_proj.weight"], t[f"{h}.mlp.c_proj.bias"] = ffn.proj.weight.T, ffn.proj.bias
    if not f.tied:
        t["lm_head.weight"] = model.lm_head.weight
    return t


def _moe_tensors(arch: str, layer: MoELayer, prefix: str, f: ModelFacts) -> dict[str, torch.Tensor]:
    t = {f"{prefix}.gate.weight": layer.router.scorer.weight_ED}
    names = ("w1", "w3", "w2") if arch == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    stacks = (layer.experts.w_gate_EDF, layer.experts.w_up_EDF, layer.experts.w_down_EFD)
    for name, stack in zip(names, stacks):
        for e in range(f.num_experts):  # our [in, out] ("x @ w") → nn.Linear's [out, in]
            t[f"{prefix}.experts.{e}.{name}.weight"] = stack[e].T
    if arch == "qwen2_moe":
        shared = layer.shared_expert
        if shared is None:
            # Qwen2-MoE always has one: width 1, all zeros, adds exactly sigmoid(0)·0 = 0. (Width 0 also works
            # in transformers, but moe-lab's import reads width 0 as "no shared expert" and refuses the tensors.)
            D = f.d_model
            t.update({f"{prefix}.shared_expert.gate_proj.weight": torch.zeros(1, D),
                      f"{prefix}.shared_expert.up_proj.weight": torch.zeros(1, D),
                      f"{prefix}.shared_expert.down_proj.weight": torch.zeros(D, 1),
                      f"{prefix}.shared_expert_gate.weight": torch.zeros(1, D)})
        elif shared.gate is not None:
            for proj in ("gate", "up", "down"):
                t[f"{prefix}.shared_expert.{proj}_proj.weight"] = getattr(shared.ffn, proj).weight
            t[f"{prefix}.shared_expert_gate.weight"] = shared.gate.weight
        else:
            # an ungated shared expert: a zero gate weight gives sigmoid(0) = 1/2 exactly, and a doubled
            # down-projection undoes it exactly (scaling by a power of two rounds nothing)
            t[f"{prefix}.shared_expert.gate_proj.weight"] = shared.ffn.gate.weight
            t[f"{prefix}.shared_expert.up_proj.weight"] = shared.ffn.up.weight
            t[f"{prefix}.shared_expert.down_proj.weight"] = 2.0 * shared.ffn.down.weight
            t[f"{prefix}.shared_expert_gate.weight"] = torch.zeros(1, f.d_model)
    return t


def hf_tensors(arch: str, model: DecoderLM, f: ModelFacts) -> dict[str, torch.Tensor]:
    """HF tensor name → float32, contiguous, unshared CPU tensor (what safetensors.save_file accepts)."""
    if arch == "gpt2":
        t = _gpt2_tensors(model, f)
    elif arch == "deepseek_v3":
        t = _deepseek_v3_tensors(model, f)
    else:
        t = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.final_norm.weight}
        if not f.tied:
            t["lm_head.weight"] = model.lm_head.weight
        zero_bias = arch in ("qwen2", "qwen2_moe")  # their q/k/v always carry a bias
        for i, block in enumerate(model.blocks):
            p, a = f"model.layers.{i}", block.mixer
            t[f"{p}.input_layernorm.weight"] = block.mixer_norm.weight
            t[f"{p}.post_attention_layernorm.weight"] = block.ffn_norm.weight
            t[f"{p}.self_attn.q_proj.weight"] = a.q_proj.weight
            t[f"{p}.self_attn.k_proj.weight"], t[f"{p}.self_attn.v_proj.weight"] = a.kv_proj.weight.chunk(2)
            t[f"{p}.self_attn.o_proj.weight"] = a.o_proj.weight
            if f.qkv_bias or zero_bias:
                q_bias = a.q_proj.bias if f.qkv_bias else torch.zeros(a.q_proj.out_features)
                kv_bias = a.kv_proj.bias if f.qkv_bias else torch.zeros(a.kv_proj.out_features)
                t[f"{p}.self_attn.q_proj.bias"] = q_bias
                t[f"{p}.self_attn.k_proj.bias"], t[f"{p}.self_attn.v_proj.bias"] = kv_bias.chunk(2)
            if a.q_norm is not None:
                t[f"{p}.self_attn.q_norm.weight"], t[f"{p}.self_attn.k_norm.weight"] = a.q_norm.weight, a.k_norm.weight
            if isinstance(block.ffn, MoELayer):
                prefix = f"{p}.block_sparse_moe" if arch == "mixtral" else f"{p}.mlp"
                t.update(_moe_tensors(arch, block.ffn, prefix, f))
            else:
                for proj in ("gate", "up", "down"):
                    t[f"{p}.mlp.{proj}_proj.weight"] = getattr(block.ffn, proj).weight
    return {name: value.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)
            for name, value in t.items()}


def check_rope_theta(model: DecoderLM, rope_theta: float) -> None:
    """The model keeps θ only as its cos table; a config whose θ does not rebuild that table is wrong."""
    attn = model.blocks[0].mixer
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
    if arch != "gpt2":
        if rope_theta is None:
            raise ValueError("a RoPE model needs rope_theta: pass config= (the run config the model was built from)")
        check_rope_theta(model, rope_theta)
    return arch, hf_config(arch, facts, rope_theta), hf_tensors(arch, model, facts)
