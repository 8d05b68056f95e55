"""The loss-curve plot of eval/compare.py: train LM loss and val loss per arm, the mean over the arm's
seeds in a band of ± one seed std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: files only, no display, no global figure state


def read_records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _mean_curve(runs: list[Path], key: str) -> list[tuple[int, float, float]]:
    """(step, mean, sample std over the runs) at the steps every run logged ``key``."""
    per_run = [{r["step"]: r[key] for r in read_records(run) if key in r} for run in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return [(step, statistics.fmean(values := [p[step] for p in per_run]),
             statistics.stdev(values) if len(values) > 1 else 0.0) for step in steps]


def _plot_band(ax, curve: list[tuple[int, float, float]], label: str, **style) -> None:
    steps, means, stds = zip(*curve)
    (line,) = ax.plot(steps, means, label=label, linewidth=1, **style)
    if any(stds):
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.2, linewidth=0)


def plot_curves(arms: dict[str, list[Path]], out: Path) -> None:
    """Train and val loss per arm: the mean over its seeds, in a band of ± one seed std."""
    fig = Figure(figsize=(12, 4.5))
    ax_train, ax_val = fig.subplots(1, 2)
    for arm, runs in arms.items():
        label = arm if len(runs) == 1 else f"{arm} (mean ± std of {len(runs)} seeds)"
        if train := _mean_curve(runs, "lm_loss"):
            _plot_band(ax_train, train, label)
        if val := _mean_curve(runs, "val/loss"):
            _plot_band(ax_val, val, label, marker="o")
    ax_train.set(xlabel="optimizer step", ylabel="train LM loss (nats/token)", title="training")
    ax_val.set(xlabel="optimizer step", ylabel="val loss (nats/token)", title="validation")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
