"""The decoder backbone: pre-norm blocks of (RMSNorm → attention) and (RMSNorm → FFN), where the
attention is GQA (moe/models/attention.py) or DeepSeek's multi-head latent attention
(``attention: mla``, moe/models/mla.py), and the FFN of each block is dense SwiGLU or an
:class:`moe.layer.MoELayer` according to the layer pattern (moe/models/pattern.py). A dense model is the
same backbone with ``num_experts=0``.

The objective is  loss = CE(logits, next token) + Σ_layers Σ_balancers coeff · aux_loss,
summing over MoE layers as Megatron-Core and ST-MoE do (each layer carries its own aux loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moe.layer import LayerAux, MoELayer
from moe.models.attention import Attention
from moe.models.ffn import GELUMLP, SwiGLU
from moe.models.mla import MLAttention
from moe.models.pattern import moe_block_indices
from moe.shared_expert import SharedExpert


@dataclass
class ModelOutput:
    """logits [B, S, V]; ``loss`` = lm_loss + Σ coeff·aux (None without targets);
    ``aux_losses`` maps "layer{i}/{name}" to the unscaled loss; ``layer_aux`` maps MoE block index to
    its :class:`LayerAux` (routing and losses) for statistics."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    aux_coeffs: dict[str, float] = field(default_factory=dict)
    layer_aux: dict[int, LayerAux] = field(default_factory=dict)

    @property
    def aux_loss(self) -> torch.Tensor | float:
        """Σ coeff · aux over layers and balancers (0.0 for a dense model)."""
        return sum((self.aux_coeffs[k] * v for k, v in self.aux_losses.items()), 0.0)


NORMS = {"rmsnorm": nn.RMSNorm, "layernorm": nn.LayerNorm}
POSITIONS = ("rope", "learned")
MLPS = {"swiglu": SwiGLU, "gelu": GELUMLP}
ATTENTIONS = ("gqa", "mla")


class Block(nn.Module):
    def __init__(self, *, attention: Attention | MLAttention, ffn: nn.Module, d_model: int, norm_eps: float,
                 norm: str = "rmsnorm"):
        super().__init__()
        self.attn_norm = NORMS[norm](d_model, eps=norm_eps)
        self.attention = attention
        self.ffn_norm = NORMS[norm](d_model, eps=norm_eps)
        self.ffn = ffn

    @property
    def is_moe(self) -> bool:
        return isinstance(self.ffn, MoELayer)

    def forward(self, x_BSD: torch.Tensor, input_ids_BS: torch.Tensor) -> tuple[torch.Tensor, LayerAux | None]:
        x_BSD = x_BSD + self.attention(self.attn_norm(x_BSD))
        h_BSD = self.ffn_norm(x_BSD)
        if self.is_moe:
            y_BSD, aux = self.ffn(h_BSD, input_ids_BS)
            return x_BSD + y_BSD, aux
        return x_BSD + self.ffn(h_BSD), None


