"""Training throughput: tokens/s of full training steps, the default MoE against the dense model with the
same active parameters.

    .venv/bin/python bench/train_throughput.py [--quick] [--compile] [--dtype bf16] [--steps N] [--json PATH]
        [--experts capacity pad_multiple=64]        # another experts config for the MoE; repeat the flag to
                                                    # time several MoE variants side by side
        [--data embedded --warmup 100]              # real batches: the routing of a run, not of random bytes
        [--hybrids]                                 # add jamba_tiny, eager and with trainer.compile_mamba

Models, built with ``moe.models.build.build_model`` from the repository's own config files:

- ``moe``: configs/model/moe_tiny.yaml at 4 blocks (the default until 2026-12-03; now 2), d_model 192, a
  shared expert of 384 + 16 routed experts of 192, top-2, with
  configs/router/top_k.yaml, configs/experts/grouped.yaml (impl auto) and balance switch_aux + z_loss;
- ``dense``: configs/model/dense_tiny.yaml at 4 blocks (moe_tiny with num_experts 0 and FFN hidden
  768 = 384 + 2 × 192, so the same active FFN compute per token and no router);
- with ``--hybrids``: ``jamba``, configs/model/jamba_tiny.yaml with the same router, experts and balancers,
  and ``jamba_compiled_scan``, a copy of it whose Mamba scans run compiled (``trainer.compile_mamba``).

A *step* is what the trainer does per optimizer step: forward with targets (loss = CE + the balancers'
aux losses), backward, global grad-norm clipping at configs/optim/adamw.yaml's grad_clip, AdamW step
(moe.optim.build_optimizer with that file's lr, betas, weight decay), ``zero_grad(set_to_none=True)``.
A batch is 8 sequences × 256 tokens (2048 tokens/step): random byte ids (``--data random``, the default),
or with ``--data embedded`` consecutive batches of the default corpus's training split. Random bytes route
unevenly (an untrained router on noise); real text, after a hundred warm-up steps of the balance loss,
routes like a default run, which is what the expert kernels' speed depends on.

Timing: ``--warmup`` untimed steps per model, then ``--steps`` timed steps; models interleaved step by
step (round-robin), so drift and other processes on the machine hit all alike. tokens/s = 2048 / median
step time. With ``--compile`` the eager and the ``torch.compile``-d copies of both models (same initial
weights) run side by side in the same round-robin, and the compile time is reported separately: the
first compiled steps' time minus the compiled model's median step, summed over the warm-up steps
(recompilations when the MoE's per-expert row counts change are included there, and any later ones
show in the median). ``--dtype bf16`` runs forward and loss under CPU autocast (float32 weights and
optimizer). glibc's mmap/trim thresholds are raised for the whole process, as in bench/dispatch.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import yaml
from allocator import ALLOCATOR_ENV, restart_with_allocator_env

from moe.data import build_embedded
from moe.models.build import build_model
from moe.models.mamba import compile_mamba_scans
from moe.optim import build_optimizer

ROOT = Path(__file__).resolve().parent.parent

BATCH, SEQ = 8, 256


def load(group: str, name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / group / f"{name}.yaml").read_text())


def model_config(name: str) -> dict:
    """A model file with its ``defaults`` list resolved (dense_tiny extends moe_tiny)."""
    spec = load("model", name)
    merged: dict = {}
    for parent in spec.pop("defaults", []):
        if parent != "_self_":
            merged.update(model_config(parent))
    return {**merged, **spec}


def experts_config(experts: list[str]) -> dict:
    """``experts`` = [a configs/experts name, KEY=VALUE overrides of it...]."""
    experts_cfg = load("experts", experts[0])
    for override in experts[1:]:
        key, value = override.split("=", 1)
        experts_cfg[key] = yaml.safe_load(value)
    return experts_cfg


def configs(experts: list[list[str]], hybrids: bool) -> dict[str, dict]:
    """The models: one MoE per entry of ``experts`` (the first named ``moe``, the others
    ``moe[their flags]``), the dense model, and with ``hybrids`` jamba_tiny (with the first experts)."""
    balance = {**load("balance", "switch_aux"), **load("balance", "z_loss")}
    shared = {"router": load("router", "top_k"), "balance": balance}
    models = {"moe" if i == 0 else f"moe[{' '.join(flags)}]": ("moe_tiny", flags) for i, flags in enumerate(experts)}
    models.update({"dense": ("dense_tiny", experts[0]), **({"jamba": ("jamba_tiny", experts[0])} if hybrids else {})})
    # four blocks, as every figure in bench/README.md (the default model had four until 2026-12-03)
    return {name: {"model": {**model_config(file), "n_layers": 4}, "experts": experts_config(flags), **shared}
            for name, (file, flags) in models.items()}


def batches(data: str, count: int) -> list[torch.Tensor]:
    """``count`` batches of [BATCH, SEQ + 1] token ids (see the module docstring for ``data``)."""
    if data == "random":
        gen = torch.Generator().manual_seed(0)
        return [torch.randint(0, 256, (BATCH, SEQ + 1), generator=gen) for _ in range(min(count, 8))]
    cfg = load("data", "embedded")
    ids = build_embedded(seq_len=SEQ, max_bytes_per_domain=cfg["max_bytes_per_domain"],
                         cache_dir=str(Path.home() / ".cache" / "moe-lab" / "data")).train.input_ids
    if len(ids) < count * BATCH:
        raise SystemExit(f"--data embedded has {len(ids)} training sequences, fewer than {count} batches of {BATCH}")
    return list(ids[: count * BATCH].split(BATCH))


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, active per token): active counts top_k of the routed experts' parameters."""
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for layer in getattr(model, "moe_layers", []):
        experts = layer.experts
        per_expert = sum(p.numel() for p in experts.parameters()) // experts.num_experts
        inactive += per_expert * (experts.num_experts - int(layer.router.top_k))
    return total, total - inactive


