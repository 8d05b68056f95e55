"""A Markdown table of a bench/parallel_sweep.py screen: each arm's final val loss over seeds, and
paired differences against the reference arms named with ``--pair ARM=REFERENCE``.

    python bench/screen_summary.py screen.jsonl [more.jsonl ...] --pair moe=dense --pair moe_lr2e3=dense_lr2e3

Columns: seeds, mean ± sample std of the final val loss; for a paired arm, the mean of
arm − reference over their common seeds with its 95% Student-t interval (moe/analysis/paired.py;
bold when it excludes 0), and 3 × the seed std pooled over the two arms (issue bar of
moe_vs_dense: a gain of ≥ 0.03 that also exceeds this). Jobs without a summary (stopped, failed)
are listed under the table and left out of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from moe.analysis.paired import paired_difference, pooled_std


def final_losses(paths: list[Path]) -> tuple[dict[str, dict[int, float]], list[str]]:
    """arm → seed → final val loss, and the jobs that have none."""
    losses: dict[str, dict[int, float]] = {}
    missing = []
    for path in paths:
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "summary" in record:
                losses.setdefault(record["arm"], {})[record["seed"]] = record["summary"]["val_loss"]
            else:
                missing.append(f"{record['arm']} seed {record['seed']}: {record.get('error')}")
    return losses, missing


def parse_pairs(pairs: list[str], arms: dict) -> dict[str, str]:
    result = {}
    for pair in pairs:
        arm, sep, reference = pair.partition("=")
        if not sep or arm not in arms or reference not in arms:
            raise SystemExit(f"--pair {pair!r}: expected ARM=REFERENCE, both among the arms {sorted(arms)}")
        result[arm] = reference
    return result


def table(losses: dict[str, dict[int, float]], pairs: dict[str, str]) -> str:
    lines = ["| arm | seeds | val loss | vs | paired difference [95% CI] | 3 × pooled std |",
             "| --- | --- | --- | --- | --- | --- |"]
    for arm, by_seed in losses.items():
        values = list(by_seed.values())
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        row = f"| {arm} | {len(values)} | {statistics.fmean(values):.4f}{spread} |"
        reference = pairs.get(arm)
        common = sorted(set(by_seed) & set(losses.get(reference, {})))
        if reference and len(common) >= 2:
            d = paired_difference({s: by_seed[s] for s in common}, {s: losses[reference][s] for s in common})
            text = f"{d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"
            pooled = pooled_std([[by_seed[s] for s in common], [losses[reference][s] for s in common]])
            row += f" {reference} | {f'**{text}**' if d.distinguishable else text} | {3 * pooled:.4f} |"
        else:
            row += " | | |"
        lines.append(row)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("screens", type=Path, nargs="+", help="JSON-lines files of bench/parallel_sweep.py")
    parser.add_argument("--pair", action="append", default=[], help="ARM=REFERENCE, repeatable")
    args = parser.parse_args()
    losses, missing = final_losses(args.screens)
    print(table(losses, parse_pairs(args.pair, losses)))
    if missing:
        print("\nLeft out (no summary): " + "; ".join(missing))


if __name__ == "__main__":
    main()
