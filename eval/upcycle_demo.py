"""Upcycling demo: dense pre-training → upcycle → continue, against the two obvious alternatives.

    .venv/bin/python eval/upcycle_demo.py --out runs/upcycle_demo [--pretrain-steps 400 --continue-steps 400]
    .venv/bin/python eval/upcycle_demo.py --out runs/upcycle_seeds --seeds 0,1,2 --skip-scratch

Per seed, four runs of the default byte-level setup on the embedded corpus, all with the same batch
(8 × 256 tokens per step):

1. ``dense``: the dense baseline (FFN 768 = the MoE's active size), ``pretrain`` steps.
2. ``upcycled``: (1) upcycled with virtual groups (He et al. 2410.07524; E8 G2 top-2, experts of 384
   neurons, no shared expert: 768 active neurons like the default MoE), trained ``continue`` more
   steps. Its step-0 loss equals (1)'s.
3. ``dense_continued``: (1) trained ``continue`` more steps as a dense model.
4. ``moe_scratch``: the same E8 top-2 MoE from scratch for ``pretrain + continue`` steps (the same tokens).

Seed s pre-trains with trainer.seed=s; both continuations use trainer.seed=s+100, so they read the
same tokens in the same order as each other and a different order than the pre-training. With two or
more seeds the script adds the paired difference upcycled − dense_continued with its 95% t interval
(moe/analysis/paired.py). Prints a table (and writes it to OUT/summary.md). One Hydra job is one run,
so this is a script rather than an ``experiment=`` config.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moe.analysis.paired import paired_difference
from moe.training import run

REPO = Path(__file__).resolve().parent.parent


def train(run_dir: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "trainer.progress=false", "logger=none"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["run_dir"] = str(run_dir)
    return run(config)


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        sys.exit(f"--seeds={text!r}: expected comma-separated integers, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        sys.exit(f"--seeds={text!r}: each seed once")
    return seeds


def runs_for_seed(out: Path, seed: int, P: int, C: int, skip_scratch: bool) -> dict[str, tuple[Path, list[str]]]:
    # The demo's recipe pins what its documented results used (docs/results.md), from before the defaults
    # became lr 1.5e-3, the whole validation split, the 5 MB corpus, bf16 where native, fused AdamW, wsd
    # and two blocks.
    steps = {"trainer.eval_every": str(max(1, C // 2)), "trainer.save_every": str(max(P, C, 1)),
             "optim.lr": "3e-3", "trainer.eval_sequences_per_domain": "32",
             "optim.fused": "false", "optim.schedule": "cosine", "trainer.mixed_precision": "no",
             "data": "embedded_2mb", "model.n_layers": "4"}
    common = [f"{k}={v}" for k, v in steps.items()]
    e8 = ["model.num_shared_experts=0", "model.num_experts=8", "model.expert_d_ff=384",
          "router.order=topk_then_softmax"]
    dense_dir = out / "dense"
    continuation = [f"trainer.max_steps={C}", f"trainer.seed={seed + 100}", *common]
    runs = {
        "dense": (dense_dir, ["experiment=dense_baseline", f"trainer.max_steps={P}", f"trainer.seed={seed}", *common]),
        "upcycled": (out / "upcycled", [
            "init=upcycle", f"init.path={dense_dir}", "init.method=virtual_group", "init.granularity=2", *e8,
            *continuation]),
        "dense_continued": (out / "dense_continued", [
            "experiment=dense_baseline", "init=checkpoint", f"init.path={dense_dir}", *continuation]),
        "moe_scratch": (out / "moe_scratch", [*e8, f"trainer.max_steps={P + C}", f"trainer.seed={seed}", *common]),
    }
    if skip_scratch:
        del runs["moe_scratch"]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "upcycle_demo")
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--continue-steps", type=int, default=400)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each one pre-trains its own dense model")
    parser.add_argument("--skip-scratch", action="store_true", help="leave out the MoE-from-scratch run")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists: choose another --out (runs are never overwritten)")
    seeds = parse_seeds(args.seeds)
    P, C = args.pretrain_steps, args.continue_steps
    rows, val = [], {}
    for seed in seeds:
        out = args.out / f"seed{seed}" if len(seeds) > 1 else args.out
        for name, (run_dir, overrides) in runs_for_seed(out, seed, P, C, args.skip_scratch).items():
            summary = train(run_dir, *overrides)
            tokens = json.loads(Path(summary["run_dir"], "checkpoints", summary["checkpoints"][-1],
                                     "meta.json").read_text())["tokens_seen"]
            if name in ("upcycled", "dense_continued"):
                tokens += P * 8 * 256  # the dense pre-training they start from
            domains = summary["val_domain_losses"]
            val.setdefault(name, {})[seed] = summary["val_loss"]
            rows.append((seed, name, tokens, summary["val_loss"], domains.get("val/code/loss"),
                         domains.get("val/prose/loss")))
    header = "| seed | run | tokens | val loss | code | prose |\n| --- | --- | --- | --- | --- | --- |"
    table = "\n".join([header] + [f"| {s} | {n} | {t / 1e6:.2f}M | {v:.3f} | {c:.3f} | {p:.3f} |"
                                  for s, n, t, v, c, p in rows])
    text = f"Upcycling demo: pretrain {P} steps, continue {C} steps (8 x 256 tokens per step)\n\n{table}\n"
    if len(seeds) > 1:
        d = paired_difference(val["upcycled"], val["dense_continued"])
        text += (f"\nupcycled - dense_continued over seeds {seeds}: {d.mean:+.4f} nats, "
                 f"95% CI [{d.low:+.4f}, {d.high:+.4f}]"
                 f"{'' if d.distinguishable else ' (not distinguishable from zero)'}\n")
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
