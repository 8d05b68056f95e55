"""Where GroupedExperts' auto stops using the padded kernel: padded_bmm against grouped_mm in bf16 on the
CPU, as the routing grows skewed and the padding E·C/N with it.

    .venv/bin/python bench/padded_crossover.py [--T 2048] [--E 16] [--k 2] [--D 192] [--F 192]
        [--zipf 0 0.25 0.5 0.75 1 1.5] [--repeats 21] [--warmup 3] [--json PATH]

The defaults are one MoE layer of the default model at one micro-batch (8 × 256 tokens, 16 experts of
192, top-2). Routing: expert popularity p_e ∝ (e+1)^-s (s = ``--zipf``; 0 is uniform) and k distinct
experts per token drawn from it without replacement; gate weights 1/k. Every round draws a new routing
(seeded), so the per-expert row counts change from round to round as they do between training steps:
with one fixed routing, grouped_mm would reuse its oneDNN setup and look faster than in training. For
each s both impls of GroupedExperts (the same weights) run a forward and a backward with a fixed random
output gradient under bf16 autocast, interleaved round-robin; the table gives the medians, the median
E·C/N (C = the busiest expert's rows rounded up to 64) and what ``impl=auto`` picks at that padding.
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
from moe.experts.grouped import padded_capacity
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
    impls = {impl: GroupedExperts(**dims, impl=impl) for impl in ("grouped_mm", "padded_bmm")}
    impls["padded_bmm"].load_state_dict(impls["grouped_mm"].state_dict())
    auto = GroupedExperts(**dims)
    x_TD = torch.randn(args.T, args.D, requires_grad=True)
    grad_TD = torch.randn(args.T, args.D)
    rows = []
    print(f"T={args.T} E={args.E} k={args.k} D={args.D} F={args.F}, bf16 autocast, fwd+bwd, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| zipf s | busiest expert's share | E·C/N | grouped_mm ms | padded_bmm ms | padded / grouped "
          "| auto (mostly) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in args.zipf:
        n, times, shares, paddings, autos = args.T * args.k, {impl: [] for impl in impls}, [], [], []
        for i in range(args.warmup + args.repeats):
            routing = zipf_routing(args.T, args.E, args.k, s, seed=i)
            counts_E = routing.tokens_per_expert_E
            for impl, experts in impls.items():
                seconds = step_seconds(experts, x_TD, routing, grad_TD)
                if i >= args.warmup:
                    times[impl].append(seconds)
            shares.append(float(counts_E.max()) / n)
            paddings.append(args.E * padded_capacity(counts_E) / n)
            autos.append(auto.resolved_impl(x_TD.device, torch.bfloat16, counts_E))
        ms = {impl: statistics.median(t) * 1e3 for impl, t in times.items()}
        row = {"zipf": s, "max_share": statistics.median(shares), "padding": statistics.median(paddings),
               "grouped_mm_ms": ms["grouped_mm"], "padded_bmm_ms": ms["padded_bmm"],
               "ratio": ms["padded_bmm"] / ms["grouped_mm"],
               "auto": max(set(autos), key=autos.count)}
        rows.append(row)
        print(f"| {s:g} | {row['max_share']:.3f} | {row['padding']:.2f} | {ms['grouped_mm']:.1f} | "
              f"{ms['padded_bmm']:.1f} | {row['ratio']:.2f} | {row['auto']} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
