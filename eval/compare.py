"""Compare runs side by side: one table (Markdown + CSV) and the loss curves on one plot.

    .venv/bin/python eval/compare.py runs/compare_balance --out docs/results/compare_balance
    .venv/bin/python eval/compare.py runs/a runs/b runs/c --out runs/a_vs_b_vs_c

Each argument is a run directory (it has summary.json) or a directory of runs, such as a Hydra
multirun directory (each job's sub-directory is one run, named after its overrides). Per run:

- final val loss and perplexity, overall and per domain (summary.json);
- MaxVio_global: mean over MoE layers of MaxVio over the final eval set, and MaxVio_batch: its mean
  over the training log records of the last quarter of the run (metrics.jsonl);
- specialisation: mean over layers of I(domain; expert) in nats and the TopK score sum, from routing
  the first ``--sequences-per-domain`` validation sequences per domain through the final checkpoint
  (``--no-routing`` skips this);
- tokens/s: the median over the run's log records;
- parameters, total and active per token (moe/analysis/params.py).

Runs that differ only in ``trainer.seed`` are seeds of one arm: compare.md then starts with a table
of each arm's mean ± sample std over its seeds (also OUT/compare_by_arm.csv), and the plot shows each
arm's mean curve with a band of ± one seed std. Writes OUT/compare.md, OUT/compare.csv and
OUT/loss_curves.png (train LM loss, and val loss at the evaluations).

``--reference ARM`` (an arm label as printed, e.g. ``balance=switch_aux``) adds paired comparisons:
for every other arm and every number in ``PAIRED_METRICS``, the mean over seeds of (arm − reference)
with its 95% Student-t interval (moe/analysis/paired.py), the interval-excluding-zero differences in
bold and the others marked "(≈0)" (also OUT/compare_paired.csv), and the seed std of val_loss pooled
over all arms. Pairing needs every arm to hold exactly the reference's seeds (``trainer.seed`` of each
run's config.yaml); a reference that is not an arm, or an arm with other seeds, is an error before
anything is computed. A sentence under the paired table says whether the arms also started from the
reference's initial weights at each seed, or only read the same data (moe/analysis/paired_init.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from compare_plot import plot_curves, read_records
from model_and_data import eval_data, load

from moe.analysis import collect_routing, mean_over_layers, param_counts, summarise
from moe.analysis.paired import check_pairing, paired_difference, pooled_std
from moe.analysis.paired_init import InitialDraws, initial_weights_note
from moe.checkpoint import read_config
from moe.data.packing import first_per_domain


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories (with summary.json) given directly or one level below, in a stable order."""
    runs = []
    for path in map(Path, paths):
        if (path / "summary.json").is_file():
            runs.append(path)
            continue
        found = sorted((p for p in path.glob("*") if (p / "summary.json").is_file()),
                       key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 1 << 30, p.name))
        if not found:
            raise FileNotFoundError(f"{path} is neither a finished run (no summary.json) nor a directory of runs")
        runs.extend(found)
    return runs


def _split_overrides(text: str) -> list[str]:
    """``a=1,b=[x,y]`` → ["a=1", "b=[x,y]"]: commas inside brackets belong to the value."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current] if current else parts


def short_labels(names: list[str]) -> list[str]:
    """Hydra job directories ``N_override,override,...`` without the overrides every run shares."""
    split = [_split_overrides(name) for name in names]
    common = set.intersection(*(set(parts[1:]) for parts in split)) if len(names) > 1 else set()
    return [",".join(part for i, part in enumerate(parts) if i == 0 or part not in common) for parts in split]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()} or {prefix: {}}


def disambiguate(labels: list[str], seeds: list[int], runs: list[Path]) -> list[str]:
    """Runs whose names give the same arm and seed differ in a key the folder names leave out (Hydra's
    ``exclude_keys``: run_dir, trainer.max_steps, ...): their labels get the config values that differ."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (label, seed) in enumerate(zip(labels, seeds)):
        groups.setdefault((arm_of(label), seed), []).append(i)
    labels = list(labels)
    for members in (m for m in groups.values() if len(m) > 1):
        flat = [_flat(read_config(runs[i] / "config.yaml")) for i in members]
        keys = sorted(k for k in set().union(*flat) if k.rstrip(".") != "run_dir"
                      and len({repr(f.get(k)) for f in flat}) > 1)
        for i, values in zip(members, flat):
            labels[i] = ",".join([labels[i], *(f"{k.rstrip('.')}={values.get(k)}" for k in keys)])
    return labels


