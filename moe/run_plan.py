"""Step 1 of a training run: turn the composed config into a checked plan, before anything is built.

Everything that depends only on the config and the files on disk happens here, once, in this order:
a mandatory key the user left unset (``???`` in its config file, e.g. ``init.path``) is named; the
``trainer`` and ``optim`` nodes are parsed into their dataclasses (moe/train_config.py) and the LR
schedule is checked; ``init=checkpoint`` adopts the checkpoint's config nodes, ``init=upcycle`` the
dense source's backbone (moe/upcycle/source_backbone.py), ``data.tokenizer=auto`` is resolved
(moe/finetune.py) and a composed ``data.seq_len`` longer than an adopted ``max_seq_len`` is lowered
to it, which gives the config the run records in its config.yaml; the run directory is
checked against ``trainer.resume``; the ``parallel`` node is checked against the launch's world size
(moe/parallel/config.py); a resumed run's schedule length is settled (moe/schedule_resume.py);
``trainer.mixed_precision: auto`` becomes bf16 or no for this machine in the parsed trainer node
(moe/precision.py; config.yaml keeps the request). Nothing later changes the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import MISSING

from moe.checkpoint import latest_checkpoint, read_config, read_meta
from moe.finetune import adopt_checkpoint_config, adopt_upcycle_source, resolve_tokenizer
from moe.lr_schedule import lr_multiplier
from moe.parallel.config import ParallelConfig, checked_parallel, launched_world_size
from moe.parallel.train_state import TRAIN_STATE_FILE
from moe.precision import resolve_mixed_precision
from moe.schedule_resume import recorded_schedule_steps, schedule_steps_on_resume
from moe.train_config import OptimConfig, TrainerConfig, from_mapping
from moe.upcycle.source_backbone import explicit_keys


@dataclass
class RunPlan:
    """A checked run: the config to record and build from, its parsed trainer/optim nodes, where it
    writes, the checkpoint it resumes from (None: a new run) and the length of its LR schedule."""

    config: dict[str, Any]
    trainer: TrainerConfig
    optim: OptimConfig
    run_dir: Path
    resume_from: Path | None
    resumed_meta: dict[str, Any] | None
    schedule_steps: int
    parallel: ParallelConfig = ParallelConfig(expert=1, fsdp=False)
    world_size: int = 1  # processes of the launch (WORLD_SIZE), every one a data-parallel rank

    def schedule(self, length: int | None = None):
        """The LR multiplier of step s (``optim.schedule``) over ``length`` steps (default: the plan's)."""
        length = self.schedule_steps if length is None else length
        return lr_multiplier(schedule=self.optim.schedule, warmup_steps=self.optim.warmup_steps, max_steps=length,
                             min_lr_ratio=self.optim.min_lr_ratio, decay_fraction=self.optim.decay_fraction,
                             decay_shape=self.optim.decay_shape)


def prepare_run(config: dict[str, Any], overrides: Sequence[str] = ()) -> RunPlan:
    """Check and complete ``config``; raises ValueError/FileNotFoundError/FileExistsError naming the key.
    ``overrides`` are the command line's (``model.d_model=64``): what the user set explicitly."""
    if unset := unset_keys(config):
        raise ValueError(f"{unset[0]} has no default and must be given: add {unset[0]}=... to the command line"
                         + (f" (also unset: {', '.join(unset[1:])})" if unset[1:] else ""))
    trainer = from_mapping(TrainerConfig, dict(config["trainer"]), "trainer")
    optim = from_mapping(OptimConfig, dict(config["optim"]), "optim")
    plan = RunPlan(config, trainer, optim, Path(config["run_dir"]), None, None, trainer.max_steps)
    plan.schedule()  # checks warmup/min_lr before anything else
    plan.world_size = launched_world_size()
    adopted = adopt_upcycle_source(adopt_checkpoint_config(config), explicit_keys(overrides, "model"))
    typed_seq_len = "seq_len" in explicit_keys(overrides, "data")
    plan.config = _fit_sequence_length(resolve_tokenizer(adopted), typed=typed_seq_len)  # what config.yaml records
    plan.parallel = checked_parallel(plan.config, plan.world_size)  # after adoption: it knows num_experts
    plan.resume_from = _checked_run_dir(plan.run_dir, trainer.resume)
    if plan.resume_from is not None:
        if plan.parallel.fsdp and not (plan.resume_from / TRAIN_STATE_FILE).is_file():
            raise ValueError(f"parallel.fsdp=true cannot resume {plan.resume_from}: it was written before "
                             f"checkpoints held {TRAIN_STATE_FILE}; resume it once without FSDP")
        plan.resumed_meta = read_meta(plan.resume_from)
        recorded = recorded_schedule_steps(plan.resumed_meta, read_config(plan.resume_from / "config.yaml"))
        plan.schedule_steps = schedule_steps_on_resume(
            recorded=recorded, requested=trainer.max_steps, policy=optim.schedule_on_resume,
            step=plan.resumed_meta["step"], multiplier_for=plan.schedule, lr=optim.lr,
            # the scheduler state is read only when the length changes (the messages need it), not on every resume
            checkpoint_lr=_checkpoint_lr(plan.resume_from) if recorded != trainer.max_steps else None)
    if trainer.mixed_precision == "fp16" and (trainer.cpu or not torch.cuda.is_available()):
        raise ValueError("trainer.mixed_precision='fp16' needs a CUDA device; on the CPU use 'bf16' or 'no'")
    plan.trainer = dataclasses.replace(
        trainer, mixed_precision=resolve_mixed_precision(trainer.mixed_precision, cpu=trainer.cpu))
    return plan


def _checkpoint_lr(checkpoint: Path) -> float | None:
    """The LR the checkpoint's scheduler set for its next step (None for checkpoints without train_state.pt)."""
    path = checkpoint / TRAIN_STATE_FILE
    if not path.is_file():
        return None
    last_lr = torch.load(path, weights_only=False)["scheduler"].get("_last_lr")
    return float(last_lr[0]) if last_lr else None  # group 0 holds the plain parameters at optim.lr


def unset_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is OmegaConf's mandatory-value marker ``???``: a plain dict keeps the
    marker as a string once Hydra's config is converted, and it would otherwise surface as a path."""
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in unset_keys(value, f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if node == MISSING else []


def _fit_sequence_length(config: dict[str, Any], *, typed: bool) -> dict[str, Any]:
    """data.seq_len follows model.max_seq_len when composed (``${model.max_seq_len}``), which may then
    have come from init.path: a longer one is lowered to it, unless the user typed it (an error)."""
    seq_len, max_seq_len = (config.get("data") or {}).get("seq_len"), config["model"].get("max_seq_len")
    if not (isinstance(seq_len, int) and isinstance(max_seq_len, int) and seq_len > max_seq_len):
        return config
    if typed:
        raise ValueError(f"data.seq_len={seq_len} exceeds model.max_seq_len={max_seq_len}; set data.seq_len"
                         f"<={max_seq_len} (the model node may come from init.path)")
    return {**config, "data": {**config["data"], "seq_len": max_seq_len}}


def _checked_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, after checking the run directory fits the request."""
    existing = latest_checkpoint(run_dir)
    if resume and existing is None:
        raise FileNotFoundError(
            f"trainer.resume=true but {run_dir} holds no checkpoint (looked in {run_dir / 'checkpoints'})"
        )
    if not resume and existing is not None:
        raise FileExistsError(
            f"run_dir={run_dir} already holds checkpoints ({existing.name}); pass trainer.resume=true to "
            f"continue it, or choose another run_dir"
        )
    return existing
