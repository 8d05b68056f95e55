"""eval/upcycle_demo.py runs its four stages end to end (a few steps each) and writes its table; with
several seeds it pairs upcycled and dense-continued runs by seed and reports the interval."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def demo(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "eval" / "upcycle_demo.py"), "--out", str(out),
                           "--pretrain-steps", "2", "--continue-steps", "2", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def table_rows(out: Path) -> list[list[str]]:
    lines = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
def test_upcycle_demo_writes_its_table(tmp_path):
    out = tmp_path / "demo"
    done = demo(out)
    assert done.returncode == 0, done.stderr
    rows = table_rows(out)
    assert [row[:2] for row in rows] == [["0", "dense"], ["0", "upcycled"], ["0", "dense_continued"],
                                         ["0", "moe_scratch"]]
    assert rows[1][2] == "0.01M"  # 2 + 2 steps of 2048 tokens


@pytest.mark.slow
def test_upcycle_demo_pairs_seeds(tmp_path):
    out = tmp_path / "demo"
    done = demo(out, "--seeds", "0,1", "--skip-scratch")
    assert done.returncode == 0, done.stderr
    rows = table_rows(out)
    assert [row[:2] for row in rows] == [[s, n] for s in ("0", "1") for n in ("dense", "upcycled", "dense_continued")]
    loss = {(row[0], row[1]): float(row[3]) for row in rows}
    diffs = [loss[(s, "upcycled")] - loss[(s, "dense_continued")] for s in ("0", "1")]
    line = re.search(r"upcycled - dense_continued over seeds \[0, 1\]: ([+-][0-9.]+) nats, 95% CI",
                     (out / "summary.md").read_text())
    assert line and abs(float(line.group(1)) - sum(diffs) / 2) < 1e-3  # the printed 3-decimal losses round
    assert (out / "seed1" / "dense_continued" / "summary.json").is_file()
    assert demo(tmp_path / "bad", "--seeds", "0,x").returncode != 0
