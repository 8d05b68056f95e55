"""logger=wandb mirrors metrics into an offline W&B run inside the run directory."""

from __future__ import annotations

import pytest

from moe.loggers import WandbLogger


def test_wandb_offline_writes_its_run_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(run_dir=str(tmp_path), config={"router": {"top_k": 2}}, mode="offline")
    logger.log({"loss": 1.5}, step=1)
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_wandb_mode_is_checked():
    with pytest.raises(ValueError, match="logger.mode='cloud' is not one of"):
        WandbLogger(run_dir=".", config={}, mode="cloud")


def test_a_bad_mode_in_the_config_stops_the_run_before_its_directory_exists(smoke, tmp_path):
    from moe.training import run

    # the logger is built after the run directory; its mode's Literal annotation is checked before
    with pytest.raises(ValueError, match=r"^logger.mode='cloud' must be one of \('offline', 'online', 'disabled'\)$"):
        run(smoke("logger=wandb", "logger.mode=cloud"))
    assert not (tmp_path / "run").exists()
