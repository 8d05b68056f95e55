"""Decoding speed with and without the decode state: tokens/s of greedy generation after a long prompt.

    .venv/bin/python bench/decode.py [--model moe_tiny] [--context 512] [--new 32] [--batch 1] [--bits 8]
                                     [--json PATH]

The model is built from configs/model/NAME.yaml with ``max_seq_len`` raised to context + new, random
weights (speed does not depend on them). ``cached``: moe.generation.generate (one prefill, then one
token's forward per step). ``uncached``: the full sequence re-run at every step, as a model without a
cache must. Both produce the same tokens (checked). Reported: new tokens per second of each, after one
warm-up, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from conftest import compose  # noqa: E402  (the configs as train.py composes them)

from moe.generation import generate  # noqa: E402
from moe.models.build import build_model  # noqa: E402
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = compose(f"model={args.model}", f"model.max_seq_len={args.context + args.new}", "logger=none")
    model = build_model(config).eval()
    if args.bits is not None:
        model = quantize_experts(model, bits=args.bits if args.bits == "ternary" else int(args.bits))
    prompts = torch.randint(0, 256, (args.batch, args.context), generator=torch.Generator().manual_seed(1)).tolist()
    rows = {}
    for name, run in (("cached", lambda: generate(model, prompts, max_new_tokens=args.new)),
                      ("uncached", lambda: uncached(model, prompts, args.new))):
        run()  # warm-up
        start = time.perf_counter()
        tokens = run()
        rows[name] = {"seconds": time.perf_counter() - start, "tokens": tokens}
    assert rows["cached"]["tokens"] == rows["uncached"]["tokens"], "the cache changed the greedy tokens"
    result = {"model": args.model, "bits": args.bits, "context": args.context, "new": args.new, "batch": args.batch,
              **{f"{name}_tokens_per_s": args.batch * args.new / row["seconds"] for name, row in rows.items()}}
    result["speedup"] = result["cached_tokens_per_s"] / result["uncached_tokens_per_s"]
    print(json.dumps(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
