"""eval/upcycle_demo.py runs its four stages end to end (a few steps each) and writes its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_upcycle_demo_writes_its_table(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, str(REPO / "eval" / "upcycle_demo.py"), "--out", str(out),
                           "--pretrain-steps", "2", "--continue-steps", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("| ")][2:]
    assert [row.split("|")[1].strip() for row in rows] == ["dense", "upcycled", "dense_continued", "moe_scratch"]
    assert "| upcycled | 0.01M |" in (out / "summary.md").read_text()  # 2 + 2 steps of 2048 tokens
