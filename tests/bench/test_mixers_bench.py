"""bench/mixers.py and bench/decode.py at a tiny size: the rows and checks each writes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_mixer_bench_writes_a_row_per_mixer_and_the_scan_comparison(tmp_path):
    out = tmp_path / "mixers.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "mixers.py"), "--seq", "16", "--d-model", "96",
                    "--repeats", "1", "--json", str(out)], check=True, capture_output=True, cwd=REPO)
    rows = json.loads(out.read_text())
    mixers = [r for r in rows if r["kind"] == "mixer"]
    assert [r["name"] for r in mixers] == ["gqa", "mla", "moa", "mamba", "mamba2"]
    assert all(r["ms"] > 0 and r["act_mb"] > 0 for r in mixers) and mixers[0]["vs_gqa"] == 1.0
    (scan,) = [r for r in rows if r["kind"] == "scan"]
    assert scan["seq"] == 16 and scan["speedup"] == scan["loop_ms"] / scan["chunked_ms"]


def test_the_decode_bench_checks_that_the_cache_keeps_the_tokens(tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "decode.py"), "--context", "16", "--new", "4",
                    "--json", str(out)], check=True, capture_output=True, cwd=REPO)
    result = json.loads(out.read_text())
    assert result["context"] == 16 and result["speedup"] == result["cached_tokens_per_s"] / result[
        "uncached_tokens_per_s"]


def test_the_decode_bench_reports_offloading(tmp_path):
    out = tmp_path / "decode.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "decode.py"), "--context", "16", "--new", "4", "--offload",
                    "2", "--json", str(out)], check=True, capture_output=True, cwd=REPO)
    result = json.loads(out.read_text())
    assert result["offload"] == 2 and 0 <= result["hit_rate"] <= 1 and result["bytes_read_per_token"] > 0
