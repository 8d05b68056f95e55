"""Expert dispatch benchmark: forward+backward time of each backend against the dense floor.

    .venv/bin/python bench/dispatch.py [--quick] [--dtype bf16] [--shape T,E,k,D,F ...]

For each shape (T tokens, E experts, top-k, D = d_model, F = expert hidden) it times, on the same
random near-balanced top-k routing (gate weights carry a gradient, as from a router):

- ``loop``: the loop-over-experts reference (LoopExperts);
- ``sorted_loop`` / ``grouped_mm``: GroupedExperts with that ``impl`` (and which one ``auto`` picks);
- the *dense floor*: one dense SwiGLU of hidden k·F over all T tokens, the same FLOPs as perfectly
  balanced routing with no dispatch at all, run whole and in 256-token chunks (on CPU the chunked
  floor can be faster, cache; PERF_NOTES), both reported; ratios are to the whole floor.

Each time is the median over ``--repeats`` of one forward + backward (a fixed random output
gradient, parameter grads reset to None as ``zero_grad`` does); variants run round-robin so drift hits
all alike. bf16 means autocast with float32 weights, as CPU training would run. glibc's mmap/trim
thresholds are raised before the process starts (the script re-executes itself with them), the same
for every variant: otherwise large activations are mapped and unmapped every step and page faults slow
all variants, the floor most (PERF_NOTES). Prints a table, writes ``bench/results/dispatch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
if __name__ == "__main__" and any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
    # glibc reads these once at start-up, so they must be in the environment before python starts
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moe.experts import GroupedExperts, LoopExperts  # noqa: E402
from moe.types import Routing  # noqa: E402

SHAPES = [  # T, E, k, D, F; rows per expert N/E = T·k/E in the comment
    (4096, 8, 2, 192, 384),  # the default model's MoE layer (batch 16 × 256): 1024
    (2048, 64, 2, 256, 512),  # many small experts, dispatch-overhead bound: 64
    (4096, 64, 2, 256, 512),  # 128
    (8192, 64, 2, 256, 512),  # 256
    (8192, 32, 2, 256, 512),  # 512
    (8192, 8, 2, 256, 512),  # few large experts, GEMM bound: 2048
]
QUICK_SHAPES = [(4096, 8, 2, 192, 384), (2048, 64, 2, 256, 512)]
VARIANTS = ("loop", "sorted_loop", "grouped_mm")
CHUNK = 256


def random_routing(T: int, E: int, k: int) -> Routing:
    """Top-k of random logits (near-balanced), softmax gate weights over the chosen k."""
    logits_TE = torch.randn(T, E)
    top_TK = logits_TE.topk(k, dim=-1)
    expert_ids_N = top_TK.indices.reshape(-1)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(k), expert_ids_N=expert_ids_N,
        weights_N=top_TK.values.softmax(-1).reshape(-1).requires_grad_(), logits_TE=logits_TE,
        probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E),
        num_dropped=0, top_k=float(k),
    )


def dense_swiglu(x_TD, w_gate_DH, w_up_DH, w_down_HD, chunk: int | None = None):
    """The floor: (SiLU(x W_gate) ⊙ (x W_up)) W_down with H = k·F, whole or in token chunks."""
    if chunk is not None:
        return torch.cat([dense_swiglu(c, w_gate_DH, w_up_DH, w_down_HD) for c in x_TD.split(chunk)])
    return (F.silu(x_TD @ w_gate_DH) * (x_TD @ w_up_DH)) @ w_down_HD


def bench_shape(T: int, E: int, k: int, D: int, F_: int, dtype: str, repeats: int) -> dict:
    torch.manual_seed(0)
    x_TD, routing = torch.randn(T, D), random_routing(T, E, k)
    dense_w = [torch.nn.Parameter(torch.randn(*s) * 0.02) for s in ((D, k * F_), (D, k * F_), (k * F_, D))]
    modules = {
        "loop": LoopExperts(num_experts=E, d_model=D, d_ff=F_),
        "sorted_loop": GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="sorted_loop"),
        "grouped_mm": GroupedExperts(num_experts=E, d_model=D, d_ff=F_, impl="grouped_mm"),
    }
    fns = {name: (lambda x, m=m: m(x, routing), list(m.parameters())) for name, m in modules.items()}
    fns["floor"] = (lambda x: dense_swiglu(x, *dense_w), dense_w)
    fns["floor_chunked"] = (lambda x: dense_swiglu(x, *dense_w, chunk=CHUNK), dense_w)
    grad_TD = torch.randn(T, D)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step(fn, params) -> float:
        for p in [*params, routing.weights_N]:
            p.grad = None
        x = x_TD.detach().requires_grad_()
        start = time.perf_counter()
        with autocast:
            y = fn(x)
        y.backward(grad_TD.to(y.dtype))
        return time.perf_counter() - start

    times = {name: [] for name in fns}
    for i in range(repeats + 2):  # two warm-up rounds, round-robin so drift hits every variant alike
        for name, (fn, params) in fns.items():
            t = step(fn, params)
            if i >= 2:
                times[name].append(t)
    compute = torch.bfloat16 if dtype == "bf16" else torch.float32
    auto = GroupedExperts(num_experts=E, d_model=D, d_ff=F_).resolved_impl(x_TD.device, compute)
    row = {"T": T, "E": E, "k": k, "D": D, "F": F_, "rows_per_expert": T * k / E, "dtype": dtype,
           "auto_picks": auto}
    row.update({f"{name}_ms": statistics.median(ts) * 1e3 for name, ts in times.items()})
    return row


COLUMNS = ("floor_chunked", *VARIANTS)


def table_header() -> str:
    return (f"{'T':>5} {'E':>3} {'k':>1} {'D':>4} {'F':>4} {'N/E':>5} | {'floor ms':>8} | "
            + " | ".join(f"{c:>16}" for c in COLUMNS) + " | auto picks")


def table_row(r: dict) -> str:
    cells = " | ".join(f"{r[f'{c}_ms']:8.1f} ({r[f'{c}_ms'] / r['floor_ms']:4.2f}x)" for c in COLUMNS)
    return (f"{r['T']:>5} {r['E']:>3} {r['k']:>1} {r['D']:>4} {r['F']:>4} {r['rows_per_expert']:>5.0f} | "
            f"{r['floor_ms']:8.1f} | {cells} | {r['auto_picks']}")


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


def parse_shape(text: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"--shape wants T,E,k,D,F, got {text!r}")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, 3 repeats")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--shape", type=parse_shape, action="append", help="T,E,k,D,F (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "dispatch.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    shapes = args.shape or (QUICK_SHAPES if args.quick else SHAPES)
    print(f"fwd+bwd, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"median of {repeats}; ms (ratio to the dense floor)")
    busy_before = cpu_busy_fraction()
    if busy_before is not None and busy_before > 0.1:  # OpenMP threads sharing cores: small ops 5-20x slower
        print(f"warning: the CPUs were {busy_before:.0%} busy before start; other work skews the times")
    print(table_header())
    rows = []
    for shape in shapes:
        rows.append(bench_shape(*shape, args.dtype, repeats))
        print(table_row(rows[-1]), flush=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "dtype": args.dtype,
            "repeats": repeats, "allocator_env": ALLOCATOR_ENV, "chunk": CHUNK,
            "cpu_busy_before": busy_before}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
