"""Quantize the routed experts of a run, checkpoint or HF directory into a new checkpoint, and report the
bytes of the experts before and after.

    python eval/quantize.py RUN_OR_HF_DIR OUT_DIR --bits 8|4|2|ternary [--group-size 32]

The output is an ordinary moe-lab checkpoint (``load_model``, perplexity.py, generate.py read it).
"""

from __future__ import annotations

import argparse
import sys

from moe.loading import load_model
from moe.quantize import save_quantized


def expert_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for block in model.blocks if block.is_moe
               for t in [*block.ffn.experts.parameters(), *block.ffn.experts.buffers()])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a moe-lab run or checkpoint directory, or a Hugging Face model directory")
    parser.add_argument("out", help="the new checkpoint directory (must not exist)")
    parser.add_argument("--bits", default="8", help="8, 4, 2 or ternary")
    parser.add_argument("--group-size", type=int, default=32, help="inputs per scale for 4 and 2 bits")
    args = parser.parse_args(argv)
    bits = args.bits if args.bits == "ternary" else int(args.bits) if args.bits.isdigit() else args.bits
    try:
        out = save_quantized(args.source, args.out, bits=bits, group_size=args.group_size)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        sys.exit(f"quantize.py: error: {err}")
    before, after = expert_bytes(load_model(args.source)), expert_bytes(load_model(out))
    report = {"out": str(out), "bits": bits, "expert_bytes_before": before, "expert_bytes_after": after,
              "ratio": before / after}
    print(report)
    return report


if __name__ == "__main__":
    main()
