"""Padding in bf16 on the CPU, one MoE layer: grouped_mm on the raw per-expert row counts, grouped_mm on
rows rounded up to 64 per expert (``impl=auto``'s default there), and padded_bmm (every expert padded to
the busiest one, C rounded to 64), as the routing grows skewed.

    .venv/bin/python bench/padded_crossover.py [--T 2048] [--E 16] [--k 2] [--D 192] [--F 192]
        [--zipf 0 0.25 0.5 0.75 1 1.5] [--repeats 21] [--warmup 3] [--json PATH]

The defaults are one MoE layer of the default model at one micro-batch (8 × 256 tokens, 16 experts of
192, top-2). Routing: expert popularity p_e ∝ (e+1)^-s (s = ``--zipf``; 0 is uniform) and k distinct
experts per token drawn from it without replacement; gate weights 1/k. Every round draws a new routing
(seeded), so the per-expert row counts change from round to round as they do between training steps:
with one fixed routing, grouped_mm would reuse its oneDNN setup and look faster than in training. For
each s the three kernels (GroupedExperts with the same weights) run a forward and a backward with a fixed
random output gradient under bf16 autocast, interleaved round-robin; the table gives the medians and the
median rows each padding computes per real row: Σ_e round_up(n_e, 64) / N and E·C / N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from allocator import restart_with_allocator_env

from moe.experts import GroupedExperts
from moe.experts.padded import round_up, rounded_slots
from moe.types import Routing


def zipf_routing(T: int, E: int, k: int, s: float, seed: int = 0) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    p_E = torch.arange(1, E + 1, dtype=torch.float32) ** -s
    expert_ids_N = torch.multinomial(p_E.expand(T, E), k, replacement=False, generator=gen).reshape(-1)
    logits_TE = torch.zeros(T, E)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(k), expert_ids_N=expert_ids_N,
        weights_N=torch.full((T * k,), 1.0 / k, requires_grad=True), logits_TE=logits_TE,
        probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
        num_dropped=0, top_k=float(k),
    )


def step_seconds(experts: GroupedExperts, x_TD: torch.Tensor, routing: Routing, grad_TD: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_TD = experts(x_TD, routing)
    y_TD.float().backward(grad_TD)
    experts.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("T", 2048), ("E", 16), ("k", 2), ("D", 192), ("F", 192)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--zipf", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1, 1.5])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    restart_with_allocator_env()
    torch.manual_seed(0)
    dims = {"num_experts": args.E, "d_model": args.D, "d_ff": args.F}
    impls = {"grouped_mm, raw rows": GroupedExperts(**dims, impl="grouped_mm", pad_multiple=1),
             "grouped_mm, rows to 64 (auto)": GroupedExperts(**dims, impl="grouped_mm", pad_multiple=64),
             "padded_bmm, C to 64": GroupedExperts(**dims, impl="padded_bmm", pad_multiple=64)}
    for experts in impls.values():
        experts.load_state_dict(GroupedExperts(**dims).state_dict())
    x_TD = torch.randn(args.T, args.D, requires_grad=True)
    grad_TD = torch.randn(args.T, args.D)
    rows = []
    print(f"T={args.T} E={args.E} k={args.k} D={args.D} F={args.F}, bf16 autocast, fwd+bwd, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"| zipf s | busiest expert's share | rows to 64 / N | E·C/N | {' ms | '.join(impls)} ms |")
    print("| --- " * (4 + len(impls)) + "|")
    for s in args.zipf:
        n, times, shares, rounded, padded = args.T * args.k, {name: [] for name in impls}, [], [], []
        for i in range(args.warmup + args.repeats):
            routing = zipf_routing(args.T, args.E, args.k, s, seed=i)
            counts_E = routing.tokens_per_expert_E
            for name, experts in impls.items():
                seconds = step_seconds(experts, x_TD, routing, grad_TD)
                if i >= args.warmup:
                    times[name].append(seconds)
            shares.append(float(counts_E.max()) / n)
            rounded.append(int(rounded_slots(counts_E, 64)[1].sum()) / n)
            padded.append(args.E * round_up(int(counts_E.max()), 64) / n)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        row = {"zipf": s, "max_share": statistics.median(shares), "rounded_rows": statistics.median(rounded),
               "padded_rows": statistics.median(padded), "ms": ms}
        rows.append(row)
        print(f"| {s:g} | {row['max_share']:.3f} | {row['rounded_rows']:.2f} | {row['padded_rows']:.2f} | "
              + " | ".join(f"{v:.1f}" for v in ms.values()) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
