"""Generate text from a moe-lab run or checkpoint, or a Hugging Face model directory, with its tokenizer.

    python eval/generate.py RUN_DIR_OR_HF_DIR --prompt "def fib(n):" [--prompt ...] [--max-new-tokens 64]
        [--temperature 0] [--top-k K] [--top-p P] [--seed 0] [--no-stop] [--scmoe-beta 0.5 --scmoe-rank 2]
        [--offload-experts N [--offload-tier auto|disk|host]]

The tokenizer is the one the model was trained with: a tokenizer.json in the directory, else the run's
``data.tokenizer``, else moe-lab's bytes. Generation stops at the tokenizer's end-of-document token
(unless ``--no-stop``) or after ``--max-new-tokens``; several prompts run as one left-padded batch
(moe/generation.py). ``--temperature 0`` (the default) is greedy decoding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from moe.data.tokenizer import load_tokenizer
from moe.generation import check_sampling, generate
from moe.loading import load_model
from moe.offload import offload_experts
from moe.scmoe import SCMoE
from moe.upcycle.source_backbone import source_tokenizer


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a moe-lab checkpoint or run directory, or a Hugging Face model directory")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-stop", action="store_true", help="do not stop at the end-of-document token")
    parser.add_argument("--scmoe-beta", type=float, default=None,
                        help="self-contrast decoding (SCMoE) with this β (off when absent)")
    parser.add_argument("--scmoe-rank", type=int, default=2, help="SCMoE's weak pass: each token's r-th expert")
    parser.add_argument("--scmoe-alpha", type=float, default=0.1, help="SCMoE's plausibility cutoff α")
    parser.add_argument("--offload-experts", type=int, default=None, metavar="N",
                        help="keep N routed experts per layer on the device, the rest in the slow tier "
                             "(moe/offload.py)")
    parser.add_argument("--offload-tier", choices=("auto", "disk", "host"), default="auto",
                        help="where offloaded experts wait: a temporary file (disk) or CPU memory (host); "
                             "auto: host for a model on a GPU, else disk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        check_sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)  # before loading
        tokenizer = load_tokenizer(source_tokenizer(args.path))
        model = load_model(args.path, device=args.device)
        if args.offload_experts is not None:
            stats = offload_experts(model, resident=args.offload_experts, tier=args.offload_tier,
                                    store=Path(tempfile.mkdtemp(prefix="moe-offload-")) / "experts")
        prompts = [tokenizer.encode(text) for text in args.prompt]
        scmoe = None if args.scmoe_beta is None else SCMoE(beta=args.scmoe_beta, alpha=args.scmoe_alpha,
                                                           rank=args.scmoe_rank)
        outputs = generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                           stop_tokens=() if args.no_stop else (tokenizer.eos_id,), scmoe=scmoe)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"generate.py: error: {err}")
    texts = [tokenizer.decode(ids) for ids in outputs]
    if args.offload_experts is not None:
        tokens = sum(len(p) + len(o) for p, o in zip(prompts, outputs, strict=True))
        print(f"offload: {stats.summary(tokens=tokens)}", file=sys.stderr)
    for prompt, text in zip(args.prompt, texts, strict=True):
        print(f"{prompt}{text}")
    return texts


if __name__ == "__main__":
    main()
