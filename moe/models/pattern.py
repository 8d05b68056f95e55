"""Layer patterns: which decoder blocks hold an MoE layer instead of a dense FFN, and which token mixer
each block has.

Three ways to say it, as in the literature's models:
- every n-th block (Switch / GShard use every other block: ``every=2``; Mixtral ``every=1``),
- the first k blocks stay dense (DeepSeek-MoE ``first_k_dense_replace``),
- an explicit list of block indices (overrides the two above).
With every n-th, the MoE blocks are those with (i - first_dense) % every == every - 1, so ``every=2``
makes blocks 1, 3, 5, … MoE (the GShard convention of a dense block first).
"""

from __future__ import annotations

from collections.abc import Sequence


def moe_block_indices(
    *, n_layers: int, every: int = 1, first_dense: int = 0, layers: Sequence[int] | None = None
) -> list[int]:
    if layers is not None:
        bad = [i for i in layers if not 0 <= int(i) < n_layers]
        if bad:
            raise ValueError(f"model.moe_layers={list(layers)} has indices outside [0, n_layers={n_layers}): {bad}")
        return sorted({int(i) for i in layers})
    if every < 1:
        raise ValueError(f"model.moe_every={every} must be >= 1")
    if not 0 <= first_dense <= n_layers:
        raise ValueError(f"model.moe_first_dense={first_dense} must lie in [0, n_layers={n_layers}]")
    return [i for i in range(first_dense, n_layers) if (i - first_dense) % every == every - 1]


def mixer_names(*, n_layers: int, attention: str, ssm: str, every: int = 1, offset: int = 0,
                layers: Sequence[str] | None = None) -> list[str]:
    """The token mixer of each block. Hybrids as Jamba (2403.19887) states them: block i attends iff
    i % every == offset (Jamba: every 8, offset 4), the others run ``ssm``; ``every=1`` (offset 0) is an
    attention-only model. ``layers``, an explicit list of mixer names, overrides both."""
    if layers is not None:
        if len(layers) != n_layers:
            raise ValueError(f"model.mixer_layers has {len(layers)} entries for n_layers={n_layers}")
        return [str(name) for name in layers]
    if every < 1:
        raise ValueError(f"model.attention_every={every} must be >= 1")
    if not 0 <= offset < every:
        raise ValueError(f"model.attention_offset={offset} must lie in [0, attention_every={every})")
    return [attention if i % every == offset else ssm for i in range(n_layers)]
