"""bench/parallel_sweep.py: the arms file, and two smoke jobs run side by side into one JSON-lines file."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("parallel_sweep", REPO / "bench" / "parallel_sweep.py")
parallel_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parallel_sweep)


def test_arms_file_skips_comments_and_blank_lines(tmp_path):
    arms = tmp_path / "arms.txt"
    arms.write_text("# screen\nmoe:\n\ndense: model=dense_tiny optim.lr=1e-3   # the baseline\n")
    assert parallel_sweep.read_arms(arms) == [("moe", []), ("dense", ["model=dense_tiny", "optim.lr=1e-3"])]


@pytest.mark.parametrize(("text", "message"), [("model=dense_tiny\n", "expected 'name: overrides'"),
                                               ("a: x=1\na: x=2\n", "arm names repeat")])
def test_bad_arms_files_are_refused_with_the_line(tmp_path, text, message):
    arms = tmp_path / "arms.txt"
    arms.write_text(text)
    with pytest.raises(SystemExit, match=message):
        parallel_sweep.read_arms(arms)


@pytest.mark.slow
def test_two_smoke_jobs_side_by_side(tmp_path, data_cache):
    arms = tmp_path / "arms.txt"
    arms.write_text("tiny: experiment=smoke trainer.max_steps=4 trainer.eval_every=2\n")
    out = tmp_path / "screen.jsonl"
    subprocess.run([sys.executable, str(REPO / "bench" / "parallel_sweep.py"), str(arms), "--seeds", "0,1",
                    "--jobs", "2", "--root", str(tmp_path / "runs"), "--out", str(out),
                    "--common", "logger=none", f"data.cache_dir={data_cache}"], check=True, capture_output=True)
    records = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["seed"])
    assert [(r["arm"], r["seed"], r["returncode"]) for r in records] == [("tiny", 0, 0), ("tiny", 1, 0)]
    for record in records:
        assert [e["step"] for e in record["evals"]] == [2, 4]
        assert record["summary"]["val_loss"] == record["evals"][-1]["val/loss"]
        assert (tmp_path / "runs" / "tiny" / f"seed{record['seed']}" / "summary.json").exists()
    assert records[0]["summary"]["val_loss"] != records[1]["summary"]["val_loss"]  # the seed reached the job


def test_screen_summary_pairs_arms_by_seed(tmp_path):
    spec = importlib.util.spec_from_file_location("screen_summary", REPO / "bench" / "screen_summary.py")
    screen_summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screen_summary)
    screen = tmp_path / "screen.jsonl"
    rows = [("dense", 0, 1.30), ("dense", 1, 1.34), ("moe", 0, 1.26), ("moe", 1, 1.30), ("moe", 2, 9.0)]
    screen.write_text("".join(json.dumps({"arm": a, "seed": s, "summary": {"val_loss": v}}) + "\n" for a, s, v in rows)
                      + json.dumps({"arm": "moe", "seed": 3, "error": "stopped at the deadline"}) + "\n")
    losses, missing = screen_summary.final_losses([screen])
    assert missing == ["moe seed 3: stopped at the deadline"]
    lines = screen_summary.table(losses, {"moe": "dense"}).splitlines()
    # seeds 0 and 1 pair (seed 2 has no dense run): differences -0.04 and -0.04, so the interval is a point;
    # each arm's std over those seeds is 0.04/√2, so 3 × pooled = 0.0849
    assert lines[3] == "| moe | 3 | 3.8533 ± 4.4572 | dense | **-0.0400 [-0.0400, -0.0400]** | 0.0849 |"
    with pytest.raises(SystemExit, match="--pair 'moe=nope'"):
        screen_summary.parse_pairs(["moe=nope"], losses)
