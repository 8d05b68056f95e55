"""Token-mixer benchmark: forward+backward time and activation memory of every mixer against attention at
the same width, and the Mamba-1 chunked scan against its per-timestep loop.

    .venv/bin/python bench/mixers.py [--seq 256 1024 4096] [--batch 2] [--d-model 192] [--repeats 3]
                                     [--dtype fp32|bf16] [--json PATH]

Mixers (each built as the model builds it at ``--d-model``, default 192 = the default model's width):

- ``gqa``: 6 query heads of 32, 2 key/value heads, RoPE (the default model's attention);
- ``mla``: DeepSeek's latent attention with the default ``mla`` sizes;
- ``moa``: mixture of attention heads, 8 experts of 3 heads × 32, top-2 (model=moa_tiny), router included;
- ``mamba``: Mamba-1, d_state 16, expand 2 (the chunked scan, 8 tokens a step);
- ``mamba2``: Mamba-2 SSD, head_dim 64, d_state 16, expand 2.

``ms`` = median over ``--repeats`` timed rounds (after one warm-up) of forward + backward with a fixed
random output gradient, the variants interleaved round-robin. ``act_mb`` = the activation memory the
training forward keeps for backward (autograd-saved tensors by storage, minus parameters and input, plus
the output; bench/dispatch.py's measure: a lower bound on the peak, deterministic).

The scan rows time ``selective_scan_chunked`` (the training path), the same with its chunks through
``torch.compile`` (``trainer.compile_mamba``; compiling happens in the warm-up round) and
``selective_scan_reference`` (the per-timestep loop) alone on the mixer's shapes (d_inner 384, N 16) with
its A and Δ at initialisation, forward + backward in float32, at each sequence length up to
``--loop-max-seq`` (the loop takes seconds beyond).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from dispatch import saved_activation_mb  # noqa: E402  (a sibling script, not a package)

from moe.models.attention import Attention  # noqa: E402
from moe.models.mamba import MambaMixer, selective_scan_chunked, selective_scan_reference  # noqa: E402
from moe.models.mamba2 import Mamba2Mixer  # noqa: E402
from moe.models.mla import MLAttention  # noqa: E402
from moe.models.moa import MixtureOfAttentionHeads  # noqa: E402
from moe.routers import TopKRouter  # noqa: E402


def build_mixers(d_model: int, max_seq_len: int) -> dict[str, torch.nn.Module]:
    heads = 6
    return {
        "gqa": Attention(d_model=d_model, n_heads=heads, n_kv_heads=2, max_seq_len=max_seq_len),
        "mla": MLAttention(d_model=d_model, n_heads=heads, max_seq_len=max_seq_len, rope_theta=10000.0,
                           q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16,
                           v_head_dim=32),
        "moa": MixtureOfAttentionHeads(router=TopKRouter(d_model=d_model, num_experts=8, top_k=2,
                                                         order="topk_then_softmax"),
                                       balancers={}, d_model=d_model, num_experts=8, heads=3, head_dim=32,
                                       max_seq_len=max_seq_len),
        "mamba": MambaMixer(d_model=d_model, d_state=16, d_conv=4, expand=2),
        "mamba2": Mamba2Mixer(d_model=d_model, d_state=16, d_conv=4, expand=2, head_dim=64),
    }


def mixer_call(mixer: torch.nn.Module):
    if isinstance(mixer, MixtureOfAttentionHeads):
        return lambda x: mixer(x)[0]
    return mixer


def time_rounds(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms per variant; every round runs every variant once (round-robin), after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def fwd_bwd(fn, x: torch.Tensor, grad: torch.Tensor, params, autocast):
    def step():
        for p in params:
            p.grad = None
        with autocast:
            y = fn(x)
        y.backward(grad.to(y.dtype))
    return step


def bench_mixers(seq_lens, batch: int, d_model: int, repeats: int, dtype: str) -> list[dict]:
    rows = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    for S in seq_lens:
        torch.manual_seed(0)
        mixers = build_mixers(d_model, S)
        x = torch.randn(batch, S, d_model, requires_grad=True)
        grad = torch.randn(batch, S, d_model)
        fns = {name: fwd_bwd(mixer_call(m), x, grad, list(m.parameters()), autocast) for name, m in mixers.items()}
        ms = time_rounds(fns, repeats)
        for name, mixer in mixers.items():
            act = saved_activation_mb(mixer_call(mixer), x, [x, *mixer.parameters()], autocast)
            rows.append({"kind": "mixer", "name": name, "seq": S, "batch": batch, "d_model": d_model, "dtype": dtype,
                         "ms": ms[name], "vs_gqa": ms[name] / ms["gqa"], "act_mb": act})
    return rows


def scan_step(scan, inputs: list[torch.Tensor], grad: torch.Tensor):
    def step():
        for t in inputs:
            t.grad = None
        scan(*inputs)[0].backward(grad)
    return step


def bench_scan(seq_lens, batch: int, d_model: int, repeats: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=d_model, d_state=16, d_conv=4, expand=2)  # its A and Δ at initialisation
    d_inner, N = mixer.d_inner, mixer.d_state
    for S in seq_lens:
        g = torch.Generator().manual_seed(0)
        dt_BSI = torch.nn.functional.softplus(mixer.dt_proj.bias.detach() + 0.5 * torch.randn(batch, S, d_inner,
                                                                                                  generator=g))
        inputs = [torch.randn(batch, S, d_inner, generator=g).requires_grad_(), dt_BSI.requires_grad_(),
                  (-torch.exp(mixer.A_log.detach())).requires_grad_(),
                  torch.randn(batch, S, N, generator=g).requires_grad_(),
                  torch.randn(batch, S, N, generator=g).requires_grad_()]
        grad = torch.randn(batch, S, d_inner)

        ms = time_rounds({"chunked": scan_step(selective_scan_chunked, inputs, grad),
                          "compiled": scan_step(partial(selective_scan_chunked, compiled=True), inputs, grad),
                          "loop": scan_step(selective_scan_reference, inputs, grad)}, repeats)
        rows.append({"kind": "scan", "seq": S, "batch": batch, "d_inner": d_inner, "d_state": N,
                     "chunked_ms": ms["chunked"], "compiled_ms": ms["compiled"], "loop_ms": ms["loop"],
                     "speedup": ms["loop"] / ms["chunked"], "compiled_speedup": ms["loop"] / ms["compiled"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--loop-max-seq", type=int, default=1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    mixer_rows = bench_mixers(args.seq, args.batch, args.d_model, args.repeats, args.dtype)
    print(f"| mixer | seq | fwd+bwd ms | × gqa | activations MB |   ({args.dtype}, batch {args.batch}, "
          f"d_model {args.d_model}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print("| --- | --- | --- | --- | --- |")
    for r in mixer_rows:
        print(f"| {r['name']} | {r['seq']} | {r['ms']:.1f} | {r['vs_gqa']:.2f} | {r['act_mb']:.1f} |")
    scan_rows = bench_scan([s for s in args.seq if s <= args.loop_max_seq], args.batch, args.d_model, args.repeats)
    print("\n| scan seq | chunked ms | compiled ms | per-timestep loop ms | speed-up (chunked / compiled) |")
    print("| --- | --- | --- | --- | --- |")
    for r in scan_rows:
        print(f"| {r['seq']} | {r['chunked_ms']:.1f} | {r['compiled_ms']:.1f} | {r['loop_ms']:.1f} | "
              f"{r['speedup']:.1f}× / {r['compiled_speedup']:.1f}× |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(mixer_rows + scan_rows, indent=2))


if __name__ == "__main__":
    main()
