"""Shared test helpers: the repo's config files, loaded as plain dicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def group_files(group: str) -> list[Path]:
    return sorted((CONFIGS / group).glob("*.yaml"))


def load_group_option(group: str, name: str) -> dict:
    return yaml.safe_load((CONFIGS / group / f"{name}.yaml").read_text()) or {}


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same torch RNG state, whatever ran before it."""
    import torch

    torch.manual_seed(0)


def compose(*overrides: str, run_dir=None) -> dict:
    """The resolved run config ``train.py`` would get for these command-line overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides))
    config = OmegaConf.to_container(cfg, resolve=True)
    if run_dir is not None:
        config["run_dir"] = str(run_dir)
    return config


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    """One embedded-corpus cache shared by the tests of a session (building it takes seconds)."""
    return str(tmp_path_factory.getbasetemp() / "data-cache")


@pytest.fixture
def smoke(tmp_path, data_cache):
    """compose() for the seconds-long smoke experiment, into a fresh run directory."""

    def make(*overrides: str, run_dir=None) -> dict:
        return compose("experiment=smoke", "logger=none", "trainer.progress=false",
                       f"data.cache_dir={data_cache}", *overrides, run_dir=run_dir or tmp_path / "run")

    return make


# the eval/ scripts are importable as modules (perplexity, routing_report, compare, ...)
sys.path.insert(0, str(CONFIGS.parent / "eval"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_cache):
    """A 10-step smoke run with checkpoints at steps 5 and 10 for the eval-script tests:
    (run_dir, summary)."""
    from moe.training import run

    run_dir = tmp_path_factory.mktemp("eval") / "run"
    config = compose("experiment=smoke", "logger=none", "trainer.progress=false", f"data.cache_dir={data_cache}",
                     "trainer.max_steps=10", "trainer.save_every=5", "trainer.eval_every=10", "trainer.keep_last=0",
                     run_dir=run_dir)
    return run_dir, run(config)
