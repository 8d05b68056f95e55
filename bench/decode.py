"""Decoding speed with and without the decode state: tokens/s of greedy generation after a long prompt.

    .venv/bin/python bench/decode.py [--model moe_tiny | --path RUN] [--context 512] [--new 32] [--batch 1]
                                     [--bits 8] [--offload N] [--json PATH]

The model is built from configs/model/NAME.yaml at four blocks (bench/README.md's figures; the default
had four until 2026-12-03) with ``max_seq_len`` raised to context + new, random weights (speed does
not depend on them). ``cached``: moe.generation.generate (one prefill, then one token's forward per
step). ``uncached``: the full sequence re-run at every step, as a model without a
cache must. Both produce the same tokens (checked). Reported: new tokens per second of each, after one
warm-up, and their ratio. ``--offload N`` runs the cached generation with the experts offloaded
(moe/offload.py, N resident per layer) and adds its hit rate, prefetch precision and recall, bytes read per
token and the fully resident model's tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import compose  # noqa: E402  (the configs as train.py composes them)

from moe.generation import generate  # noqa: E402
from moe.loading import load_model  # noqa: E402
from moe.models.build import build_model  # noqa: E402
from moe.offload import offload_experts  # noqa: E402
from moe.quantize import quantize_experts  # noqa: E402


@torch.no_grad()
def uncached(model, prompts: list[list[int]], new: int) -> list[list[int]]:
    ids = torch.tensor(prompts)
    for _ in range(new):
        ids = torch.cat((ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids[:, len(prompts[0]):].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="moe_tiny")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bits", default=None, help="quantize the routed experts first: 8, 4, 2 or ternary")
    parser.add_argument("--offload", type=int, default=None, help="offload the experts, this many resident per layer")
    parser.add_argument("--path", help="a trained run or checkpoint instead of the random --model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = compose(f"model={args.model}", "model.n_layers=4", f"model.max_seq_len={args.context + args.new}",
                     "logger=none")
    model = build_model(config).eval() if args.path is None else load_model(args.path)
    if args.bits is not None:
        model = quantize_experts(model, bits=args.bits if args.bits == "ternary" else int(args.bits))
    prompts = torch.randint(0, 256, (args.batch, args.context), generator=torch.Generator().manual_seed(1)).tolist()
    reference = copy.deepcopy(model)  # the resident model (uncached runs use it)
    stats = None
    if args.offload is not None:
        stats = offload_experts(model, resident=args.offload, store=Path(tempfile.mkdtemp()) / "experts")
    rows = {}
    for name, run in (("cached", lambda: generate(model, prompts, max_new_tokens=args.new)),
                      ("uncached", lambda: uncached(reference, prompts, args.new))):
        run()  # warm-up
        start = time.perf_counter()
        tokens = run()
        rows[name] = {"seconds": time.perf_counter() - start, "tokens": tokens}
    assert rows["cached"]["tokens"] == rows["uncached"]["tokens"], "the cache changed the greedy tokens"
    result = {"model": args.path or args.model, "bits": args.bits, "context": args.context, "new": args.new,
              "batch": args.batch,
              **{f"{name}_tokens_per_s": args.batch * args.new / row["seconds"] for name, row in rows.items()}}
    result["speedup"] = result["cached_tokens_per_s"] / result["uncached_tokens_per_s"]
    if stats is not None:  # over both generate calls (warm-up and timed): prompt and new tokens
        result.update(offload=args.offload, **stats.summary(tokens=2 * args.batch * (args.context + args.new)))
        resident = generate(reference, prompts, max_new_tokens=args.new)
        start = time.perf_counter()
        generate(reference, prompts, max_new_tokens=args.new)
        result["resident_tokens_per_s"] = args.batch * args.new / (time.perf_counter() - start)
        assert resident == rows["cached"]["tokens"], "offloading changed the tokens"
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
