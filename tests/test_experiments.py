"""The comparison experiments: every arm of each sweep composes and trains (on a shrunken model)."""

import itertools
import math

import pytest
from conftest import CONFIGS, compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from moe.training import run

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64",
        "model.max_seq_len=32", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.save_every=2",
        "trainer.eval_sequences_per_domain=2", "optim.warmup_steps=0", "optim.lr=1e-2", "logger=none"]


def sweep_arms(experiment: str) -> list[list[str]]:
    """The overrides of every job of ``python train.py -m experiment=NAME`` (its hydra.sweeper.params,
    a Cartesian product in Hydra's job order: the first key varies slowest)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    parser = OverridesParser.create()
    axes = [[f"{key}={value}" for value in parser.parse_overrides([f"{key}={values}"])[0].sweep_string_iterator()]
            for key, values in cfg.hydra.sweeper.params.items()]
    return [list(job) for job in itertools.product(*axes)]


def test_compare_balance_sweeps_every_scope_and_method_over_three_paired_seeds():
    arms = ["balance=switch_aux", "balance=sequence_aux", "balance=global_aux", "balance=aux_free", "balance=none"]
    assert sweep_arms("compare_balance") == [[arm, f"trainer.seed={seed}"] for arm in arms for seed in (0, 1, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["compare_balance", "compare_routers"])
def test_every_arm_trains(experiment, tmp_path, data_cache):
    arms = [job for job in sweep_arms(experiment) if job[-1] == "trainer.seed=0"]  # the seeds train alike
    assert len(arms) >= 5
    if experiment == "compare_routers":  # three seeds per arm, the same in every arm (paired)
        assert {job[-1] for job in sweep_arms(experiment)} == {f"trainer.seed={s}" for s in (0, 1, 2)}
    for i, arm in enumerate(arms):
        config = compose(f"experiment={experiment}", *arm, *TINY, f"data.cache_dir={data_cache}",
                         run_dir=tmp_path / str(i))
        summary = run(config)
        # an untrained byte model scores about ln 257 = 5.55 nats; two steps at lr 1e-2 reach 4.97-5.03
        assert summary["step"] == 2 and summary["val_loss"] < math.log(257) - 0.4, (arm, summary["val_loss"])
        if experiment == "compare_routers":  # matched active parameters: the shared 384 + 2 × 192 (or 1 × 384)
            k = config["router"].get("top_k") or config["router"].get("capacity_factor") or 1
            model = config["model"]
            shared = model["num_shared_experts"] * model["shared_expert_d_ff"]
            assert shared + k * model["expert_d_ff"] == 768, arm


def test_compare_balance_pins_the_recipe_it_was_published_with():
    """fp32, the per-parameter AdamW and the cosine schedule on every machine, so the documented numbers
    reproduce bit for bit whatever the default precision, optimizer kernel and schedule become."""
    config = compose("experiment=compare_balance")
    assert config["trainer"]["mixed_precision"] == "no"
    assert config["optim"]["fused"] is False
    assert config["optim"]["schedule"] == "cosine"


def test_compare_routers_pins_the_recipe_it_was_published_with():
    """600 steps of a two-block model on the cosine schedule, in bf16 where the CPU has it natively and
    with the fused AdamW (the faster step is what buys the 600 steps in the sweep's time)."""
    config = compose("experiment=compare_routers")
    assert config["model"]["n_layers"] == 2
    assert config["trainer"]["max_steps"] == 600
    assert config["trainer"]["mixed_precision"] == "auto"
    assert config["optim"]["fused"] is True
    assert config["optim"]["schedule"] == "cosine"
