"""Typed, validated views of the ``trainer`` and ``optim`` config nodes.

Hydra already rejects unknown keys on the command line; these dataclasses check the *values* (and
unknown or missing keys when ``moe.training.run`` is called with a plain dict) at build time, before any
file of the run is written, with messages that name the field and the allowed values.

The fields have no defaults: ``configs/trainer/default.yaml`` and ``configs/optim/adamw.yaml`` are the
one place each default lives (tests/test_config_defaults.py fails if the two sides ever disagree on
which knobs exist).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from moe.config_types import describe, has_type
from moe.schedule_resume import POLICIES as SCHEDULE_POLICIES

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")  # auto: bf16 where native, else no (moe/precision.py)
# What trainer.freeze holds fixed (moe/finetune.py freeze_parameters): nothing, every router parameter,
# the routed experts' weights, or everything except the routed experts' weights (Aurora-style fine-tuning).
FREEZE = ("none", "router", "experts", "all_but_experts")


def from_mapping(cls, values: dict[str, Any], node: str):
    """``cls(**values)`` with a clear error for unknown or missing keys."""
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{node}: unknown option(s) {unknown}; allowed: {allowed}")
    missing = [name for name in allowed if name not in values]
    if missing:
        raise ValueError(f"{node}: missing option(s) {missing}; compose the run config from configs/ "
                         f"(its {node} group sets every one)")
    for name, hint in typing.get_type_hints(cls).items():
        _require(has_type(values[name], hint), f"{node}.{name}={values[name]!r} must be {describe(hint)}")
    return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int
    batch_size: int  # sequences per micro-batch, over all data-parallel processes (moe/batches.py)
    grad_accum_steps: int
    mixed_precision: str
    log_every: int
    eval_every: int
    eval_sequences_per_domain: int | None  # None: the whole validation split
    train_sequences_per_domain: int | None  # None: the whole training split; n: the first n of each domain
    save_every: int
    keep_last: int
    resume: bool
    seed: int
    cpu: bool  # train on the CPU even when an accelerator is present
    compile_moe: bool  # torch.compile each MoE layer in place (nn.Module.compile)
    compile_mamba: bool  # torch.compile the chunk of every Mamba-1 mixer's scan (moe/models/mamba.py)
    progress: bool
    domain_pure_batches: bool  # each micro-batch from one domain, domains in turn (moe/batches.py)
    freeze: str | tuple[str, ...]  # one of FREEZE, or a list of them (their union is frozen)
    peak_flops: float | None  # FLOP/s of one device for MFU (moe/flops.py); None: measured by a matmul probe
    threads: int | None  # torch CPU threads while the run trains (moe/cpu_threads.py); None: torch's default

    def __post_init__(self):
        freeze = (self.freeze,) if isinstance(self.freeze, str) else tuple(self.freeze)
        _require(bool(freeze) and all(f in FREEZE for f in freeze),
                 f"trainer.freeze={self.freeze!r} is not one of {FREEZE} (or a list of them)")
        _require(len(freeze) == 1 or "none" not in freeze,
                 f"trainer.freeze={list(freeze)}: 'none' combines with nothing")
        object.__setattr__(self, "freeze", freeze)  # normalised to a tuple (the dataclass is frozen)
        _require(isinstance(self.max_steps, int) and self.max_steps >= 0,
                 f"trainer.max_steps={self.max_steps!r} must be an integer >= 0 (0: only write the initial checkpoint)")
        for name in ("batch_size", "grad_accum_steps", "log_every", "eval_every", "save_every"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value >= 1, f"trainer.{name}={value!r} must be an integer >= 1")
        for name in ("eval_sequences_per_domain", "train_sequences_per_domain"):
            value = getattr(self, name)
            _require(value is None or value >= 1,
                     f"trainer.{name}={value!r} must be an integer >= 1 or null (the whole split)")
        _require(self.peak_flops is None or self.peak_flops > 0,
                 f"trainer.peak_flops={self.peak_flops!r} must be a number > 0 (FLOP/s of one device) or null "
                 f"(measure)")
        _require(self.threads is None or self.threads >= 1,
                 f"trainer.threads={self.threads!r} must be an integer >= 1 or null (torch's default: one per core)")
        _require(self.keep_last >= 0, f"trainer.keep_last={self.keep_last} must be >= 0 (0 keeps all)")
        _require(
            self.mixed_precision in MIXED_PRECISION,
            f"trainer.mixed_precision={self.mixed_precision!r} is not one of {MIXED_PRECISION}",
        )


@dataclass(frozen=True)
class OptimConfig:
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    warmup_steps: int
    schedule: str
    min_lr_ratio: float
    decay_fraction: float
    decay_shape: str
    grad_clip: float
    router_lr_scale: float
    fused: bool
    schedule_on_resume: str

    def __post_init__(self):
        _require(self.lr > 0, f"optim.lr={self.lr} must be > 0")
        _require(self.router_lr_scale > 0, f"optim.router_lr_scale={self.router_lr_scale} must be > 0")
        _require(self.weight_decay >= 0, f"optim.weight_decay={self.weight_decay} must be >= 0")
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        _require(self.grad_clip >= 0, f"optim.grad_clip={self.grad_clip} must be >= 0 (0 disables)")
        _require(self.schedule_on_resume in SCHEDULE_POLICIES,
                 f"optim.schedule_on_resume={self.schedule_on_resume!r} is not one of {SCHEDULE_POLICIES}")
