"""eval/perplexity.py on a tiny run: it reproduces the run's own validation loss."""

import json
import math

import pytest
from perplexity import main, perplexity_table


def test_perplexity_matches_the_runs_validation_loss(tiny_run):
    run_dir, summary = tiny_run
    table = perplexity_table(str(run_dir), [], max_sequences=4)  # the run's eval subset: 4 per domain
    assert table["overall"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    for key, loss in summary["val_domain_losses"].items():
        assert table["domains"][key.split("/")[1]]["loss"] == pytest.approx(loss, rel=1e-6)
    assert table["overall"]["perplexity"] == pytest.approx(math.exp(table["overall"]["loss"]))
    assert table["seq_len"] == 64 and table["overall"]["sequences"] == 8


def test_perplexity_cli_writes_json_for_another_split(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "ppl.json"
    main([str(run_dir), "--split", "train", "--max-sequences", "2", "--out", str(out)])
    table = json.loads(out.read_text())
    assert table["split"] == "train" and table["overall"]["sequences"] == 4
    assert "| all | 4 |" in capsys.readouterr().out


def test_the_cli_defaults_to_the_runs_eval_subset_and_shows_progress(tiny_run, capsys):
    run_dir, summary = tiny_run
    table = main([str(run_dir)])  # smoke sets trainer.eval_sequences_per_domain=4
    assert table["overall"]["sequences"] == 8
    assert table["overall"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-6)
    assert "scoring" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run_dir), "--all", "--max-sequences", "2"])
    assert "--all and --max-sequences exclude each other" in capsys.readouterr().err


def test_a_byte_level_hf_export_is_scored_on_the_default_corpus_without_overrides(tiny_run, tmp_path, monkeypatch):
    from moe.interop import save_hf

    run_dir, summary = tiny_run
    hf_dir = save_hf(run_dir, tmp_path / "hf")  # carries moe-lab's byte tokenizer.json
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default corpus, built where a user's would be
    table = perplexity_table(str(hf_dir), [], max_sequences=4)
    assert table["overall"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    (hf_dir / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text().replace('"!": 33', '"!": 34'))
    with pytest.raises(ValueError, match="brings no data config"):  # not our byte ids: no corpus to guess
        perplexity_table(str(hf_dir), [], max_sequences=4)
