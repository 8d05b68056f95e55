"""Which learning-rate schedule a resumed run follows when ``trainer.max_steps`` changed.

The LR multiplier is a function of (step, schedule length), so resuming a 10-step run with
``trainer.max_steps=15`` and a schedule rebuilt for 15 steps would jump the LR from the end of one
cosine back up the middle of another (3.0e-4 → 1.2e-3 at the default LR). Silently doing that changes
the experiment, so the length change must be chosen with ``optim.schedule_on_resume``:

- ``error`` (default): refuse, naming the two lengths and both options, before any work starts;
- ``keep``: continue the schedule the checkpoint was trained with (its length is recorded in the
  checkpoint's meta.json as ``schedule_max_steps``) and hold its final LR beyond its end — the usual
  "train longer at the annealed LR";
- ``stretch``: a schedule over the new length from step 0 (the LR jumps at the resume step; a warning
  gives both values). A warmup-stable-decay run stretched in its stable phase does not jump: its
  cooldown simply moves to the new end (moe/lr_schedule.py).

A resumed run with an unchanged ``max_steps`` follows its schedule whatever the option.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

POLICIES = ("error", "keep", "stretch")


def recorded_schedule_steps(meta: Mapping[str, Any], checkpoint_config: Mapping[str, Any]) -> int:
    """The schedule length a checkpoint was trained with (older checkpoints: their trainer.max_steps)."""
    if "schedule_max_steps" in meta:
        return int(meta["schedule_max_steps"])
    return int(checkpoint_config["trainer"]["max_steps"])


def schedule_steps_on_resume(*, recorded: int, requested: int, policy: str, step: int,
                             multiplier_for: Callable[[int], Callable[[int], float]], lr: float,
                             checkpoint_lr: float | None = None) -> int:
    """The schedule length to use after resuming at ``step``; ``multiplier_for(length)`` builds the LR
    multiplier of a schedule of that length (for the messages). ``checkpoint_lr``: the LR the checkpoint's
    scheduler holds for its next step, which differs from the recorded length's under today's options
    when the options changed (e.g. a constant-LR run continued into a cooldown); None: unknown."""
    if policy not in POLICIES:
        raise ValueError(f"optim.schedule_on_resume={policy!r} is not one of {POLICIES}")
    if recorded == requested:
        return requested
    kept, stretched = lr * multiplier_for(recorded)(step), lr * multiplier_for(requested)(step)
    before = kept if checkpoint_lr is None else checkpoint_lr
    if policy == "error":
        raise ValueError(
            f"trainer.max_steps={requested} differs from the {recorded}-step schedule the checkpoint was trained "
            f"with; set optim.schedule_on_resume=keep (continue that schedule, LR {kept:.3g} at step {step + 1}, "
            f"held after step {recorded}) or optim.schedule_on_resume=stretch (a {requested}-step schedule: the LR "
            f"jumps to {stretched:.3g})")
    if policy == "stretch":
        if not math.isclose(before, stretched):  # e.g. a warmup-stable-decay run in its stable phase
            warnings.warn(f"optim.schedule_on_resume=stretch: the LR schedule now spans {requested} steps instead of "
                          f"{recorded}; at step {step + 1} the LR jumps from {before:.3g} to {stretched:.3g}",
                          UserWarning, stacklevel=2)
        return requested
    return recorded
