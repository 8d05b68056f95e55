"""Whether the arms of a paired comparison started from the reference's initial weights at each seed.

Pairing by seed shares the data order (moe/batches.py). The initial weights are shared only where the
draws allow it (moe/models/init_by_name.py):

- ``init.draws=by_name`` in the arm and the reference: every parameter they both have starts equal;
- ``init.draws=sequence`` (one random stream in parameter order) and the same parameters, in the
  same order and shapes: the same draws, so the same weights (the routers of the zoo draw their
  constructors' numbers in their parameters); with other parameters, every draw after the first one
  that differs is shifted, and the arm starts from other weights;
- a run that did not start from scratch (``init=checkpoint``/``upcycle``/``carve``) took its weights from
  ``init.path``: it is named, and only its data order counts as paired.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class InitialDraws:
    """How one arm drew its initial weights: ``draws`` is ``sequence``, ``by_name`` or None (not from
    scratch); ``parameters`` the (name, shape) of each parameter in order."""

    draws: str | None
    parameters: tuple[tuple[str, tuple[int, ...]], ...]


def initial_weights_note(arms: Mapping[str, InitialDraws], reference: str) -> str:
    """One Markdown sentence for compare.md: which arms start from the reference's weights at a seed."""
    ref = arms[reference]
    not_scratch = sorted(arm for arm, d in arms.items() if d.draws is None)
    if not_scratch:
        return (f"Initial weights: {', '.join(f'`{a}`' for a in not_scratch)} did not start from scratch "
                f"(their init.path), so only the data order is paired.")
    # paired: both by name, or both in sequence over the same parameters
    unpaired = sorted(arm for arm, d in arms.items() if arm != reference and not (
        d.draws == ref.draws and (d.draws == "by_name" or d.parameters == ref.parameters)))
    if unpaired:
        return (f"Initial weights: {', '.join(f'`{a}`' for a in unpaired)} drew them otherwise than "
                f"`{reference}` (other parameters in one random stream, or another `init.draws`), so at a "
                f"seed they start from other weights and only the data order is paired; `init.draws=by_name` "
                f"pairs the weights too.")
    how = "by name" if ref.draws == "by_name" else "in one random stream, with the same parameters"
    return (f"Initial weights: every arm drew them {how} as `{reference}`, so at a seed each starts from the "
            f"reference's weights wherever it has the same parameter, and reads the same data.")
