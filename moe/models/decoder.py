"""The decoder backbone as a plain module of built parts: an embedding (plus learned positions for
GPT-2), a stack of pre-norm blocks, a final norm and the LM head.

Each :class:`Block` is a **token mixer** (today GQA attention, moe/models/attention.py, or DeepSeek's
multi-head latent attention, moe/models/mla.py) and an **FFN** (dense SwiGLU/GELU, an
:class:`moe.layer.MoELayer`, or none), each behind its own norm. Which mixer and which FFN each block
gets is decided by the builder (moe/models/builder.py) from the model config and the layer pattern
(moe/models/pattern.py); validation and wiring live there, so a new mixer plugs in without touching
this file. A dense model is the same backbone with dense FFNs only.

The objective is  loss = CE(logits, next token) + Σ_layers Σ_balancers coeff · aux_loss,
summing over MoE layers as Megatron-Core and ST-MoE do (each layer carries its own aux loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moe.config_upgrade import rename_state_keys
from moe.layer import LayerAux, MoELayer, finish_summed_losses, step_balancers
from moe.models.decode_state import DecodeState
from moe.types import mixer_site


@dataclass
class ModelOutput:
    """logits [B, S, V]; ``loss`` = lm_loss + Σ coeff·aux (None without targets);
    ``aux_losses`` maps "layer{i}/{name}" to the unscaled loss; ``layer_aux`` maps each routed site to its
    :class:`LayerAux` (routing and losses) for statistics: the block index i for an MoE FFN,
    ``mixer_site(i)`` ("i.moa") for a routed mixer."""

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


class Block(nn.Module):
    """x + mixer(norm(x)), then x + ffn(norm(x)) (no FFN sub-layer when ``ffn`` is None). A routed mixer
    (an :class:`MoELayer` such as the mixture of attention heads) reports its routing like an MoE FFN."""

    # state-dict names from before the mixer was named for its role → their names now
    LEGACY_KEYS = {"attn_norm.": "mixer_norm.", "attention.": "mixer."}

    def __init__(self, *, mixer: nn.Module, ffn: nn.Module | None, mixer_norm: nn.Module,
                 ffn_norm: nn.Module | None, mixer_input: nn.Module | None = None):
        """``mixer_input(x, embeds)``, when given, is added to what the mixer reads (not to the residual
        stream): Zamba's shared attention block (moe/models/shared_attention.py)."""
        super().__init__()
        self.mixer_norm, self.mixer = mixer_norm, mixer
        self.ffn_norm, self.ffn = ffn_norm, ffn
        self.mixer_input = mixer_input

    @property
    def is_moe(self) -> bool:
        """Whether the FFN is an MoE layer."""
        return isinstance(self.ffn, MoELayer)

    @property
    def routes_mixer(self) -> bool:
        """Whether the token mixer is routed (an MoELayer: mixture of attention heads)."""
        return isinstance(self.mixer, MoELayer)

    def forward(self, x_BSD: torch.Tensor, input_ids_BS: torch.Tensor, embeds_BSD: torch.Tensor | None = None,
                *, mixer_cache: dict | None = None, input_cache: dict | None = None
                ) -> tuple[torch.Tensor, LayerAux | None, LayerAux | None]:
        """(x_BSD, the mixer's LayerAux, the FFN's LayerAux); None for a part that does not route. The model
        finishes every layer's summed losses at once (finish_summed_losses), hence ``defer_sums``.
        ``embeds_BSD``: the model's input embeddings, for a ``mixer_input``. ``mixer_cache`` / ``input_cache``:
        the decode state of the mixer and of the mixer input (moe/models/decode_state.py)."""
        mixer_aux = ffn_aux = None
        mixer_in_BSD = x_BSD
        if self.mixer_input is not None:
            mixer_in_BSD = x_BSD + self.mixer_input(x_BSD, embeds_BSD, input_cache)
        h_BSD = self.mixer_norm(mixer_in_BSD)
        cached = {} if mixer_cache is None else {"cache": mixer_cache}  # custom mixers need not take a cache
        if self.routes_mixer:
            y_BSD, mixer_aux = self.mixer(h_BSD, input_ids_BS, defer_sums=True, **cached)
        else:
            y_BSD = self.mixer(h_BSD, **cached)
        x_BSD = x_BSD + y_BSD
        if self.ffn is None:
            return x_BSD, mixer_aux, None
        h_BSD = self.ffn_norm(x_BSD)
        if self.is_moe:
            y_BSD, ffn_aux = self.ffn(h_BSD, input_ids_BS, defer_sums=True)
        else:
            y_BSD = self.ffn(h_BSD)
        return x_BSD + y_BSD, mixer_aux, ffn_aux

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        rename_state_keys(state_dict, prefix, self.LEGACY_KEYS)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DecoderLM(nn.Module):
    """Decoder-only LM of built parts (build one from a model config with
    :func:`moe.models.builder.build_decoder`, the ``_target_`` of every model config)."""

    def __init__(self, *, embed: nn.Embedding, blocks: list[Block], final_norm: nn.Module, lm_head: nn.Linear,
                 pos_embed: nn.Embedding | None = None, max_seq_len: int, init_std: float, rope_theta: float,
                 embedding_multiplier: float = 1.0, logits_scaling: float = 1.0):
        """``embedding_multiplier`` scales the token embeddings, ``logits_scaling`` divides the logits
        (Granite's constants, which survive tied embeddings; 1.0 elsewhere)."""
        super().__init__()
        self.embedding_multiplier, self.logits_scaling = float(embedding_multiplier), float(logits_scaling)
        self.vocab_size, self.max_seq_len, self.init_std = embed.num_embeddings, max_seq_len, init_std
        self.rope_theta = float(rope_theta)  # kept for HF export (save_hf), which writes it into config.json
        self.embed = embed
        self.pos_embed = pos_embed  # learned absolute positions (GPT-2) instead of RoPE inside attention
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm
        self.lm_head = lm_head

    @property
    def moe_indices(self) -> list[int]:
        """Indices of the blocks whose FFN is an MoE layer."""
        return [i for i, block in enumerate(self.blocks) if block.is_moe]

    @property
    def moe_layers(self) -> list[MoELayer]:
        """Every routed layer: MoE FFNs and routed mixers (their balancers step, their experts count as
        partly active)."""
        return [part for block in self.blocks for part in (block.mixer, block.ffn) if isinstance(part, MoELayer)]

    def reset_parameters(self) -> None:
        """N(0, init_std) everywhere; projections into the residual stream scaled by 1/sqrt(2·L)
        (GPT-2) so the residual variance does not grow with depth (GQA's and MLA's ``o_proj`` alike).
        Routers keep their own init. The draws come from the global random stream in parameter order;
        ``init.draws=by_name`` (moe/models/init_by_name.py) redraws each from a generator of its own."""
        for name, param in self.named_parameters():
            if (std := self.initial_std(name, param)) is not None:
                nn.init.normal_(param, std=std)

    def initial_std(self, name: str, param: torch.Tensor) -> float | None:
        """The std ``reset_parameters`` draws parameter ``name`` with; None for the parameters that keep
        their own init (routers, vectors, expert biases, Mamba's A, MPO cores and LoRA)."""
        last = name.rsplit(".", 1)[-1]
        if (".router." in name or param.dim() < 2 or last.startswith("b_") or last == "A_log"
                or ".cores." in name or ".lora." in name):
            return None
        is_residual_out = name.endswith(("o_proj.weight", "down.weight", ".proj.weight", "w_down_EFD",
                                         "w_proj_EFD", "out_proj.weight"))
        return self.init_std / math.sqrt(2 * len(self.blocks)) if is_residual_out else self.init_std

    def decode_state(self, pads_B: torch.Tensor | None = None) -> DecodeState:
        """A fresh state for incremental decoding (``forward(ids, state=...)``); ``pads_B``: the left padding
        of each sequence of a batch of prompts of different lengths. Refuses routers that choose tokens per
        expert from the whole batch, whose choice for a token depends on later ones."""
        for layer in self.moe_layers:
            if getattr(layer.router, "top_k", None) is None:
                raise ValueError(f"{type(layer.router).__name__} picks tokens per expert across the sequence: "
                                 f"incremental decoding would route differently; use a token-choice router")
        return DecodeState(pads_B=pads_B)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                state: DecodeState | None = None) -> ModelOutput:
        """input_ids [B, S] → logits [B, S, V]; with targets [B, S] also the losses
        (targets equal to -100 are ignored). With ``state`` (from :meth:`decode_state`) the S tokens continue
        the ones fed before, and the state advances by S."""
        start = 0 if state is None else state.position
        x_BSD = self.embed(input_ids)
        if self.embedding_multiplier != 1.0:
            x_BSD = x_BSD * self.embedding_multiplier
        if self.pos_embed is not None:
            if start + input_ids.shape[1] > self.max_seq_len:
                raise ValueError(f"sequence length {start + input_ids.shape[1]} exceeds model.max_seq_len="
                                 f"{self.max_seq_len}")
            positions = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)
            if state is not None and state.pads_B is not None:  # each sequence counts from its first real token
                positions = (positions - state.pads_B[:, None]).clamp_min(0)
            x_BSD = x_BSD + self.pos_embed(positions)
        embeds_BSD = x_BSD
        out = ModelOutput(logits=x_BSD)
        for i, block in enumerate(self.blocks):
            caches = {} if state is None else {"mixer_cache": state.cache(str(i)),
                                                "input_cache": state.cache(f"{i}.input")}
            x_BSD, mixer_aux, ffn_aux = block(x_BSD, input_ids, embeds_BSD, **caches)
            if mixer_aux is not None:
                out.layer_aux[mixer_site(i)] = mixer_aux
            if ffn_aux is not None:
                out.layer_aux[i] = ffn_aux
        finish_summed_losses(out.layer_aux.values())  # one all-reduce for all layers' global-batch counts
        for i, aux in out.layer_aux.items():
            for name, loss in aux.losses.items():
                out.aux_losses[f"layer{i}/{name}"] = loss
                out.aux_coeffs[f"layer{i}/{name}"] = aux.coeffs[name]
        if state is not None:
            state.position += input_ids.shape[1]
        out.logits = self.lm_head(self.final_norm(x_BSD))
        if self.logits_scaling != 1.0:
            out.logits = out.logits / self.logits_scaling
        if targets is not None:
            out.lm_loss = F.cross_entropy(out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            out.loss = out.lm_loss + out.aux_loss
        return out

    def on_optimizer_step(self) -> None:
        """Forward the per-optimizer-step hook to every balancer (bias updates, buffer resets), with one
        all-reduce for all layers' step statistics."""
        step_balancers(self.moe_layers)
