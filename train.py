"""Train an MoE (or dense) language model: ``python train.py [hydra overrides]``.

Composition happens here (Hydra); everything else lives in ``moe.training.run``.

A user's mistake (a bad config value, a missing file: the ``ValueError``/``FileNotFoundError`` that
``run`` raises before any work starts) ends the run with one line on stderr and exit status 2. A run
directory that Hydra created for this failed start (it holds nothing but ``train.log``) is removed; an
existing run's directory keeps everything, and its ``train.log`` gets the error with its traceback.
``train.log`` also keeps every Python warning of a run, and the traceback of any other failure.
A key given twice on the command line (``experiment=smoke experiment=dense_baseline``: Hydra would keep
only the last) is refused the same way; presets combine as a list, ``experiment=[smoke,dense_baseline]``.

Several processes (``torchrun --nproc_per_node N train.py run_dir=... ...``) train data-parallel
(moe/parallel/). Each process composes the config itself, so a multi-process launch must name its
``run_dir``: the default holds the time of composition, which two processes may not share. Only rank 0
writes ``train.log`` and prints errors.
"""

import logging
import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

USER_ERRORS = (ValueError, FileNotFoundError)
RANK = int(os.environ.get("RANK", "0"))  # set by torchrun / accelerate launch


def log_file_only() -> logging.Logger:
    """A logger that writes to Hydra's train.log but not to the console."""
    logger = logging.getLogger("moe-lab.train-log")
    logger.propagate = False
    logger.handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return logger


def repeated_override(argv: list[str]) -> str | None:
    """The error for a key set twice among the command-line overrides, or None."""
    seen: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key = arg.split("=", 1)[0].lstrip("+~")
        if key in seen:
            hint = f"; to combine presets use {key}=[{seen[key].split('=', 1)[1]},{arg.split('=', 1)[1]}]" \
                if key == "experiment" else ""
            return f"{key} is set twice ({seen[key]} and {arg}): give each key once{hint}"
        seen[key] = arg
    return None


def missing_run_dir(argv: list[str]) -> str | None:
    """The error for a multi-process launch without ``run_dir=``, or None."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size != "1" and not any(arg.split("=", 1)[0].lstrip("+") == "run_dir" for arg in argv):
        return (f"WORLD_SIZE={world_size}: a multi-process launch needs run_dir=PATH (each process would "
                f"otherwise stamp its own start time into the default run_dir)")
    return None


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from moe.training import run  # after composition, so --help and config errors stay fast

    logging.captureWarnings(True)  # warnings.warn → the py.warnings logger → console and train.log
    if RANK != 0:  # one train.log per run, from rank 0
        for handler in [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]:
            logging.getLogger().removeHandler(handler)
            handler.close()
    config = OmegaConf.to_container(cfg, resolve=True)
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        config["run_dir"] = HydraConfig.get().runtime.output_dir
    try:
        summary = run(config, overrides=list(HydraConfig.get().overrides.task))
    except USER_ERRORS as error:
        if RANK != 0:  # every rank meets the same config error; rank 0 reports it
            sys.exit(2)
        print(f"moe-lab: error: {error}", file=sys.stderr)
        run_dir = Path(config["run_dir"])
        made_for_this_start = run_dir.is_dir() and sorted(p.name for p in run_dir.iterdir()) == ["train.log"]
        if made_for_this_start:  # by Hydra: a failed start leaves nothing behind
            logging.shutdown()  # close train.log before removing it
            shutil.rmtree(run_dir)
        else:
            log_file_only().error("moe-lab: error: %s", error, exc_info=True)
        sys.exit(2)
    except Exception:  # not a user's mistake: Hydra prints it; train.log keeps it too
        log_file_only().exception("moe-lab: the run failed")
        raise
    if summary["interrupted_by"]:
        sys.exit(130 if summary["interrupted_by"] == "SIGINT" else 143)


if __name__ == "__main__":
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from moe.cli_help import help_text

        print(help_text(Path(__file__).resolve().parent / "configs"))
        sys.exit(0)
    if (problem := repeated_override(sys.argv[1:]) or missing_run_dir(sys.argv[1:])) is not None:
        if RANK == 0:
            print(f"moe-lab: error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
