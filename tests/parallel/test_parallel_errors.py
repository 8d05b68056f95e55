"""A launch that cannot run its ``parallel`` layout is refused before anything is built, in one line that
names the key, the value and what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from launch import REPO

from moe.run_plan import prepare_run


@pytest.mark.parametrize("world, overrides, message", [
    (3, ("trainer.batch_size=4",), r"trainer.batch_size=4 \(the global micro-batch\) is not divisible by the 3 "
                                   r"processes of this launch; use a multiple of 3"),
    (2, ("parallel.expert=4",), r"parallel.expert=4 does not divide the 2 processes of this launch"),
    (3, ("trainer.batch_size=6", "parallel.expert=3"),
     r"parallel.expert=3 does not divide model.num_experts=16; use a divisor of 16"),
    (2, ("model=dense_tiny", "parallel.expert=2"), r"parallel.expert=2 does not divide model.num_experts=0"),
    (2, ("experts=capacity", "parallel.expert=2"),
     r"parallel.expert=2 needs experts=grouped or experts=sorted_loop \(moe.experts.GroupedExperts\); "
     r"experts._target_='moe.experts.CapacityExperts'"),
    (1, ("parallel.fsdp=true",), r"parallel.fsdp=true needs a multi-process launch"),
    (2, ("parallel.fsdp=true", "parallel.expert=2"), r"parallel.fsdp=true with parallel.expert=2: choose one"),
    (2, ("parallel.fsdp=true", "trainer.compile_moe=true"), r"parallel.fsdp=true with trainer.compile_moe=true"),
    (1, ("parallel.expert=0",), r"parallel.expert=0 must be an integer >= 1"),
    (1, ("parallel.expert=two",), r"parallel.expert='two' must be an integer"),
    (2, ("model.num_experts=many", "parallel.expert=2"), r"model.num_experts='many' must be an integer$"),
])
def test_a_layout_the_launch_cannot_run_is_refused_before_the_run_starts(smoke, tmp_path, monkeypatch, world,
                                                                         overrides, message):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ValueError, match=message):
        prepare_run(smoke(*overrides))
    assert not (tmp_path / "run").exists()


def test_a_multi_process_launch_must_name_its_run_dir():
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "experiment=smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "moe-lab: error: WORLD_SIZE=2: a multi-process launch needs run_dir=PATH (each process would otherwise "
        "stamp its own start time into the default run_dir)"]


def test_fsdp_refuses_to_resume_a_checkpoint_of_the_former_layout(smoke, tmp_path, monkeypatch):
    from moe.training import run

    run(smoke("trainer.max_steps=1"))
    checkpoint = next((tmp_path / "run" / "checkpoints").iterdir())
    (checkpoint / "train_state.pt").unlink()  # as checkpoints written by accelerator.save_state
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"parallel.fsdp=true cannot resume .*step_0000001: it was written before "
                                         r"checkpoints held train_state.pt; resume it once without FSDP"):
        prepare_run(smoke("parallel.fsdp=true", "trainer.resume=true", "trainer.batch_size=4"))