def main() -> None:
    restart_with_allocator_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 4 timed steps (< 1 min eager)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile-d copies")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per model (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--experts", nargs="+", action="append", default=None, metavar="NAME [KEY=VALUE]",
                        help="the MoE's experts config and overrides (default: grouped), "
                             "e.g. capacity pad_multiple=64; repeat for more MoE variants")
    parser.add_argument("--data", choices=("random", "embedded"), default="random",
                        help="random byte ids, or batches of the embedded corpus (use with --warmup 100)")
    parser.add_argument("--hybrids", action="store_true", help="also jamba_tiny, eager and with compiled Mamba scans")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows} here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (4 if args.quick else 50)
    warmup = args.warmup or (2 if args.quick else 5)
    if args.compile:
        warmup = max(warmup, 3)  # the first compiled steps compile (and may recompile once)

    args.experts = args.experts or [["grouped"]]
    cfgs = configs(args.experts, args.hybrids)
    optim_cfg = load("optim", "adamw")
    variants = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg).train()
        variants[name] = model
        if args.compile:
            variants[f"{name}_compiled"] = torch.compile(copy.deepcopy(model))
        if name == "jamba":
            variants["jamba_compiled_scan"] = copy.deepcopy(model)
            compile_mamba_scans(variants["jamba_compiled_scan"])
    optimizers = {
        name: build_optimizer(getattr(m, "_orig_mod", m), lr=optim_cfg["lr"], weight_decay=optim_cfg["weight_decay"],
                              betas=tuple(optim_cfg["betas"]), eps=optim_cfg["eps"])
        for name, m in variants.items()
    }
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    data = batches(args.data, warmup + steps)

    def step(name: str, i: int) -> float:
        model, optimizer = variants[name], optimizers[name]
        batch = data[i % len(data)]
        start = time.perf_counter()
        with autocast:
            out = model(batch[:, :-1], batch[:, 1:])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in variants}
    warm: dict[str, list[float]] = {name: [] for name in variants}
    t0 = time.perf_counter()
    for i in range(warmup + steps):  # round-robin over the models
        for name in variants:
            (warm if i < warmup else times)[name].append(step(name, i))
    total_s = time.perf_counter() - t0

    tokens = BATCH * SEQ
    rows = []
    for name in variants:
        med = statistics.median(times[name])
        base = getattr(variants[name], "_orig_mod", variants[name])
        total, active = count_params(base)
        row = {"model": name, "dtype": args.dtype, "step_ms": med * 1e3, "tokens_per_s": tokens / med,
               "params": total, "active_params": active,
               "step_ms_min": min(times[name]) * 1e3, "step_ms_max": max(times[name]) * 1e3}
        if name.endswith(("_compiled", "_compiled_scan")):
            row["compile_s"] = sum(t - med for t in warm[name])
        rows.append(row)
    by = {r["model"]: r for r in rows}
    print(f"{args.dtype}, experts {' '.join(args.experts[0])}, data {args.data}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch {BATCH}x{SEQ}, "
          f"{warmup} warm-up + median of {steps} interleaved steps ({total_s:.0f} s)")
    width = max(19, *(len(name) for name in variants))
    print(f"{'model':>{width}} | {'params':>9} | {'active':>9} | {'step ms':>8} | {'tokens/s':>8} | {'compile s':>9}")
    for r in rows:
        compile_s = f"{r['compile_s']:9.1f}" if "compile_s" in r else f"{'-':>9}"
        print(f"{r['model']:>{width}} | {r['params']:>9,} | {r['active_params']:>9,} | {r['step_ms']:8.1f} | "
              f"{r['tokens_per_s']:8.0f} | {compile_s}")
    ratios = {f"{name}/dense": by[name]["tokens_per_s"] / by["dense"]["tokens_per_s"]
              for name in by if name.startswith("moe") and not name.endswith("_compiled")}
    if args.compile:
        for a, b in (("moe_compiled", "dense_compiled"), ("moe_compiled", "moe"), ("dense_compiled", "dense")):
            ratios[f"{a}/{b}"] = by[a]["tokens_per_s"] / by[b]["tokens_per_s"]
    if args.hybrids:  # how many times slower than the default MoE
        for name in ("jamba", "jamba_compiled_scan"):
            ratios[f"moe/{name}"] = by["moe"]["tokens_per_s"] / by[name]["tokens_per_s"]
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
                "experts": args.experts, "data": args.data, "hybrids": args.hybrids,
                "steps": steps, "warmup": warmup, "batch": [BATCH, SEQ], "compile": args.compile,
                "allocator_env": ALLOCATOR_ENV, "ratios": ratios,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
