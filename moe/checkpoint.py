"""Checkpoints in a run directory, written atomically.

Layout::

    RUN_DIR/config.yaml                    the resolved run config
    RUN_DIR/metrics.jsonl                  one JSON object per log step
    RUN_DIR/checkpoints/step_0000200/
        model.safetensors                  weights (tied embeddings stored once), unsharded
        config.yaml                        the config that built them (load_model needs only this dir)
        optimizer/                         optimizer state by parameter name (torch.distributed.checkpoint)
        train_state.pt                     LR scheduler
        rng/rank{r}.pt                     each rank's RNG states (moe/parallel/train_state.py)
        meta.json                          step, micro-step (the data position), tokens seen, versions

(Checkpoints written before 2026-12-01 hold ``accelerate/``, from ``accelerator.save_state``, instead of
``optimizer/``, ``train_state.pt`` and ``rng/``; they still resume.) Whatever the run's parallel layout,
a checkpoint loads into any other: the weights are unsharded, the optimizer state is resharded on load.

A checkpoint is assembled in a hidden temporary directory and renamed into place in one step, and
``meta.json`` is its last file: a directory without it is never taken for a checkpoint, so a run
killed mid-save leaves the previous checkpoint as the latest. Existing checkpoints are never
overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from moe.config_upgrade import upgrade_config

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_config(path: Path, config: dict[str, Any]) -> None:
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))


def read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"no config.yaml at {path}")
    return upgrade_config(yaml.safe_load(path.read_text()))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with meta.json) of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "meta.json").is_file()]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the latest checkpoint of a run directory."""
    path = Path(path)
    if (path / "meta.json").is_file() and (path / "model.safetensors").is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a run directory with checkpoints")
    return latest


def read_meta(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"checkpoint {checkpoint} has an unreadable meta.json: {err}") from err


def begin_checkpoint(run_dir: str | Path, step: int) -> tuple[Path, Path]:
    """(temporary dir to fill, final dir). Raises if the final dir exists: never overwrite."""
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"step_{step:07d}"
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists; refusing to overwrite it")
    tmp = root / f".tmp_step_{step:07d}"
    if tmp.exists():  # leftover of a run killed mid-save
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp, final


def commit_checkpoint(tmp: Path, final: Path, meta: dict[str, Any], keep_last: int | None) -> None:
    """Write meta.json last, rename into place, then prune the oldest beyond ``keep_last``."""
    write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=2))
    os.replace(tmp, final)
    if keep_last:
        for old in list_checkpoints(final.parent.parent)[:-keep_last]:
            shutil.rmtree(old)
