"""Train an MoE (or dense) language model: ``python train.py [hydra overrides]``.

Composition happens here (Hydra); everything else lives in ``moe.training.run``.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from moe.training import run  # after composition, so --help and config errors stay fast

    config = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        config["run_dir"] = HydraConfig.get().runtime.output_dir
    summary = run(config)
    if summary["interrupted_by"]:
        sys.exit(130 if summary["interrupted_by"] == "SIGINT" else 143)


if __name__ == "__main__":
    main()
