"""Learning-rate schedules: the LR multiplier of optimizer step s (s counts optimizer steps, not
micro-steps), for ``torch.optim.lr_scheduler.LambdaLR``. Both start with a linear warmup over W =
``warmup_steps`` steps, lr(s) = lr · (s + 1) / W, and end at r = ``min_lr_ratio`` of the peak:

- ``cosine``: lr · (r + (1 − r) · ½ (1 + cos(π · (s − W) / (N − W)))) for s ≥ W, N = ``max_steps``.
- ``wsd`` (warmup-stable-decay; Hu et al. 2024, MiniCPM, arXiv 2404.06395): the peak LR holds until the
  last D = round(``decay_fraction`` · N) steps, which cool it down to r. The cooldown's shape is
  ``sqrt``, lr · (r + (1 − r) · (1 − √x)) with x the fraction of the cooldown done (Hägele et al. 2024,
  arXiv 2405.18392, found this "1 − sqrt" shape better than a linear one), or ``linear``, 1 − x in
  its place. A run's schedule does not depend on its length until the cooldown starts, so a
  checkpoint of the stable phase can be continued to any length (``optim.schedule_on_resume=stretch``
  moves only the cooldown); ``decay_fraction: 0`` keeps the peak LR to the end.

Past N both hold their final value.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "wsd")
DECAY_SHAPES = ("sqrt", "linear")


def lr_multiplier(*, schedule: str = "cosine", warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1,
                  decay_fraction: float = 0.2, decay_shape: str = "sqrt") -> Callable[[int], float]:
    """The multiplier of ``schedule`` over ``max_steps`` steps; raises ValueError naming a bad option."""
    # warmup_steps > max_steps is allowed: a short run then simply ends before the peak LR
    if warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={warmup_steps} must be >= 0")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"optim.min_lr_ratio={min_lr_ratio} must lie in [0, 1]")
    # the cooldown options are checked whatever the schedule: a typo is refused before it matters
    if not 0.0 <= decay_fraction <= 1.0:
        raise ValueError(f"optim.decay_fraction={decay_fraction} must lie in [0, 1]")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"optim.decay_shape={decay_shape!r} is not one of {DECAY_SHAPES}")
    if schedule == "cosine":
        return warmup_cosine(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio)
    if schedule == "wsd":
        return warmup_stable_decay(warmup_steps=warmup_steps, max_steps=max_steps, min_lr_ratio=min_lr_ratio,
                                   decay_fraction=decay_fraction, decay_shape=decay_shape)
    raise ValueError(f"optim.schedule={schedule!r} is not one of {SCHEDULES}")


def warmup_cosine(*, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


def warmup_stable_decay(*, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1,
                        decay_fraction: float = 0.2, decay_shape: str = "sqrt") -> Callable[[int], float]:
    # the cooldown never eats into the warmup: a short run warms up, then cools down at once
    decay_start = max(warmup_steps, max_steps - round(decay_fraction * max_steps))
    decay_steps = max_steps - decay_start

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < decay_start or decay_steps <= 0:
            return 1.0
        done = min(1.0, (step - decay_start) / decay_steps)
        remaining = 1 - math.sqrt(done) if decay_shape == "sqrt" else 1 - done
        return min_lr_ratio + (1 - min_lr_ratio) * remaining

    return multiplier
