"""Metric sinks. ``metrics.jsonl`` in the run directory is always written (by the training loop);
a logger from ``configs/logger/`` mirrors the same dictionaries elsewhere.

- ``NullLogger`` (``logger=none``): nothing beyond metrics.jsonl.
- ``WandbLogger`` (``logger=wandb``): Weights & Biases, offline by default (``mode: offline``) so it
  works without a network or an account; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args


class NullLogger:
    def __init__(self, *, run_dir: str, config: dict[str, Any]):
        pass

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


Mode = Literal["offline", "online", "disabled"]


class WandbLogger:
    # the annotation lets the config check refuse a bad mode while the logger is still a partial, before
    # the run directory exists; the check in __init__ serves callers from Python
    MODES = get_args(Mode)

    def __init__(
        self,
        *,
        run_dir: str,
        config: dict[str, Any],
        project: str = "moe-lab",
        entity: str | None = None,
        name: str | None = None,
        mode: Mode = "offline",
        tags: Sequence[str] = (),
    ):
        if mode not in self.MODES:
            raise ValueError(f"logger.mode={mode!r} is not one of {self.MODES}")
        import wandb  # imported here: it is slow to import and only this logger needs it

        self._run = wandb.init(
            project=project, entity=entity, name=name, mode=mode, tags=list(tags),
            dir=run_dir, config=config,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self) -> None:
        self._run.finish()
