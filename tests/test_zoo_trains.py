"""Every router and every balancer config trains the default model through the run entry point
(the same composition as ``python train.py router=NAME`` / ``balance=NAME``)."""

from __future__ import annotations

import math

import pytest
from conftest import group_files

from moe.training import run

ROUTERS = [p.stem for p in group_files("router")]
BALANCERS = [p.stem for p in group_files("balance")]


@pytest.mark.parametrize("name", ROUTERS)
def test_router_trains(name, smoke, tmp_path):
    summary = run(smoke(f"router={name}", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.save_every=4",
                        run_dir=tmp_path / name))
    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])


@pytest.mark.parametrize("name", BALANCERS)
def test_balancer_trains(name, smoke, tmp_path):
    summary = run(smoke(f"balance={name}", "trainer.max_steps=4", "trainer.eval_every=4", "trainer.save_every=4",
                        "trainer.grad_accum_steps=2", run_dir=tmp_path / name))
    assert summary["step"] == 4 and math.isfinite(summary["val_loss"])
