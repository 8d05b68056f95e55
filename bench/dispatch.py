"""Expert dispatch benchmark: forward+backward time of each backend against the dense floor.

    .venv/bin/python bench/dispatch.py [--quick] [--dtype bf16]

For each shape (T tokens, E experts, top-k, D, F) it times the loop reference, the grouped backend
with each ``impl``, and the *dense floor*: one dense SwiGLU of hidden k·F over all T tokens (the same
FLOPs as perfectly balanced routing). It prints times and ratios to the floor and writes
``bench/results/dispatch.json``. Routing is random top-k (near-balanced). glibc's mmap thresholds are
raised before torch starts (the script re-executes itself), for every variant alike: large
activations are otherwise mapped and unmapped each step, which slows all variants (PERF_NOTES).
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
if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from moe.experts import GroupedExperts, LoopExperts  # noqa: E402
from moe.models import SwiGLU  # noqa: E402
from moe.routers import TopKRouter  # noqa: E402

SHAPES = [  # T, E, k, D, F
    (4096, 8, 2, 192, 384),  # the default model's MoE layer (batch 16 x 256)
    (2048, 64, 2, 256, 512),  # many small experts: dispatch-overhead bound
    (8192, 8, 2, 256, 512),  # few large experts: GEMM bound
    (8192, 32, 2, 256, 512),
]
QUICK_SHAPES = SHAPES[:2]


def time_fwd_bwd(fn, x, repeats: int) -> float:
    """Median seconds of forward + backward (after two warm-up runs)."""
    times = []
    for i in range(repeats + 2):
        x_grad = x.detach().requires_grad_()
        start = time.perf_counter()
        fn(x_grad).float().pow(2).mean().backward()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_shape(T, E, k, D, F, dtype, repeats) -> dict:
    torch.manual_seed(0)
    x = torch.randn(T, D)
    routing = TopKRouter(d_model=D, num_experts=E, top_k=k)(x)
    routing.weights_N = routing.weights_N.detach()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    variants = {
        "loop": LoopExperts(num_experts=E, d_model=D, d_ff=F),
        "sorted_loop": GroupedExperts(num_experts=E, d_model=D, d_ff=F, impl="sorted_loop"),
        "grouped_mm": GroupedExperts(num_experts=E, d_model=D, d_ff=F, impl="grouped_mm"),
    }
    dense = SwiGLU(d_model=D, d_ff=k * F)
    result = {"T": T, "E": E, "k": k, "D": D, "F": F, "dtype": dtype}
    with autocast:
        result["dense_floor_s"] = time_fwd_bwd(dense, x, repeats)
        for name, experts in variants.items():
            result[f"{name}_s"] = time_fwd_bwd(lambda x_, e=experts: e(x_, routing), x, repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, fewer repeats")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dispatch.json"))
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 7)
    rows = [bench_shape(*shape, args.dtype, repeats) for shape in (QUICK_SHAPES if args.quick else SHAPES)]
    header = f"{'T':>5} {'E':>3} {'k':>2} {'D':>4} {'F':>4} | {'floor ms':>8} | " + " | ".join(
        f"{n:>16}" for n in ("loop", "sorted_loop", "grouped_mm"))
    print(f"fwd+bwd, {args.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          "ms (ratio to the dense floor)")
    print(header)
    for r in rows:
        cells = " | ".join(f"{r[f'{n}_s'] * 1e3:8.1f} ({r[f'{n}_s'] / r['dense_floor_s']:4.2f}x)"
                           for n in ("loop", "sorted_loop", "grouped_mm"))
        shape = f"{r['T']:>5} {r['E']:>3} {r['k']:>2} {r['D']:>4} {r['F']:>4}"
        print(f"{shape} | {r['dense_floor_s'] * 1e3:8.1f} | {cells}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
