"""Expert dispatch benchmark: time and activation memory of each expert backend against the dense floor.

    .venv/bin/python bench/dispatch.py [--quick] [--dtype bf16] [--mode both|fwdbwd|fwd] [--json PATH]
                                       [--T 2048 8192] [--E 8 32 64] [--k 1 2 4] [--routing uniform skewed]

Grid (default): T ∈ {2048, 8192} tokens, d_model D = 256, expert hidden F = 512 (SwiGLU), E ∈ {8, 32, 64}
experts, top-k ∈ {1, 2, 4}, two routings, two modes (``fwd``: a training forward, autograd recording;
``fwdbwd``: that forward plus backward with a fixed random output gradient, parameter grads reset to
None as ``zero_grad`` does). The gate weights carry a gradient, as from a router.

Routings (seeded, the same routing for every variant of a configuration):

- ``uniform``: top-k of i.i.d. normal logits, near-balanced loads.
- ``skewed``: Zipf-like expert popularity p_e ∝ (e+1)^-1.2; logits = log p_e + Gumbel noise, so the top-k
  is a draw of k distinct experts without replacement from p (expert 0 is picked by ~45-95% of tokens,
  depending on E and k). Gate weights: softmax over the chosen k logits, in both routings.

Variants (interleaved round-robin: each round runs every variant once in each mode, so drift and other
processes on the machine hit all alike; ``--warmup`` untimed rounds first, then the median of
``--repeats`` timed rounds):

- ``grouped``: GroupedExperts(impl="auto"), the default backend (the json row says what auto picked);
- ``sorted_loop``: GroupedExperts(impl="sorted_loop");
- ``loop``: LoopExperts, the project's reference;
- ``capacity``: CapacityExperts (dropless, C = the busiest expert's rows, pad_multiple 64 in bf16 else 1),
  only if ``moe.experts`` exports it; skipped (noted) where padding would exceed 2x the real rows
  (E·C > 2N, skewed routing), where it runs 10-30x slower than the floor and would blow the time budget;
- ``hf_eager``: a re-implementation, written here, of the *pattern* of the eager MoE block in Hugging Face
  Mixtral/Qwen-MoE models (no code copied): a one-hot expert mask [E, k, T] from the top-k indices, a
  Python loop over the experts that got any token, ``torch.where(mask[e])`` for (slot, token) pairs,
  ``x[token]``, two ``F.linear`` calls on per-expert weights taken by indexing the stacked parameters
  ``gate_up_proj[e]`` [2F, D] and ``down_proj[e]`` [D, F], scale by the gate weight, ``index_add_`` back;
- ``floor_whole`` / ``floor_chunked``: one dense SwiGLU of hidden k·F over all T tokens (the FLOPs of
  perfectly balanced routing with no dispatch at all), whole and in 256-token chunks (on CPU the chunked
  one can be faster, cache). **The floor is whichever of the two is faster in that run**, and every
  ratio (``ratio_to_floor``) is a variant's median over that.

Memory (``peak_mb``): the activation memory a training forward keeps alive for backward — the bytes of
all tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``, deduplicated by
storage, excluding the parameters, the input x and the routing tensors, which exist anyway) plus the
output. It counts every intermediate the backward needs (gathered rows, projections, padded buffers,
bf16 weight copies); it misses short-lived temporaries freed during the forward and the gradient buffers
of the backward, so it is a lower bound on the true peak, cheap and deterministic. Measured once per
variant and configuration; the fwd and fwdbwd rows carry the same number.

bf16 (``--dtype bf16``) means autocast with float32 weights, as CPU training would run. glibc's
mmap/trim thresholds are raised before the process starts (the script re-executes itself with them),
the same for every variant: otherwise large activations are mapped and unmapped every step and page
faults slow all variants, the floor most (docs/design.md, "Benchmarks").

Disturbance check: the whole and the chunked floor do the same work and agree within ~1.2x on a quiet
machine; when they differ by more than 1.5x (another process took the cores) the configuration is run
again, up to ``--retries`` times (the json row's ``attempts``; a note if it never settles).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from allocator import ALLOCATOR_ENV, restart_with_allocator_env
from torch import nn

import moe.experts
from moe.experts import GroupedExperts, LoopExperts
from moe.types import Routing

CapacityExperts = getattr(moe.experts, "CapacityExperts", None)
D_MODEL, D_FF, CHUNK = 256, 512, 256
ZIPF_S = 1.2
MODES = ("fwdbwd", "fwd")
BACKENDS = ("grouped", "sorted_loop", "loop", "capacity", "hf_eager")
FLOORS = ("floor_whole", "floor_chunked")
FLOOR_SPREAD_OK = 1.5
QUICK = [(2048, 8, 2, "uniform"), (2048, 64, 2, "skewed")]  # T, E, k, routing


def make_routing(T: int, E: int, k: int, kind: str, seed: int) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        logits_TE = torch.randn(T, E, generator=gen)
    else:  # Zipf popularity + Gumbel noise: top-k = k distinct experts drawn without replacement from p
        log_p_E = -ZIPF_S * torch.log(torch.arange(1, E + 1, dtype=torch.float32))
        u_TE = torch.rand(T, E, generator=gen).clamp_(1e-9, 1 - 1e-9)
        logits_TE = log_p_E - torch.log(-torch.log(u_TE))
    top_TK = logits_TE.topk(k, dim=-1)
    expert_ids_N = top_TK.indices.reshape(-1)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(k), expert_ids_N=expert_ids_N,
        weights_N=top_TK.values.softmax(-1).reshape(-1).requires_grad_(), logits_TE=logits_TE,
        probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
        num_dropped=0, top_k=float(k),
    )


class HFEagerStyleExperts(nn.Module):
    """The HF-eager MoE block pattern (see the module docstring), re-implemented for this benchmark."""

    def __init__(self, E: int, D: int, F_: int):
        super().__init__()
        self.num_experts = E
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * F_, D) * 0.02)  # nn.Linear layout [out, in]
        self.down_proj = nn.Parameter(torch.randn(E, D, F_) * 0.02)

    def forward(self, x_TD: torch.Tensor, routing: Routing) -> torch.Tensor:
        T = x_TD.shape[0]
        top_idx_TK = routing.expert_ids_N.view(T, -1)
        top_w_TK = routing.weights_N.view(T, -1)
        out_TD = torch.zeros_like(x_TD)
        mask_EKT = F.one_hot(top_idx_TK, num_classes=self.num_experts).permute(2, 1, 0)
        hit = torch.greater(mask_EKT.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit.squeeze(-1).tolist():
            slot, token = torch.where(mask_EKT[e])
            h = x_TD[token]
            gate, up = F.linear(h, self.gate_up_proj[e]).chunk(2, dim=-1)
            h = F.linear(F.silu(gate) * up, self.down_proj[e]) * top_w_TK[token, slot, None]
            out_TD.index_add_(0, token, h.to(out_TD.dtype))
        return out_TD


def dense_swiglu(x_TD, w_gate_DH, w_up_DH, w_down_HD, chunk: int | None = None):
    """The floor: (SiLU(x W_gate) ⊙ (x W_up)) W_down with H = k·F, whole or in token chunks."""
    if chunk is not None:
        return torch.cat([dense_swiglu(c, w_gate_DH, w_up_DH, w_down_HD) for c in x_TD.split(chunk)])
    return (F.silu(x_TD @ w_gate_DH) * (x_TD @ w_up_DH)) @ w_down_HD


def saved_activation_mb(fn, x_TD: torch.Tensor, exclude: list[torch.Tensor], autocast) -> float:
    """MB of tensors saved for backward (by storage, minus ``exclude``'s storages) plus the output."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        y = fn(x_TD)
    seen.setdefault(y.untyped_storage().data_ptr(), y.untyped_storage().nbytes())
    return sum(seen.values()) / 2**20


def bench_config(T: int, E: int, k: int, kind: str, dtype: str, modes, repeats: int, warmup: int):
    torch.manual_seed(0)
    D, F_ = D_MODEL, D_FF
    x_TD, routing = torch.randn(T, D), make_routing(T, E, k, kind, seed=1000 * E + 10 * k + T)
    counts = routing.tokens_per_expert_E
    notes = []
    modules = {
        "grouped": GroupedExperts(num_experts=E, d_model=D, d_ff=F_),
        "sorted_loop": GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="sorted_loop"),
        "loop": LoopExperts(num_experts=E, d_model=D, d_ff=F_),
    }
    if CapacityExperts is None:
        notes.append("capacity: moe.experts does not export CapacityExperts")
    else:
        pad = 64 if dtype == "bf16" else 1
        padded_rows = E * (-(-int(counts.max()) // pad) * pad)
        if padded_rows > 2 * T * k:
            notes.append(f"capacity skipped: padding E*C/N = {padded_rows / (T * k):.1f}")
        else:
            modules["capacity"] = CapacityExperts(num_experts=E, d_model=D, d_ff=F_, pad_multiple=pad)
    modules["hf_eager"] = HFEagerStyleExperts(E, D, F_)
    dense_w = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in ((D, k * F_), (D, k * F_), (k * F_, D))]
    fns = {name: (lambda x, m=m: m(x, routing), list(m.parameters())) for name, m in modules.items()}
    fns["floor_whole"] = (lambda x: dense_swiglu(x, *dense_w), dense_w)
    fns["floor_chunked"] = (lambda x: dense_swiglu(x, *dense_w, chunk=CHUNK), dense_w)
    grad_TD = torch.randn(T, D)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(fn, params, mode: str) -> float:
        for p in [*params, routing.weights_N]:
            p.grad = None
        x = x_TD.detach().requires_grad_()
        start = time.perf_counter()
        with autocast:
            y = fn(x)
        if mode == "fwdbwd":
            y.backward(grad_TD.to(y.dtype))
        elapsed = time.perf_counter() - start
        del y
        return elapsed

    times = {(name, mode): [] for name in fns for mode in modes}
    for i in range(warmup + repeats):  # round-robin: drift and neighbours hit every variant alike
        for name, (fn, params) in fns.items():
            for mode in modes:
                t = step(fn, params, mode)
                if i >= warmup:
                    times[name, mode].append(t)
    routing_inputs = [routing.token_ids_N, routing.expert_ids_N, routing.weights_N, routing.tokens_per_expert_E]
    mem = {name: saved_activation_mb(fn, x_TD.detach().requires_grad_(), [*params, x_TD, *routing_inputs],
                                     autocast)
           for name, (fn, params) in fns.items()}
    compute = torch.bfloat16 if dtype == "bf16" else torch.float32
    auto = modules["grouped"].resolved_impl(x_TD.device, compute)
    rows = []
    for mode in modes:
        ms = {name: statistics.median(times[name, mode]) * 1e3 for name in fns}
        floor_name = min(FLOORS, key=ms.get)
        for name in fns:
            rows.append({
                "backend": name, "T": T, "E": E, "k": k, "routing": kind, "mode": mode, "ms": ms[name],
                "ratio_to_floor": ms[name] / ms[floor_name], "peak_mb": mem[name], "dtype": dtype,
                "floor": floor_name, "impl": auto if name == "grouped" else None,
                "max_expert_share": float(counts.max()) / (T * k), "rows_per_expert": T * k / E,
            })
    return rows, notes


def floor_disagreement(rows: list[dict]) -> float:
    """max/min of the whole and chunked floors (worst mode): the two do the same work and agree within
    ~1.2x on a quiet machine, so a larger spread means other processes disturbed this configuration."""
    spreads = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        ms = [r["ms"] for r in rows if r["mode"] == mode and r["backend"] in FLOORS]
        spreads.append(max(ms) / min(ms))
    return max(spreads)


def table_header(names) -> str:
    return (f"{'T':>5} {'E':>3} {'k':>1} {'routing':>7} {'mode':>6} {'hot':>4} | {'floor ms':>13} | "
            + " | ".join(f"{n:>15}" for n in names))


def table_lines(rows: list[dict], names) -> list[str]:
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        by = {r["backend"]: r for r in rows if r["mode"] == mode}
        r0 = by["floor_whole"]
        floor = by[r0["floor"]]
        cells = " | ".join(
            f"{by[n]['ms']:7.1f} ({by[n]['ratio_to_floor']:4.2f}x)" if n in by else f"{'-':>15}" for n in names)
        lines.append(f"{r0['T']:>5} {r0['E']:>3} {r0['k']:>1} {r0['routing']:>7} {mode:>6} "
                     f"{r0['max_expert_share']:4.2f} | {floor['ms']:7.1f} {r0['floor'][6:]:>5} | {cells}")
    return lines


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs' time spent busy over ``seconds`` (Linux /proc/stat), None elsewhere."""
    def sample() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]

    try:
        first = sample()
        time.sleep(seconds)
        delta = [b - a for a, b in zip(first, sample(), strict=True)]
    except OSError:
        return None
    return 1.0 - (delta[3] + delta[4]) / max(sum(delta), 1)  # idle + iowait