class DecoderLM(nn.Module):
    """Decoder-only LM. ``router``, ``experts`` and each of ``balancers`` are factories (Hydra
    ``_partial_: true``) called once per MoE layer, so stateful parts are per layer."""

    def __init__(
        self,
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
        mlp: str = "swiglu",
        tie_embeddings: bool = True,
        init_std: float = 0.02,
        num_experts: int = 0,
        expert_d_ff: int | None = None,
        num_shared_experts: int = 0,
        shared_expert_d_ff: int | None = None,
        shared_expert_gate: bool = False,
        capacity_factor: float | None = None,
        eval_capacity_factor: float | None = None,
        drop_policy: str = "probs",
        moe_every: int = 1,
        moe_first_dense: int = 0,
        moe_layers: Sequence[int] | None = None,
        router: Callable[..., nn.Module] | None = None,
        experts: Callable[..., nn.Module] | None = None,
        balancers: Mapping[str, Callable[..., nn.Module]] | None = None,
    ):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("n_layers", n_layers),
                            ("n_heads", n_heads), ("d_ff", d_ff), ("max_seq_len", max_seq_len)):
            if value < 1:
                raise ValueError(f"model.{name}={value} must be >= 1")
        if num_experts < 0:
            raise ValueError(f"model.num_experts={num_experts} must be >= 0 (0 = dense model)")
        if num_shared_experts < 0:
            raise ValueError(f"model.num_shared_experts={num_shared_experts} must be >= 0")
        for name, value, allowed in (("norm", norm, tuple(NORMS)), ("position", position, POSITIONS),
                                     ("mlp", mlp, tuple(MLPS)), ("attention", attention, ATTENTIONS)):
            if value not in allowed:
                raise ValueError(f"model.{name}={value!r} is not one of {allowed}")
        if attention == "mla":  # MLA has its own RoPE part and no q/k norm or biases
            for name, value, fine in (("qk_norm", qk_norm, False), ("attention_bias", attention_bias, False),
                                      ("attention_out_bias", attention_out_bias, False),
                                      ("position", position, "rope")):
                if value != fine:
                    raise ValueError(f"model.{name}={value!r} is not supported with model.attention=mla "
                                     f"(allowed: {fine!r})")
        mla_sizes = dict(q_lora_rank=q_lora_rank, kv_lora_rank=kv_lora_rank, qk_nope_head_dim=qk_nope_head_dim,
                         qk_rope_head_dim=qk_rope_head_dim, v_head_dim=v_head_dim)
        if num_experts > 0 and mlp != "swiglu":
            raise ValueError(f"model.mlp={mlp!r}: MoE experts are SwiGLU; a GELU MLP model stays dense "
                             f"(upcycle it with moe.upcycle.upcycle_module)")
        self.moe_indices = (
            moe_block_indices(n_layers=n_layers, every=moe_every, first_dense=moe_first_dense, layers=moe_layers)
            if num_experts > 0 else []
        )
        if self.moe_indices and (router is None or experts is None):
            raise ValueError("an MoE model (num_experts > 0) needs a router and an experts factory")
        self.vocab_size, self.max_seq_len, self.init_std = vocab_size, max_seq_len, init_std
        self.rope_theta = float(rope_theta)  # kept for HF export (save_hf), which writes it into config.json
        self.embed = nn.Embedding(vocab_size, d_model)
        # learned absolute positions (GPT-2) instead of RoPE inside attention
        self.pos_embed = nn.Embedding(max_seq_len, d_model) if position == "learned" else None
        self.blocks = nn.ModuleList()
        for i in range(n_layers):
            if attention == "mla":  # n_kv_heads is unused: every head gets its own k, v from the shared latent
                attn = MLAttention(d_model=d_model, n_heads=n_heads, max_seq_len=max_seq_len, rope_theta=rope_theta,
                                   **mla_sizes)
            else:
                attn = Attention(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads or n_heads,
                                 max_seq_len=max_seq_len, rope_theta=rope_theta, qk_norm=qk_norm,
                                 qk_norm_scope=qk_norm_scope,
                                 norm_eps=norm_eps, attention_bias=attention_bias, out_bias=attention_out_bias,
                                 rope=position == "rope")
            if i in self.moe_indices:
                ffn = MoELayer(
                    router=router(d_model=d_model, num_experts=num_experts),
                    experts=experts(num_experts=num_experts, d_model=d_model, d_ff=expert_d_ff or d_ff),
                    balancers={name: make() for name, make in (balancers or {}).items()},
                    shared_expert=SharedExpert(
                        d_model=d_model, num_experts=num_shared_experts, d_ff=shared_expert_d_ff or expert_d_ff or d_ff,
                        gate=shared_expert_gate,
                    ) if num_shared_experts else None,
                    layer_index=i,
                    capacity_factor=capacity_factor,
                    eval_capacity_factor=eval_capacity_factor,
                    drop_policy=drop_policy,
                )
            else:
                ffn = MLPS[mlp](d_model=d_model, d_ff=d_ff)
            self.blocks.append(Block(attention=attn, ffn=ffn, d_model=d_model, norm_eps=norm_eps, norm=norm))
        self.final_norm = NORMS[norm](d_model, eps=norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters(n_layers)

    def reset_parameters(self, n_layers: int) -> None:
        """N(0, init_std) everywhere; projections into the residual stream scaled by 1/sqrt(2·L)
        (GPT-2) so the residual variance does not grow with depth (GQA's and MLA's ``o_proj`` alike).
        Routers keep their own init."""
        residual_std = self.init_std / math.sqrt(2 * n_layers)
        for name, param in self.named_parameters():
            if ".router." in name or param.dim() < 2:
                continue
            is_residual_out = name.endswith(("o_proj.weight", "down.weight", ".proj.weight", "w_down_EFD"))
            nn.init.normal_(param, std=residual_std if is_residual_out else self.init_std)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [block.ffn for block in self.blocks if block.is_moe]

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        """input_ids [B, S] → logits [B, S, V]; with targets [B, S] also the losses
        (targets equal to -100 are ignored)."""
        x_BSD = self.embed(input_ids)
        if self.pos_embed is not None:
            x_BSD = x_BSD + self.pos_embed(torch.arange(input_ids.shape[1], device=input_ids.device))
        out = ModelOutput(logits=x_BSD)
        for i, block in enumerate(self.blocks):
            x_BSD, aux = block(x_BSD, input_ids)
            if aux is not None:
                out.layer_aux[i] = aux
                for name, loss in aux.losses.items():
                    out.aux_losses[f"layer{i}/{name}"] = loss
                    out.aux_coeffs[f"layer{i}/{name}"] = aux.coeffs[name]
        out.logits = self.lm_head(self.final_norm(x_BSD))
        if targets is not None:
            out.lm_loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            out.loss = out.lm_loss + out.aux_loss
        return out

    def on_optimizer_step(self) -> None:
        """Forward the per-optimizer-step hook to every balancer (bias updates, buffer resets)."""
        for layer in self.moe_layers:
            layer.on_optimizer_step()
