"""Run many short train.py jobs side by side (arms x seeds) and collect their validation curves.

Meant for screening recipes on a machine with more cores than this project's 2 (or one GPU shared by
several processes): each job is a separate ``python train.py`` with its own run directory, one
thread each, ``--jobs`` at a time. Jobs start in the order of the arms file (the first arm's seeds
first), so when ``--deadline`` passes only the least important arms are left out. After each job
ends, one JSON line goes to ``--out``: the arm, the seed, the overrides, the final summary and
every evaluation's validation loss.

Arms file: one arm per line, ``name: override override ...``; blank lines and ``#`` comments are
skipped. Example:

    moe:
    dense: model=dense_tiny
    moe_router_lr3: optim.router_lr_scale=3

    python bench/parallel_sweep.py ARMS --seeds 0,1,2 --jobs 12 --root /tmp/screen --out screen.jsonl

``--common`` overrides go to every job (e.g. ``trainer.save_every=100000``: no checkpoint but the
last). The numbers of a GPU screen are not the CPU's to the last digit
(other kernels, other summation orders): confirm a chosen recipe with the sweep that reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_arms(path: Path) -> list[tuple[str, list[str]]]:
    arms = []
    for line_number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rest = line.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"{path}:{line_number}: expected 'name: overrides', got {raw!r}")
        arms.append((name.strip(), rest.split()))
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: arm names repeat: {names}")
    return arms


def collect(run_dir: Path) -> dict:
    """The run's summary.json and its evaluation records (step, val_loss) from metrics.jsonl."""
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.jsonl"
    evals = []
    for line in metrics_path.read_text().splitlines() if metrics_path.exists() else []:
        record = json.loads(line)
        if "val/loss" in record:
            evals.append({"step": record["step"], **{k: v for k, v in record.items() if k.endswith("/loss")}})
    if not summary_path.exists():
        return {"error": "no summary.json (see train.log)", "evals": evals}
    return {"summary": json.loads(summary_path.read_text()), "evals": evals}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arms", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", type=Path, required=True, help="run directories go to ROOT/ARM/seedN")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per finished job")
    parser.add_argument("--common", nargs="*", default=[], help="overrides given to every job")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds after which no job starts and running jobs are stopped")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    queue = [(name, overrides, seed) for name, overrides in read_arms(args.arms) for seed in seeds]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start, running = time.time(), []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as out:
        while queue or running:
            elapsed = time.time() - start
            while queue and len(running) < args.jobs and elapsed < args.deadline:
                name, overrides, seed = queue.pop(0)
                run_dir = args.root / name / f"seed{seed}"
                command = [sys.executable, str(REPO / "train.py"), f"run_dir={run_dir}", f"trainer.seed={seed}",
                           "trainer.progress=false", *args.common, *overrides]
                run_dir.parent.mkdir(parents=True, exist_ok=True)
                with (run_dir.parent / f"seed{seed}.stderr").open("w") as stderr:  # the child keeps its own handle
                    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
                running.append((process, name, overrides, seed, run_dir, time.time()))
            for job in list(running):
                process, name, overrides, seed, run_dir, began = job
                stopped = elapsed >= args.deadline and process.poll() is None
                if stopped:
                    process.kill()
                    process.wait()  # kill() only signals: without the wait the job could be read as finished later
                elif process.poll() is None:
                    continue
                running.remove(job)
                record = {"arm": name, "seed": seed, "overrides": overrides, "returncode": process.returncode,
                          "wall_s": round(time.time() - began, 1), **collect(run_dir)}
                if stopped:
                    record["error"] = "stopped at the deadline"
                out.write(json.dumps(record) + "\n")
                out.flush()
                print(f"{elapsed:7.0f}s {name} seed {seed}: rc {process.returncode}, "
                      f"val {record.get('summary', {}).get('val_loss')}, {record['wall_s']} s", flush=True)
            if elapsed >= args.deadline:
                queue.clear()
            time.sleep(1.0)


if __name__ == "__main__":
    main()