def main() -> None:
    restart_with_allocator_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="two configurations (T=2048, k=2; E=8 uniform, E=64 skewed), < 1 min on a quiet "
                        "machine; no re-runs of disturbed configurations unless --retries is given")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--mode", choices=("both", *MODES), default="both")
    parser.add_argument("--T", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--E", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--routing", choices=("uniform", "skewed"), nargs="+", default=["uniform", "skewed"])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--retries", type=int, default=None,
                        help="re-runs of a configuration whose two floors disagree > 1.5x (disturbed); "
                        "default 2, 0 with --quick")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write {meta, rows} here")
    args = parser.parse_args()
    if args.retries is None:  # a quick check must stay quick on a busy machine: it notes disturbance instead
        args.retries = 0 if args.quick else 2
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = QUICK if args.quick else list(itertools.product(args.T, args.E, args.k, args.routing))
    modes = MODES if args.mode == "both" else (args.mode,)
    print(f"{args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats} "
          f"after {args.warmup} warm-up; ms (ratio to the floor = faster of whole/chunked dense); "
          f"hot = busiest expert's share of the assignments")
    busy_before = cpu_busy_fraction()
    if busy_before is not None and busy_before > 0.1:  # OpenMP threads sharing cores: small ops 5-20x slower
        print(f"warning: the CPUs were {busy_before:.0%} busy before start; other work skews the times")
    names = (*BACKENDS, *FLOORS)
    print(table_header(names))
    rows, notes, start = [], [], time.perf_counter()
    for T, E, k, kind in configs:
        for attempt in range(1, args.retries + 2):
            new, new_notes = bench_config(T, E, k, kind, args.dtype, modes, args.repeats, args.warmup)
            spread = floor_disagreement(new)
            if spread <= FLOOR_SPREAD_OK:
                break
            print(f"  (T={T} E={E} k={k} {kind}: whole and chunked floor differ {spread:.2f}x, "
                  f"other load on the CPUs? attempt {attempt})", flush=True)
        for row in new:
            row["attempts"] = attempt
        if spread > FLOOR_SPREAD_OK:
            new_notes.append(f"floors still differ {spread:.2f}x after {attempt} attempts: times unreliable")
        rows += new
        notes += [f"T={T} E={E} k={k} {kind}: {n}" for n in new_notes]
        for line in table_lines(new, names):
            print(line, flush=True)
    print("\nactivation MB (saved for backward + output):")
    print(f"{'T':>5} {'E':>3} {'k':>1} {'routing':>7} | " + " | ".join(f"{n:>13}" for n in names))
    for key, group in itertools.groupby([r for r in rows if r["mode"] == modes[0]],
                                        key=lambda r: (r["T"], r["E"], r["k"], r["routing"])):
        mb = {r["backend"]: r["peak_mb"] for r in group}
        print(f"{key[0]:>5} {key[1]:>3} {key[2]:>1} {key[3]:>7} | "
              + " | ".join(f"{mb[n]:13.1f}" if n in mb else f"{'-':>13}" for n in names))
    for note in notes:
        print("note:", note)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
                "repeats": args.repeats, "warmup": args.warmup, "allocator_env": ALLOCATOR_ENV, "chunk": CHUNK,
                "d_model": D_MODEL, "d_ff": D_FF, "zipf_s": ZIPF_S, "cpu_busy_before": busy_before,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "notes": notes}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
