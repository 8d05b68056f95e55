"""The state of incremental decoding: what a :class:`moe.models.decoder.DecoderLM` carries from one call to the
next so that feeding a sequence in pieces (a prompt, then one token at a time) gives the logits of one full
forward.

Each token mixer keeps its own entries in a plain dict it receives as ``cache``:

- attention (``gqa``, and each application of a Zamba shared block): keys and values, ``k``/``v``
  [B, J, T, d], RoPE already applied;
- ``mla``: the compressed latents c^KV (``k``, [B, T, kv_lora_rank]) and the shared rotated RoPE key
  (``k_rope``), from which every step re-expands the per-head keys and values;
- ``moa``: the keys and values shared by its attention experts;
- ``mamba`` / ``mamba2``: the causal conv's last d_conv − 1 inputs (``conv``) and the SSM state (``ssm``).

T, the number of tokens cached, is the position of the next token (RoPE reads it from there). A batch of
prompts of different lengths is left-padded (``pads_B``: each sequence's padding tokens): attention masks the
padding keys and counts each sequence's positions from its first real token; Mamba zeroes the padding
before and after its conv, so its state is zero until the first real token. MoE layers
are per token and keep nothing; a router that picks tokens per expert from the whole batch (expert choice)
cannot decode incrementally and is refused by :meth:`DecoderLM.decode_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeState:
    """``position``: tokens consumed so far (learned position embeddings start there); ``caches``: one dict
    per mixer (``"{i}"``) and per shared-attention application (``"{i}.input"``); ``pads_B``: left padding
    per sequence, or None."""

    position: int = 0
    caches: dict[str, dict] = field(default_factory=dict)
    pads_B: torch.Tensor | None = None

    def cache(self, key: str) -> dict:
        """The cache of one mixer; in a left-padded batch it carries ``pads_B`` for the mixer to read."""
        return self.caches.setdefault(key, {} if self.pads_B is None else {"pads_B": self.pads_B})
