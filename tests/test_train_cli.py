"""``python train.py`` as a researcher types it: command-line swaps and a multirun sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import compose

REPO = Path(__file__).resolve().parent.parent


def train(*overrides: str, data_cache: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(REPO / "train.py"), *overrides, "experiment=smoke", "trainer.max_steps=4",
            "trainer.progress=false", f"data.cache_dir={data_cache}"]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_swapping_parts_on_the_command_line(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    done = train("router=sigmoid", "router.top_k=1", "balance=[global_aux,z_loss]", "trainer.grad_accum_steps=2",
                 f"run_dir={run_dir}", data_cache=data_cache)
    assert done.returncode == 0, done.stderr
    assert "moe-lab: finished step 4/4" in done.stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["router"]["top_k"] == 1 and list(config["balance"]) == ["global_aux", "z_loss"]
    assert config["balance"]["global_aux"]["scope"] == "global"
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"layer0/z_loss", "layer0/global_aux"} <= set(record) and "layer0/switch_aux" not in record


def test_sweep_gives_each_job_its_own_run_dir(tmp_path, data_cache):
    done = train("-m", "balance=switch_aux,none", f"run_dir={tmp_path / 'cmp'}", data_cache=data_cache)
    assert done.returncode == 0, done.stderr
    jobs = sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir())
    # job number, then the job's overrides (paths excluded)
    assert len(jobs) == 2 and jobs[0].startswith("0_balance=switch_aux,") and jobs[1].startswith("1_balance=none,")
    for job, expected in zip(jobs, (["switch_aux"], [])):
        config = yaml.safe_load((tmp_path / "cmp" / job / "config.yaml").read_text())
        assert list(config["balance"]) == expected
        assert (tmp_path / "cmp" / job / "checkpoints" / "step_0000004" / "meta.json").is_file()


def test_a_sweep_runs_two_jobs_side_by_side_with_one_thread_each(tmp_path, data_cache):
    done = train("-m", "balance=switch_aux,none", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                 "trainer.threads=1", f"run_dir={tmp_path / 'cmp'}", data_cache=data_cache)
    assert done.returncode == 0, done.stderr
    assert "Joblib.Parallel(n_jobs=2" in done.stdout  # Hydra's log line: the jobs did go to the joblib launcher
    jobs = sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir())
    # the folders the default launcher makes: the thread count is not part of a job's name
    assert [job.split(",")[0] for job in jobs] == ["0_balance=switch_aux", "1_balance=none"]
    assert all("threads" not in job for job in jobs)
    for job in jobs:
        summary = json.loads((tmp_path / "cmp" / job / "summary.json").read_text())
        assert summary["threads"] == 1 and summary["step"] == 4


def test_a_bad_value_stops_before_the_run_directory_exists(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    done = train("router.top_k=17", f"run_dir={run_dir}", data_cache=data_cache)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "moe-lab: error: router.top_k=17 must lie in [1, num_experts=16]: top_k=17 > num_experts=16"]
    assert not run_dir.exists()  # a failed start leaves nothing behind


def test_a_failed_resume_keeps_the_run_and_logs_the_error(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    assert train(f"run_dir={run_dir}", data_cache=data_cache).returncode == 0
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    done = train(f"run_dir={run_dir}", "trainer.resume=true", "router.top_k=17", data_cache=data_cache)
    assert done.returncode == 2 and done.stderr.startswith("moe-lab: error: router.top_k=17")
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files
    log = (run_dir / "train.log").read_text()  # the error, with the traceback the console leaves out
    assert "moe-lab: error: router.top_k=17" in log and "Traceback (most recent call last)" in log


def test_train_log_keeps_the_warnings_of_a_run(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    done = train("router=expert_choice", f"run_dir={run_dir}", data_cache=data_cache)
    assert done.returncode == 0, done.stderr
    assert "ExpertChoiceRouter ranks all tokens of the batch" in (run_dir / "train.log").read_text()


def test_a_key_given_twice_is_refused_and_presets_combine_as_a_list(tmp_path, data_cache):
    done = train("experiment=dense_baseline", f"run_dir={tmp_path / 'run'}", data_cache=data_cache)  # + smoke
    assert done.returncode == 2 and not (tmp_path / "run").exists()
    assert done.stderr.strip() == ("moe-lab: error: experiment is set twice (experiment=dense_baseline and "
                                   "experiment=smoke): give each key once; to combine presets use "
                                   "experiment=[dense_baseline,smoke]")
    for presets in ("[smoke,dense_baseline]", "[dense_baseline,smoke]"):  # a tiny dense model either way
        config = compose(f"experiment={presets}")
        assert config["model"]["num_experts"] == 0 and config["model"]["d_model"] == 64, presets
        assert config["trainer"]["max_steps"] == 20


def test_help_lists_every_group_with_its_choices_and_every_key_with_its_meaning():
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "  balance  [switch_aux,z_loss]\n    aux_free         Auxiliary-loss-free balancing" in done.stdout
    assert "  experiment  [none]\n" in done.stdout and "    smoke            A seconds-long run" in done.stdout
    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        assert f"    {path.stem:<16} " in done.stdout, path
    assert "  max_steps: 3275 " in done.stdout and "schedule_on_resume: error  # when a resumed run" in done.stdout
    assert "model.KEY=VALUE (configs/model/moe_tiny.yaml)" in done.stdout and "  num_experts: 16 " in done.stdout


@pytest.mark.slow
def test_a_sweep_resumed_longer_continues_in_its_own_job_folders(tmp_path, data_cache):
    base = [sys.executable, str(REPO / "train.py"), "-m", "balance=switch_aux,none", "experiment=smoke",
            "trainer.progress=false", f"data.cache_dir={data_cache}", f"run_dir={tmp_path / 'cmp'}"]
    first = subprocess.run([*base, "trainer.max_steps=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    jobs = sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir())
    longer = subprocess.run([*base, "trainer.max_steps=4", "trainer.resume=true", "optim.schedule_on_resume=keep"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir() if p.is_dir()) == jobs  # no new folders
    for job in jobs:
        assert json.loads((tmp_path / "cmp" / job / "summary.json").read_text())["step"] == 4


@pytest.mark.slow  # three runs in subprocesses
def test_upcycling_tells_a_typed_backbone_value_from_a_config_default(tmp_path, data_cache):
    """experiment=smoke's d_model (a config file's) gives way to the source's; a typed one must agree."""
    dense = tmp_path / "dense"
    assert train("model=dense_tiny", "model.d_ff=96", f"run_dir={dense}", data_cache=data_cache).returncode == 0
    upcycled = train("init=upcycle", f"init.path={dense}", "model.d_ff=96", "model.num_experts=4",
                     f"run_dir={tmp_path / 'moe'}", data_cache=data_cache)
    assert upcycled.returncode == 0, upcycled.stderr
    config = yaml.safe_load((tmp_path / "moe" / "config.yaml").read_text())
    assert (config["model"]["expert_d_ff"], config["model"]["num_shared_experts"]) == (96, 0)
    refused = train("init=upcycle", f"init.path={dense}", "model.d_ff=128", f"run_dir={tmp_path / 'bad'}",
                    data_cache=data_cache)
    assert refused.returncode == 2 and not (tmp_path / "bad").exists()
    assert refused.stderr.strip().splitlines() == [
        f"moe-lab: error: model.d_ff=128 disagrees with init.path={dense}, which has d_ff=96; the backbone comes "
        f"from the source: drop model.d_ff from the command line"]
