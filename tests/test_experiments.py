"""The comparison experiments: every arm of each sweep composes and trains (on a shrunken model)."""

import pytest
from conftest import CONFIGS, compose
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from moe.training import run

TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64",
        "model.max_seq_len=32", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.save_every=2",
        "trainer.eval_sequences_per_domain=2", "logger=none"]


def sweep_arms(experiment: str) -> list[str]:
    """The overrides of every job of ``python train.py -m experiment=NAME`` (its hydra.sweeper.params)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert len(params) == 1
    (key, values), = params.items()
    sweep = OverridesParser.create().parse_overrides([f"{key}={values}"])[0]
    return [f"{key}={value}" for value in sweep.sweep_string_iterator()]


def test_compare_balance_sweeps_every_scope_and_method():
    assert sweep_arms("compare_balance") == [
        "balance=switch_aux", "balance=[switch_aux,z_loss]", "balance=sequence_aux", "balance=global_aux",
        "balance=aux_free", "balance=none"]


@pytest.mark.parametrize("experiment", ["compare_balance", "compare_routers"])
def test_every_arm_trains(experiment, tmp_path, data_cache):
    arms = sweep_arms(experiment)
    assert len(arms) >= 6
    for i, arm in enumerate(arms):
        config = compose(f"experiment={experiment}", arm, *TINY, f"data.cache_dir={data_cache}",
                         run_dir=tmp_path / str(i))
        summary = run(config)
        assert summary["step"] == 2 and summary["val_loss"] < 6.0, arm
        if experiment == "compare_routers":  # matched active parameters: 2 experts of 384, or 1 of 768
            k = config["router"].get("top_k") or config["router"].get("capacity_factor") or 1
            assert k * config["model"]["expert_d_ff"] == 768, arm
