"""Does self-contrast decoding (SCMoE) help at our scale? Exact match on held-out arithmetic, greedy against
SCMoE, for a byte-level run trained on ``data=four_domains`` (whose arithmetic domain this task follows).

    python eval/scmoe_arithmetic.py RUN_DIR [--problems 200] [--betas 0.1 0.5 0.9] [--ranks 2] [--out PATH]

Each problem is a document of the arithmetic domain's generator with an index far beyond the training
split (moe/data/extra_domains.py): its first three lines as context, then "a op b = ", and the model must
write the answer and a newline. The score is the share of exact answers, greedy and with SCMoE
(moe/scmoe.py, α = 0.1) for every β × rank.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from moe.data.extra_domains import arithmetic_document
from moe.data.tokenizer import ByteTokenizer
from moe.generation import generate
from moe.loading import load_model
from moe.scmoe import SCMoE

HELD_OUT = 10_000_000  # arithmetic document indices from here on are never in a training split


def problems(count: int) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: three solved lines of one held-out document, then the fourth line's question."""
    pairs = []
    for index in range(HELD_OUT, HELD_OUT + count):
        lines = arithmetic_document(index).splitlines()
        question, answer = lines[3].split(" = ")
        pairs.append(("\n".join(lines[:3]) + "\n" + question + " = ", answer))
    return pairs


def exact_match(model, pairs, *, scmoe: SCMoE | None, batch: int = 32) -> float:
    tokenizer, correct = ByteTokenizer(), 0
    newline = tokenizer.encode("\n")[0]
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        prompts = [tokenizer.encode(prompt) for prompt, _ in chunk]
        # an answer has at most 8 characters and a newline; a short-context model gets what fits
        room = min(12, model.max_seq_len - max(len(p) for p in prompts))
        outputs = generate(model, prompts, max_new_tokens=room, stop_tokens=[newline], scmoe=scmoe)
        correct += sum(tokenizer.decode(out).strip() == answer for out, (_, answer) in zip(outputs, chunk, strict=True))
    return correct / len(pairs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a moe-lab run or checkpoint directory (byte tokenizer)")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--betas", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        model, pairs = load_model(args.path), problems(args.problems)
        results = {"problems": len(pairs), "greedy": exact_match(model, pairs, scmoe=None)}
        for rank in args.ranks:
            for beta in args.betas:
                results[f"scmoe_rank{rank}_beta{beta}"] = exact_match(model, pairs, scmoe=SCMoE(beta=beta, rank=rank))
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"scmoe_arithmetic.py: error: {err}")
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