def _mean_layers(record: dict, prefix: str, stat: str) -> float:
    values = [v for k, v in record.items() if k.startswith(prefix + "layer") and k.endswith("/" + stat)]
    return sum(values) / len(values) if values else math.nan


def run_row(run: Path, *, routing: bool, sequences_per_domain: int) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    records = read_records(run)
    train = [r for r in records if "lm_loss" in r]
    evals = [r for r in records if "val/loss" in r]
    row = {"run": run.name, "steps": summary["step"], "val_loss": summary["val_loss"],
           "val_ppl": math.exp(summary["val_loss"]) if summary["val_loss"] is not None else math.nan}
    for key, loss in summary["val_domain_losses"].items():
        row[f"val_loss/{key.split('/')[1]}"] = loss
    row["max_vio_global"] = _mean_layers(evals[-1], "val/", "max_vio") if evals else math.nan
    tail = train[-max(1, len(train) // 4):]
    row["max_vio_batch"] = statistics.fmean(r.get("moe/max_vio", math.nan) for r in tail) if tail else math.nan
    speeds = [r["tokens_per_s"] for r in train if "tokens_per_s" in r]
    row["tokens_per_s"] = statistics.median(speeds) if speeds else math.nan
    model, config = load(run)
    row.update({f"params_{k}": v for k, v in param_counts(model).items()})
    row["domain_mi"] = row["topk_score_sum"] = math.nan
    if routing and model.moe_layers:
        data = eval_data(run, config, [], model)
        ids = first_per_domain(data.val.domain_ids, sequences_per_domain)
        traces = collect_routing(model, data.val.input_ids[ids, :-1], data.val.domain_ids[ids])
        summaries = summarise(traces, data.domains)
        row["domain_mi"] = mean_over_layers(summaries, "domain_mi")
        row["topk_score_sum"] = mean_over_layers(summaries, "topk_score_sum")
    return row


def initial_draws(run: Path) -> InitialDraws:
    """How ``run`` drew its initial weights: its config's ``init.draws`` (None when not from scratch) and
    its parameters, which in one random stream decide every draw."""
    init = read_config(run / "config.yaml").get("init") or {}
    from_scratch = str(init.get("_target_", "moe.upcycle.FromScratch")).endswith("FromScratch")
    parameters = tuple((name, tuple(p.shape)) for name, p in load(run)[0].named_parameters())
    return InitialDraws(draws=init.get("draws", "sequence") if from_scratch else None, parameters=parameters)


def arm_of(label: str) -> str:
    """A job's arm: its overrides without the job number and ``trainer.seed`` (seeds of one arm pool)."""
    match = re.match(r"^\d+_(.*)$", label)
    parts = [p for p in _split_overrides(match.group(1) if match else label) if not p.startswith("trainer.seed=")]
    return ",".join(parts) or label


# the numbers a paired comparison reports (per-domain val losses are added as the runs have them)
PAIRED_METRICS = ("val_loss", "max_vio_global", "max_vio_batch", "domain_mi", "topk_score_sum")


def run_seed(run: Path) -> int:
    return int(read_config(run / "config.yaml")["trainer"]["seed"])


def seeds_by_arm(labels: list[str], seeds: list[int]) -> dict[str, list[int]]:
    arms: dict[str, list[int]] = {}
    for label, seed in zip(labels, seeds):
        arms.setdefault(arm_of(label), []).append(seed)
    return arms


def paired_rows(rows: list[dict], reference: str, *, confidence: float = 0.95) -> list[dict]:
    """Per arm other than the reference: for each metric, the paired difference (arm − reference)
    over seeds (rows carry ``run`` labels and ``seed``), as a :class:`PairedDifference`."""
    by_arm: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_arm.setdefault(arm_of(row["run"]), {})[row["seed"]] = row
    check_pairing({arm: list(members) for arm, members in by_arm.items()}, reference)
    metrics = [*PAIRED_METRICS, *sorted(k for k in rows[0] if k.startswith("val_loss/"))]
    table = []
    for arm, members in by_arm.items():
        if arm == reference:
            continue
        out = {"arm": arm, "seeds": len(members)}
        for metric in metrics:
            values = {seed: row.get(metric, math.nan) for seed, row in members.items()}
            ref = {seed: row.get(metric, math.nan) for seed, row in by_arm[reference].items()}
            if not any(math.isnan(v) for v in [*values.values(), *ref.values()]):
                out[metric] = paired_difference(values, ref, confidence=confidence)
        table.append(out)
    return table


def _paired_cell(diff) -> str:
    text = f"{diff.mean:+.4g} [{diff.low:+.4g}, {diff.high:+.4g}]"
    return f"**{text}**" if diff.distinguishable else f"{text} (≈0)"


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per arm: ``seeds`` and, for every number, its mean and sample std over the arm's runs."""
    arms: dict[str, list[dict]] = {}
    for row in rows:
        arms.setdefault(arm_of(row["run"]), []).append(row)
    table = []
    for arm, members in arms.items():
        out = {"arm": arm, "seeds": len(members)}
        for key in members[0]:
            values = [m[key] for m in members if isinstance(m.get(key), (int, float))]
            if key in ("run", "steps", "seed") or len(values) != len(members):
                continue
            if any(math.isnan(v) for v in values):  # e.g. routing statistics of a dense arm
                out[key] = out[f"{key}_std"] = math.nan
                continue
            out[key] = statistics.fmean(values)
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(out)
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _markdown(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]


def _write_csv(path: Path, rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return columns


def compare(paths: list[str | Path], out: Path, *, routing: bool = True, sequences_per_domain: int = 32,
            reference: str | None = None) -> list[dict]:
    """Write the tables and the plot (see the module docstring); returns the per-run rows."""
    runs = find_runs(paths)
    seeds = [run_seed(run) for run in runs]
    labels = disambiguate(short_labels([run.name for run in runs]), seeds, runs)
    if reference is not None:  # a pairing error surfaces before the (slow) routing of every run
        check_pairing(seeds_by_arm(labels, seeds), reference)
    rows = [run_row(run, routing=routing, sequences_per_domain=sequences_per_domain) for run in runs]
    for row, label, seed in zip(rows, labels, seeds):
        row["run"], row["seed"] = label, seed
    out.mkdir(parents=True, exist_ok=True)
    columns = _write_csv(out / "compare.csv", rows)
    arms: dict[str, list[Path]] = {}
    for run, row in zip(runs, rows):
        arms.setdefault(arm_of(row["run"]), []).append(run)
    plot_curves(arms, out / "loss_curves.png")
    lines = []
    if any(len(members) > 1 for members in arms.values()):  # seeds: the arm table first, as mean ± std
        by_arm = aggregate(rows)
        _write_csv(out / "compare_by_arm.csv", by_arm)
        shown = [c for c in columns if c not in ("run", "steps", "seed") and c in by_arm[0]]
        cells = [{"arm": a["arm"], "seeds": a["seeds"],
                  **{c: f"{_fmt(a[c])} ± {_fmt(a[c + '_std'])}" for c in shown}} for a in by_arm]
        lines += ["Mean ± sample std over the seeds of each arm:", "", *_markdown(cells, ["arm", "seeds", *shown]),
                  "", "Every run:", ""]
    if reference is not None:
        paired = paired_rows(rows, reference)
        metrics = [c for c in columns if any(c in p for p in paired)]
        _write_csv(out / "compare_paired.csv", [
            {"arm": p["arm"], "reference": reference, "seeds": p["seeds"],
             **{f"{m}{part}": getattr(p[m], attr) for m in metrics if m in p
                for part, attr in (("_diff", "mean"), ("_low", "low"), ("_high", "high"))}} for p in paired])
        cells = [{"arm": p["arm"], "seeds": p["seeds"], **{m: _paired_cell(p[m]) for m in metrics if m in p}}
                 for p in paired]
        by_arm: dict[str, list[float]] = {}
        for row in rows:
            by_arm.setdefault(arm_of(row["run"]), []).append(row["val_loss"])
        draws = {arm: initial_draws(members[0]) for arm, members in arms.items()}
        lines = [f"Paired difference arm − `{reference}` over seeds, mean [95% t interval]; **bold**: the "
                 "interval excludes 0, (≈0): not distinguishable from 0:", "",
                 *_markdown(cells, ["arm", "seeds", *metrics]), "",
                 f"Seed std of val_loss pooled over the {len(by_arm)} arms: {pooled_std(list(by_arm.values())):.4g}",
                 "", initial_weights_note(draws, reference), "", *lines]
    lines += _markdown(rows, columns)
    (out / "compare.md").write_text("\n".join(lines) + "\n\n![loss curves](loss_curves.png)\n")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or directories of runs (Hydra multirun)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-routing", action="store_true", help="skip the specialisation columns")
    parser.add_argument("--sequences-per-domain", type=int, default=32)
    parser.add_argument("--reference", metavar="ARM", help="report every arm's paired difference to this arm")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():  # scoped: main() is also called from Python (tests), where grad must survive
            rows = compare(args.paths, args.out, routing=not args.no_routing,
                           sequences_per_domain=args.sequences_per_domain, reference=args.reference)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"compare.py: error: {err}")
    print((args.out / "compare.md").read_text())
    return rows


if __name__ == "__main__":
    main()
