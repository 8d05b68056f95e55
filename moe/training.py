"""Training as a recipe of named steps: ``run(config)`` takes the resolved run config (a plain dict;
``train.py`` composes it with Hydra) and returns the run's summary.

1. **prepare** (moe/run_plan.py): parse and check the config, adopt a checkpoint's config nodes,
   resolve the tokenizer, check the run directory and the resumed schedule — the config is final here;
2. **build** (moe/trainer.py, ``Trainer.__init__``): data, model and its init, freezing, optimizer,
   LR schedule, accelerator, batch order, logger; the run directory is touched only after this;
3. **train step** (``Trainer.train_step``), 4. **evaluate** (``Trainer.evaluate``, moe/evaluation.py),
5. **save** (``Trainer.save_checkpoint``, atomic, with every rank's RNG state) and 6. **summary**
   (``Trainer.finish``), driven by ``Trainer.fit``.

Everything that can be wrong with the config is found in steps 1-2, before the run directory is
touched, so a bad option never costs an existing run or checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moe.cpu_threads import cpu_threads
from moe.run_plan import prepare_run
from moe.trainer import Trainer


def run(config: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train as the config says; returns the final summary (also written to RUN_DIR/summary.json).
    ``overrides``: the command line that composed ``config``, so that values the user set explicitly are
    told apart from the config files' defaults (an upcycled backbone must not silently override them)."""
    plan = prepare_run(config, overrides)
    with cpu_threads(plan.trainer.threads):
        return Trainer(plan).fit()
