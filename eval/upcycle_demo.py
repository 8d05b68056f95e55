"""Upcycling demo: dense pre-training → upcycle → continue, against the two obvious alternatives.

    .venv/bin/python eval/upcycle_demo.py --out runs/upcycle_demo [--pretrain-steps 400 --continue-steps 400]

Four runs of the default byte-level setup on the embedded corpus, all with the same batch (8 × 256
tokens per step):

1. ``dense``: the dense baseline (FFN 768 = the MoE's active size), ``pretrain`` steps.
2. ``upcycled``: (1) upcycled with virtual groups (He et al. 2410.07524; E8 G2 top-2, experts of 384
   neurons, no shared expert: 768 active neurons like the default MoE), trained ``continue`` more
   steps. Its step-0 loss equals (1)'s.
3. ``dense_continued``: (1) trained ``continue`` more steps as a dense model.
4. ``moe_scratch``: the same E8 top-2 MoE from scratch for ``pretrain + continue`` steps (the same tokens).

The continuations use trainer.seed=1, so they read a different data order than the pre-training.
Prints a table (and writes it to OUT/summary.md). One Hydra job is one run, so this is a script
rather than an ``experiment=`` config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from moe.training import run  # noqa: E402


def train(run_dir: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer.progress=false", "logger=none"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = str(run_dir)
    return run(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "upcycle_demo")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--continue-steps", type=int, default=400)
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: choose another --out (runs are never overwritten)")
    P, C = args.pretrain_steps, args.continue_steps
    steps = {"trainer.eval_every": str(max(1, C // 2)), "trainer.save_every": str(max(P, C, 1))}
    common = [f"{k}={v}" for k, v in steps.items()]
    e8 = ["model.num_shared_experts=0", "model.num_experts=8", "model.expert_d_ff=384",
          "router.order=topk_then_softmax"]
    dense_dir = args.out / "dense"
    runs = {
        "dense": (dense_dir, ["experiment=dense_baseline", f"trainer.max_steps={P}", *common]),
        "upcycled": (args.out / "upcycled", [
            "init=upcycle", f"init.path={dense_dir}", "init.method=virtual_group", "init.granularity=2", *e8,
            f"trainer.max_steps={C}", "trainer.seed=1",
            "trainer.eval_every=1000000", *common]),
        "dense_continued": (args.out / "dense_continued", [
            "experiment=dense_baseline", "init=checkpoint", f"init.path={dense_dir}", f"trainer.max_steps={C}",
            "trainer.seed=1", *common]),
        "moe_scratch": (args.out / "moe_scratch", [*e8, f"trainer.max_steps={P + C}", *common]),
    }
    rows = []
    for name, (run_dir, overrides) in runs.items():
        summary = train(run_dir, *overrides)
        tokens = json.loads(Path(summary["run_dir"], "checkpoints", summary["checkpoints"][-1],
                                 "meta.json").read_text())["tokens_seen"]
        if name in ("upcycled", "dense_continued"):
            tokens += P * 8 * 256  # the dense pre-training they start from
        domains = summary["val_domain_losses"]
        rows.append((name, tokens, summary["val_loss"], domains.get("val/code/loss"), domains.get("val/prose/loss")))
    header = "| run | tokens | val loss | code | prose |\n| --- | --- | --- | --- | --- |"
    table = "\n".join([header] + [f"| {n} | {t / 1e6:.2f}M | {v:.3f} | {c:.3f} | {p:.3f} |" for n, t, v, c, p in rows])
    text = (f"Upcycling demo: pretrain {P} steps, continue {C} steps (8 x 256 tokens per step)\n\n{table}\n")
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
