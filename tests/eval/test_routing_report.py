"""eval/routing_report.py on a tiny run: files, and the numbers' known limits."""

import json
import math

import pytest
from routing_report import main, routing_report

from moe.checkpoint import list_checkpoints


def test_report_writes_plots_markdown_and_json(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    out = tmp_path / "report"
    report = routing_report(str(run_dir), out, sequences_per_domain=4)
    for name in ("report.md", "report.json", "load_heatmap.png", "domain_expert.png", "coactivation.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "report.json").read_text()) == report
    markdown = (out / "report.md").read_text()
    assert "![Load per expert](load_heatmap.png)" in markdown and "| 1 |" in markdown
    assert report["saturation against"] == str(list_checkpoints(run_dir)[0])  # the run's first checkpoint
    assert sorted(report["layers"]) == ["0", "1"]
    assert report["I(domain; expert) ceiling H(domain)"] == pytest.approx(math.log(2))  # 4 sequences of each of 2
    assert "- I(domain; expert) ceiling H(domain): 0.693147" in markdown
    for layer in report["layers"].values():
        assert sum(layer["load_share"]) == pytest.approx(1.0)
        assert all(sum(row) == pytest.approx(1.0) for row in layer["domain_freq"])
        assert 0.0 <= layer["domain_mi"] <= math.log(2) + 1e-12
        assert 0.0 < layer["saturation"] <= 1.0
        assert layer["token_determinism_baseline"] <= layer["token_determinism"] <= 1.0
        # P(i | i) = 1 for every expert that was selected at all, 0 for a dead one
        assert [row[e] for e, row in enumerate(layer["coactivation"])] == [float(s > 0) for s in layer["load_share"]]


def test_saturation_against_the_same_checkpoint_is_one(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    last = str(list_checkpoints(run_dir)[-1])
    report = main([last, "--earlier", last, "--sequences-per-domain", "2", "--out", str(tmp_path / "r")])
    assert {layer["saturation"] for layer in report["layers"].values()} == {1.0}


def test_a_dense_model_has_nothing_to_report(tmp_path, data_cache):
    from conftest import compose

    from moe.training import run

    run_dir = tmp_path / "dense"
    run(compose("experiment=smoke", "model=dense_tiny", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
                "model.n_kv_heads=1", "model.d_ff=64", "model.max_seq_len=32", "trainer.max_steps=0",
                "logger=none", "trainer.progress=false", f"data.cache_dir={data_cache}", run_dir=run_dir))
    with pytest.raises(ValueError, match="dense model"):
        routing_report(str(run_dir), tmp_path / "r", sequences_per_domain=1)
