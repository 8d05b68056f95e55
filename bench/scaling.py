"""Training tokens/s of the default job in 1 process, 2 data-parallel processes (EP=1), 2 expert-parallel
processes (EP=2) and 2 FSDP processes, with the share of time spent in all-to-all.

    .venv/bin/python bench/scaling.py [--steps 60] [--json bench/results/scaling.json] [override ...]

Each layout is a real launch of the training loop (``moe.training.run`` under ``torchrun --standalone``)
on the default config at four blocks (configs/train.yaml: moe_tiny with ``model.n_layers=4``, the default
until 2026-12-03 and the model of bench/README.md's figures; batch 8 × 256 tokens, the machine's default
precision), run for ``--steps`` optimizer steps; extra Hydra overrides apply to every layout.
tokens/s = the median of the run's logged windows (10 steps each) after the first (warm-up); MFU as the
trainer logs it. The all-to-all share = the wall time rank 0 spends inside
``torch.distributed.all_to_all_single`` (token and count exchanges, forward and backward) ÷ its
training time. torchrun gives each process one thread (OMP_NUM_THREADS=1); the single process uses
every core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"1 process": ("one", 1, []), "2 processes, DP (EP=1)": ("dp2", 2, []),
           "2 processes, EP=2": ("ep2", 2, ["parallel.expert=2"]),
           "2 processes, FSDP": ("fsdp2", 2, ["parallel.fsdp=true"])}  # label: (run directory, processes, overrides)


def worker(out: str, overrides: list[str]) -> None:
    """One launch: train, then rank 0 writes its tokens/s, MFU and all-to-all seconds to ``out``."""
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from moe.training import run

    spent = {"all_to_all_s": 0.0, "calls": 0}
    original = dist.all_to_all_single

    def timed(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        spent["all_to_all_s"] += time.perf_counter() - start
        spent["calls"] += 1
        return result

    dist.all_to_all_single = timed  # torch.distributed.nn's autograd all-to-all calls it too
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        config = OmegaConf.to_container(compose("train", overrides=overrides), resolve=True)
    run(config)
    if int(os.environ.get("RANK", "0")) == 0:
        run_dir = Path(config["run_dir"])
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        train_s, seen = 0.0, 0
        for record in records:  # each window's duration: its tokens at its rate
            train_s += (record["tokens_seen"] - seen) / record["tokens_per_s"]
            seen = record["tokens_seen"]
        steady = records[1:] or records
        Path(out).write_text(json.dumps({
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady),
            "all_to_all_share": spent["all_to_all_s"] / train_s, "all_to_all_calls": spent["calls"],
            "mixed_precision": json.loads((run_dir / "summary.json").read_text())["mixed_precision"]}))


def launch(nproc: int, overrides: list[str], tmp: Path) -> dict:
    out = tmp / f"result-{time.monotonic_ns()}.json"
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    args = [*launcher, __file__, "--worker", str(out), "model.n_layers=4", *overrides]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench/scaling.py: a launch failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        return worker(args.worker, overrides)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (slug, nproc, extra) in LAYOUTS.items():
            common = [f"trainer.max_steps={args.steps}", "trainer.log_every=10", "trainer.eval_every=100000",
                      "trainer.eval_sequences_per_domain=4", "trainer.progress=false", "logger=none",
                      f"run_dir={Path(tmp) / slug}"]
            result = launch(nproc, [*common, *extra, *overrides], Path(tmp))
            rows.append({"layout": name, "processes": nproc, **result})
            print(f"{name:<26} {result['tokens_per_s']:>8.0f} tokens/s  MFU {100 * result['mfu']:5.1f}%  "
                  f"all-to-all {100 * result['all_to_all_share']:5.1f}% of the time  ({result['mixed_precision']})",
                  flush=True)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup_vs_1_process"] = row["tokens_per_s"] / base
    print("speed-up vs 1 process: " + ", ".join(f"{r['layout']} {r['speedup_vs_1_process']:.2f}x" for r in rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"steps": args.steps, "overrides": overrides, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
