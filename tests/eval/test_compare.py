"""eval/compare.py on a two-run sweep directory created in the test."""

import csv
import json
import math

import pytest
from compare import compare, find_runs

from moe import load_model


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_cache):
    from conftest import compose

    from moe.training import run

    sweep_dir = tmp_path_factory.mktemp("sweep")
    for name, balance in (("1_balance=none", "none"), ("0_balance=switch_aux", "switch_aux")):
        run(compose("experiment=smoke", f"balance={balance}", "trainer.max_steps=6", "trainer.log_every=2",
                    "trainer.eval_every=3", "logger=none", "trainer.progress=false", f"data.cache_dir={data_cache}",
                    run_dir=sweep_dir / name))
    return sweep_dir


def test_compare_tabulates_every_run_of_a_sweep(sweep, tmp_path):
    rows = compare([sweep], tmp_path / "out", sequences_per_domain=2)
    assert [row["run"] for row in rows] == ["0_balance=switch_aux", "1_balance=none"]  # Hydra's job order
    for row in rows:
        summary = json.loads((sweep / row["run"] / "summary.json").read_text())
        assert row["val_loss"] == summary["val_loss"] and row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
        assert row["val_loss/code"] == summary["val_domain_losses"]["val/code/loss"]
        total = sum(p.numel() for p in load_model(sweep / row["run"]).parameters())
        assert row["params_total"] == total and 0 < row["params_active"] < total
        assert 0.0 <= row["domain_mi"] <= math.log(2) and row["max_vio_global"] >= 0.0
        assert 2 / 8 - 1e-6 <= row["topk_score_sum"] <= 1.0  # between a uniform (k/E) and a one-hot router
    with open(tmp_path / "out" / "compare.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == ["0_balance=switch_aux", "1_balance=none"]
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 0
    assert "| 1_balance=none |" in (tmp_path / "out" / "compare.md").read_text()


def test_compare_names_a_path_that_holds_no_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a finished run"):
        find_runs([tmp_path])


def test_labels_drop_the_overrides_every_run_shares():
    from compare import short_labels

    names = ["0_balance=switch_aux,trainer.max_steps=4", "1_balance=[switch_aux,z_loss],trainer.max_steps=4"]
    assert short_labels(names) == ["0_balance=switch_aux", "1_balance=[switch_aux,z_loss]"]
    assert short_labels(["my-run"]) == ["my-run"]


def test_seeds_of_one_arm_pool_into_mean_and_sample_std():
    from compare import aggregate, arm_of

    assert arm_of("3_balance=[switch_aux,z_loss],trainer.seed=1") == "balance=[switch_aux,z_loss]"
    assert arm_of("my-run") == "my-run"
    rows = [{"run": "0_balance=none,trainer.seed=0", "steps": 4, "val_loss": 1.0, "domain_mi": 0.1},
            {"run": "1_balance=none,trainer.seed=1", "steps": 4, "val_loss": 2.0, "domain_mi": 0.3},
            {"run": "2_balance=aux_free,trainer.seed=0", "steps": 4, "val_loss": 1.5, "domain_mi": 0.2}]
    by_arm = aggregate(rows)
    assert [a["arm"] for a in by_arm] == ["balance=none", "balance=aux_free"]
    assert by_arm[0]["seeds"] == 2 and by_arm[0]["val_loss"] == 1.5
    assert by_arm[0]["val_loss_std"] == pytest.approx(0.5 ** 0.5)  # sample std of {1, 2}
    assert by_arm[1]["domain_mi"] == 0.2 and by_arm[1]["domain_mi_std"] == 0.0
    assert "steps" not in by_arm[0] and "run" not in by_arm[0]
