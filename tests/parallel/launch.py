"""Launching train.py as 1 process or as N gloo processes under torchrun, for the multi-process tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def train(nproc: int, run_dir: Path, *overrides: str, data_cache: str) -> subprocess.CompletedProcess:
    """``python train.py`` (nproc=1) or ``torchrun --standalone --nproc_per_node N train.py`` (a free port)."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    args = [*launcher, str(REPO / "train.py"), "experiment=smoke", "logger=none", "trainer.progress=false",
            f"data.cache_dir={data_cache}", f"run_dir={run_dir}", *overrides]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
