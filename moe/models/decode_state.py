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

T, the number of tokens cached, is the position of the next token (RoPE reads it from there). MoE layers
are per token and keep nothing; a router that picks tokens per expert from the whole batch (expert choice)
cannot decode incrementally and is refused by :meth:`DecoderLM.decode_state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecodeState:
    """``position``: tokens consumed so far (learned position embeddings start there); ``caches``: one dict
    per mixer (``"{i}"``) and per shared-attention application (``"{i}.input"``)."""

    position: int = 0
    caches: dict[str, dict] = field(default_factory=dict)

    def cache(self, key: str) -> dict:
        return self.caches.setdefault(key, {})
