"""Export a moe-lab run or checkpoint as a Hugging Face model directory (config.json + model.safetensors).

    .venv/bin/python eval/export_hf.py runs/my-run hf-out [--arch qwen2_moe] [--overwrite]

RUN_OR_CKPT_DIR is a run directory (its latest checkpoint is exported) or one checkpoint directory.
The result loads with ``transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)`` and with
``moe.load_model(OUT_DIR)``. Which HF architecture a model becomes, and what cannot be exported:
moe/interop/hf_export.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moe.interop.hf_export import ARCHITECTURES
from moe.interop.save_hf import save_hf

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="RUN_OR_CKPT_DIR", help="moe-lab run or checkpoint directory")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the HF model directory to create")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), help="force a HF model_type (default: the "
                        "first that represents the model exactly)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    try:
        out = save_hf(args.source, args.out_dir, arch=args.arch, overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    model_type = json.loads((out / "config.json").read_text())["model_type"]
    print(f"wrote {out} (model_type {model_type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
