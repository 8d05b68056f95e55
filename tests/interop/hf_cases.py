"""Tiny random moe-lab models, one per Hugging Face architecture the export targets (and the model_type it
should pick): shared by the save_hf tests (with transformers) and the adapter-rule tests (without)."""

from __future__ import annotations

import torch

from moe.models.build import build_model
from moe.routers import SigmoidRouter

V, S = 97, 24
MODEL = {"_target_": "moe.models.build_decoder", "vocab_size": V, "d_model": 64, "n_layers": 2, "n_heads": 4,
         "n_kv_heads": 2, "d_ff": 96, "max_seq_len": 48, "rope_theta": 5000.0, "norm_eps": 1e-5,
         "tie_embeddings": False}
MOE = {"num_experts": 4, "expert_d_ff": 32}
GPT2 = {"norm": "layernorm", "position": "learned", "mlp": "gelu", "n_kv_heads": 4, "attention_bias": True,
        "attention_out_bias": True, "tie_embeddings": True}
MLA = {"attention": "mla", "n_kv_heads": None, "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
       "qk_rope_head_dim": 4, "v_head_dim": 12}
SIGMOID = {"_target_": "moe.routers.SigmoidRouter", "_partial_": True, "top_k": 2, "num_groups": 4, "topk_groups": 2,
           "routed_scaling_factor": 2.5}
# DeepSeek-style: MLA, a dense first block, 8 experts in 4 groups (2 kept), two shared experts (one SwiGLU
# of 2 × 32), a non-zero selection bias (random_model sets it)
DEEPSEEK = {**MLA, "n_layers": 3, "num_experts": 8, "expert_d_ff": 32, "num_shared_experts": 2,
            "moe_first_dense": 1, "router": SIGMOID}

JETMOE = {**MOE, "attention": "moa", "moa_heads": 2, "moa_head_dim": 8, "moe_output_bias": True, "norm_eps": 1e-6}

GRANITE = {**MOE, "mixer_layers": ["mamba2", "gqa"], "mamba_head_dim": 16, "mamba_d_state": 8, "position": "none"}


def run_config(*, order="topk_then_softmax", balance=None, router=None, **model) -> dict:
    config = {"model": {**MODEL, **model}}
    if config["model"].get("num_experts"):
        config["router"] = router or {"_target_": "moe.routers.TopKRouter", "_partial_": True, "top_k": 2,
                                      "order": order}
        config["experts"] = {"_target_": "moe.experts.GroupedExperts", "_partial_": True}
        config["balance"] = balance or {}
    return config


def random_model(config):
    """A model with every weight random, norms and biases included (so a dropped or transposed tensor,
    or a unit norm the export forgot, changes the logits)."""
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))
            elif name.endswith("weight_ED"):
                param.normal_(0.0, 0.5)  # distinct experts per token
            else:
                param.normal_(0.0, 0.1 if name.endswith("bias") else 0.15)
        for layer in getattr(model, "moe_layers", []):
            if isinstance(layer.router, SigmoidRouter):  # as aux_free leaves it: changes the selection
                layer.router.selection_bias_E.normal_(0.0, 0.5)
    return model.eval()


CASES = {  # name: (model/router options, the HF model_type save_hf should pick)
    "llama": ({"tie_embeddings": True}, "llama"),
    "qwen2": ({"attention_bias": True}, "qwen2"),
    "qwen3": ({"qk_norm": True}, "qwen3"),
    "gpt2": (GPT2, "gpt2"),
    "gpt2_untied_no_out_bias": ({**GPT2, "tie_embeddings": False, "attention_out_bias": False}, "gpt2"),
    "mixtral": (MOE, "mixtral"),
    "qwen2_moe_shared_dense_first": ({**MOE, "attention_bias": True, "num_shared_experts": 1,
                                      "shared_expert_d_ff": 48, "shared_expert_gate": True, "moe_layers": [1],
                                      "order": "softmax_then_topk"}, "qwen2_moe"),
    "qwen2_moe_plain_softmax_then_topk": ({**MOE, "order": "softmax_then_topk"}, "qwen2_moe"),
    # DeepSeekMoE-style ungated shared expert: a zero gate (σ = 1/2) and a doubled down-projection
    "qwen2_moe_ungated_shared": ({**MOE, "num_shared_experts": 1, "shared_expert_d_ff": 48}, "qwen2_moe"),
    "qwen3_moe": ({**MOE, "qk_norm": True, "moe_layers": [1], "order": "softmax_then_topk"}, "qwen3_moe"),
    "olmoe": ({**MOE, "qk_norm": True, "qk_norm_scope": "full", "n_layers": 2}, "olmoe"),
    "deepseek_v3": (DEEPSEEK, "deepseek_v3"),
    # plain query projection, no shared expert (n_shared_experts=0), tied, every block MoE, unnormalised
    # weights, groups of one expert (written as n_group=1: the group limit is then a no-op)
    "deepseek_v3_plain_q_no_shared": ({**DEEPSEEK, "q_lora_rank": None, "num_shared_experts": 0, "moe_first_dense": 0,
                                       "tie_embeddings": True, "router": {**SIGMOID, "num_groups": 8, "topk_groups": 3,
                                                                          "normalize": False}}, "deepseek_v3"),
    "deepseek_v3_dense_mla": (MLA, "deepseek_v3"),
    # mixture of attention heads + MoE in every block; JetMoE's block norms keep eps 1e-6, its final one not
    "jetmoe": ({**JETMOE, "final_norm_eps": 1e-5}, "jetmoe"),
    "jetmoe_tied_without_biases": ({**JETMOE, "moe_output_bias": False, "tie_embeddings": True}, "jetmoe"),
    # Mamba-2 + attention, every block MoE with a shared expert, Granite's embedding/logit constants
    "granitemoehybrid": ({**GRANITE, "num_shared_experts": 1, "shared_expert_d_ff": 48, "embedding_multiplier": 2.0,
                          "logits_scaling": 4.0}, "granitemoehybrid"),
    "granitemoehybrid_rope_no_shared_expert": ({**GRANITE, "position": "rope"}, "granitemoehybrid"),
}


def randomise_weights(model: torch.nn.Module) -> None:
    """Every tensor of a HF model or ours random (Mamba's A_log kept): norms away from 1, routers sharp
    enough to pick distinct experts, so a dropped, transposed or mis-scaled tensor changes the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                continue
            scale = 1.0 if "router" in name or "scorer" in name else 0.2
            param.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn_like(param))


def assert_same_logits(ours, theirs, vocab_size: int) -> None:
    """Our logits equal transformers' on random ids within 1e-4 relative (float32)."""
    ids = torch.randint(0, vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
