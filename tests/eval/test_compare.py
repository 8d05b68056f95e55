"""eval/compare.py on a two-run sweep directory created in the test."""

import csv
import json
import math

import pytest
import torch
from compare import compare, find_runs

from moe import load_model


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_cache):
    from conftest import compose

    from moe.training import run

    sweep_dir = tmp_path_factory.mktemp("sweep")
    jobs = [(balance, seed) for balance in ("switch_aux", "none") for seed in (0, 1)]
    for number, (balance, seed) in reversed(list(enumerate(jobs))):
        run(compose("experiment=smoke", f"balance={balance}", f"trainer.seed={seed}", "trainer.max_steps=6",
                    "trainer.log_every=2", "trainer.eval_every=3", "logger=none", "trainer.progress=false",
                    f"data.cache_dir={data_cache}",
                    run_dir=sweep_dir / f"{number}_balance={balance},trainer.seed={seed}"))
    return sweep_dir


RUNS = ["0_balance=switch_aux,trainer.seed=0", "1_balance=switch_aux,trainer.seed=1",
        "2_balance=none,trainer.seed=0", "3_balance=none,trainer.seed=1"]


def test_compare_tabulates_every_run_of_a_sweep(sweep, tmp_path):
    rows = compare([sweep], tmp_path / "out", sequences_per_domain=2)
    assert [row["run"] for row in rows] == RUNS  # Hydra's job order
    assert [row["seed"] for row in rows] == [0, 1, 0, 1]
    for row in rows:
        summary = json.loads((sweep / row["run"] / "summary.json").read_text())
        assert row["val_loss"] == summary["val_loss"] and row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
        assert row["val_loss/code"] == summary["val_domain_losses"]["val/code/loss"]
        total = sum(p.numel() for p in load_model(sweep / row["run"]).parameters())
        assert row["params_total"] == total and 0 < row["params_active"] < total
        assert 0.0 <= row["domain_mi"] <= math.log(2) and row["max_vio_global"] >= 0.0
        assert 2 / 16 - 1e-6 <= row["topk_score_sum"] <= 1.0  # between a uniform (k/E, smoke: E = 16) and one-hot
    with open(tmp_path / "out" / "compare.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == RUNS
    assert (tmp_path / "out" / "loss_curves.png").stat().st_size > 0
    assert f"| {RUNS[3]} |" in (tmp_path / "out" / "compare.md").read_text()


def test_paired_differences_against_a_reference_arm(sweep, tmp_path):
    rows = compare([sweep], tmp_path / "out", sequences_per_domain=2, reference="balance=none")
    loss = {row["run"]: row["val_loss"] for row in rows}
    diffs = [loss[RUNS[0]] - loss[RUNS[2]], loss[RUNS[1]] - loss[RUNS[3]]]  # switch_aux − none, seed by seed
    half = 12.7062 * abs(diffs[0] - diffs[1]) / 2 ** 0.5 / 2 ** 0.5  # t(1) · sample std / √2
    with open(tmp_path / "out" / "compare_paired.csv") as f:
        (paired,) = list(csv.DictReader(f))
    assert paired["arm"] == "balance=switch_aux" and paired["reference"] == "balance=none"
    assert float(paired["val_loss_diff"]) == pytest.approx(sum(diffs) / 2)
    assert float(paired["val_loss_low"]) == pytest.approx(sum(diffs) / 2 - half, rel=1e-4)
    assert float(paired["val_loss_high"]) == pytest.approx(sum(diffs) / 2 + half, rel=1e-4)
    text = (tmp_path / "out" / "compare.md").read_text()
    assert text.startswith("Paired difference arm − `balance=none`") and "| balance=switch_aux | 2 |" in text
    by_seed = [[loss[RUNS[0]], loss[RUNS[1]]], [loss[RUNS[2]], loss[RUNS[3]]]]
    pooled = (sum((a - b) ** 2 / 2 for a, b in by_seed) / 2) ** 0.5  # two arms of two seeds: mean of variances
    assert f"pooled over the 2 arms: {pooled:.4g}" in text
    # the two balancers add no parameters, so one random stream gave both arms the same initial weights
    assert "every arm drew them in one random stream, with the same parameters as `balance=none`" in text


def test_a_reference_that_is_not_an_arm_fails_in_one_line(sweep, tmp_path, capsys):
    from compare import main

    with pytest.raises(SystemExit, match=r"--reference 'balance=global_aux' is not an arm of these runs; "
                                         r"arms: \['balance=none', 'balance=switch_aux'\]"):
        main([str(sweep), "--out", str(tmp_path / "out"), "--reference", "balance=global_aux"])
    assert not (tmp_path / "out").exists()  # refused before anything was computed or written
    assert torch.is_grad_enabled()  # the CLI's no_grad does not outlive it


def test_arms_with_different_seeds_cannot_be_paired(sweep, tmp_path):
    import shutil

    partial = tmp_path / "partial"
    for name in RUNS[:3]:  # balance=none lost its seed 1
        shutil.copytree(sweep / name, partial / name)
    with pytest.raises(ValueError, match=r"arm 'balance=none' has seeds \[0\] but the reference "
                                         r"'balance=switch_aux' has \[0, 1\]"):
        compare([partial], tmp_path / "out", reference="balance=switch_aux")


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
    dense = aggregate([{"run": "0_model=dense_tiny,trainer.seed=0", "val_loss": 1.0, "domain_mi": math.nan},
                       {"run": "1_model=dense_tiny,trainer.seed=1", "val_loss": 2.0, "domain_mi": math.nan}])
    assert math.isnan(dense[0]["domain_mi"]) and math.isnan(dense[0]["domain_mi_std"])  # no routing to pool


def test_runs_that_differ_in_a_key_the_folder_names_leave_out_stay_apart(sweep, tmp_path):
    import shutil

    import yaml

    both = tmp_path / "both"
    for number in (0, 1):  # the same name but for the job number: as trainer.max_steps=6,12 would give
        shutil.copytree(sweep / RUNS[0], both / f"{number}_balance=switch_aux,trainer.seed=0")
    longer = both / "1_balance=switch_aux,trainer.seed=0" / "config.yaml"
    longer.write_text(yaml.safe_dump({**yaml.safe_load(longer.read_text()),
                                      "trainer": {**yaml.safe_load(longer.read_text())["trainer"], "max_steps": 12}}))
    rows = compare([both], tmp_path / "out", routing=False)
    assert [row["run"] for row in rows] == ["0_balance=switch_aux,trainer.max_steps=6",
                                            "1_balance=switch_aux,trainer.max_steps=12"]  # two arms, not two seeds
