"""Resuming with another trainer.max_steps: refused unless optim.schedule_on_resume says which LR
schedule to follow (keep the checkpoint's and hold its final LR, or stretch to the new length)."""

from __future__ import annotations

import json
import warnings

import pytest

from moe.checkpoint import list_checkpoints, read_meta
from moe.lr_schedule import warmup_cosine
from moe.schedule_resume import recorded_schedule_steps, schedule_steps_on_resume
from moe.training import run


def cosine(length: int):
    return warmup_cosine(warmup_steps=2, max_steps=length, min_lr_ratio=0.1)


def decide(policy: str, recorded: int = 10, requested: int = 15) -> int:
    return schedule_steps_on_resume(recorded=recorded, requested=requested, policy=policy, step=10,
                                    multiplier_for=cosine, lr=3e-3)


def test_policies():
    assert decide("error", requested=10) == decide("stretch", requested=10) == 10  # same length: nothing to decide
    assert decide("keep") == 10
    with pytest.warns(UserWarning, match=r"spans 15 steps instead of 10; at step 11 the LR jumps from 0.0003 to "):
        assert decide("stretch") == 15
    # the warning starts from the LR the checkpoint's scheduler holds, when known (its options may differ)
    stretched = 3e-3 * cosine(15)(10)
    with pytest.warns(UserWarning, match=r"the LR jumps from 0.001 to "):
        schedule_steps_on_resume(recorded=10, requested=15, policy="stretch", step=10, multiplier_for=cosine,
                                 lr=3e-3, checkpoint_lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedule_steps_on_resume(recorded=10, requested=15, policy="stretch", step=10, multiplier_for=cosine,
                                 lr=3e-3, checkpoint_lr=stretched)
    with pytest.raises(ValueError, match=r"trainer.max_steps=15 differs from the 10-step schedule .* "
                                         r"optim.schedule_on_resume=keep .* optim.schedule_on_resume=stretch"):
        decide("error")
    with pytest.raises(ValueError, match=r"schedule_on_resume='hold' is not one of \('error', 'keep', 'stretch'\)"):
        decide("hold")


def test_recorded_length_prefers_the_meta_over_the_checkpoint_config():
    config = {"trainer": {"max_steps": 8}}
    assert recorded_schedule_steps({"schedule_max_steps": 4}, config) == 4
    assert recorded_schedule_steps({}, config) == 8  # checkpoints written before the field existed


def lrs(run_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "lr" in r}


def test_resume_longer_keeps_the_schedule_and_holds_its_final_lr(smoke, tmp_path):
    common = ("trainer.log_every=1", "trainer.save_every=4", "optim.warmup_steps=1", "optim.lr=2e-3")
    run(smoke("trainer.max_steps=4", *common))
    run_dir = tmp_path / "run"
    before = list_checkpoints(run_dir)
    with pytest.raises(ValueError, match="trainer.max_steps=6 differs from the 4-step schedule"):
        run(smoke("trainer.max_steps=6", "trainer.resume=true", *common))
    assert list_checkpoints(run_dir) == before and max(lrs(run_dir)) == 4  # refused before any work

    run(smoke("trainer.max_steps=6", "trainer.resume=true", "optim.schedule_on_resume=keep", *common))
    lr = lrs(run_dir)
    final = lr[4]
    assert final == pytest.approx(2e-3 * 0.1) and lr[5] == lr[6] == final  # no jump back up: held
    assert read_meta(list_checkpoints(run_dir)[-1])["schedule_max_steps"] == 4
    # a second extension still follows the 4-step schedule it recorded, not the 6 of the last config
    run(smoke("trainer.max_steps=8", "trainer.resume=true", "optim.schedule_on_resume=keep", *common))
    assert lrs(run_dir)[8] == final


def test_a_bad_policy_is_refused_on_a_fresh_run_too(smoke):
    with pytest.raises(ValueError, match=r"optim.schedule_on_resume='hold' is not one of"):
        run(smoke("optim.schedule_on_resume=hold"))


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if "loss" in r}


def test_a_stable_phase_checkpoint_continues_into_any_cooldown(smoke, tmp_path, recwarn):
    # the warmup-stable-decay use case: train at the peak LR (no cooldown), then continue the checkpoint
    # into a cooldown planned for a longer run; it equals that run trained in one go, and since the LR
    # does not jump, stretch has nothing to warn about
    common = ("trainer.log_every=1", "trainer.save_every=6", "optim.warmup_steps=2", "optim.schedule=wsd")
    run(smoke("trainer.max_steps=6", "optim.decay_fraction=0", *common))
    run(smoke("trainer.max_steps=10", "optim.decay_fraction=0.2", "trainer.resume=true",
              "optim.schedule_on_resume=stretch", *common))
    assert not [w for w in recwarn if "schedule_on_resume" in str(w.message)]
    whole = tmp_path / "whole"
    run(smoke("trainer.max_steps=10", "optim.decay_fraction=0.2", *common, run_dir=whole))
    assert lrs(tmp_path / "run") == lrs(whole)
    assert [lrs(whole)[s] / lrs(whole)[3] for s in (8, 9, 10)] == pytest.approx([1.0, 0.1 + 0.9 * (1 - 0.5 ** 0.5),
                                                                                  0.1])
    assert losses(tmp_path / "run") == losses(whole)
