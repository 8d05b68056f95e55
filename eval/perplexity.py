"""Loss and perplexity per domain of a checkpoint, run directory or Hugging Face model directory.

    .venv/bin/python eval/perplexity.py runs/my-run                      # its own validation split
    .venv/bin/python eval/perplexity.py runs/my-run data=embedded         # the embedded corpus
    .venv/bin/python eval/perplexity.py runs/my-run data=hf data.data_files=notes.txt --split train
    .venv/bin/python eval/perplexity.py path/to/hf-mixtral data=chat data.data_files=rows.jsonl --out ppl.json

Scores the first ``--max-sequences`` sequences of each domain — by default the run's own
``trainer.eval_sequences_per_domain`` (null, the whole split, unless the run set a number), what
training evaluated, so the numbers reproduce the run's final val loss; ``--all`` scores the whole
split (578 sequences of the embedded validation split: about 6 s for the default MoE on 2 cores) —
with the token-weighted mean cross-entropy in nats/token, and perplexity = exp(loss). A progress bar
on stderr counts the sequences. With the byte tokenizer a token is a byte, so the loss is also
nats/byte and bits/byte = loss / ln 2. Prints a Markdown table;
``--out`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from model_and_data import eval_data, load
from tqdm.auto import tqdm

from moe.checkpoint import read_config, resolve_checkpoint
from moe.evaluation import evaluate

DEFAULT_SEQUENCES_PER_DOMAIN = None  # trainer.eval_sequences_per_domain's default: the whole split


def perplexity_table(path: str, overrides: list[str], *, split: str = "val", max_sequences: int | None = None,
                     batch_size: int = 8, device: str = "cpu", progress: bool = False) -> dict:
    """{"overall": {...}, "domains": {name: {"loss", "perplexity", "bits_per_token", "sequences"}}}."""
    model, config = load(path, device=device)
    data = eval_data(path, config, overrides, model)
    packed = getattr(data, split)
    if len(packed) == 0:
        raise ValueError(f"the {split} split of the data is empty")
    picks = [torch.nonzero(packed.domain_ids == d).flatten()[:max_sequences] for d in range(len(data.domains))]
    ids = torch.cat(picks)
    mask = getattr(packed, "loss_mask", None)
    kwargs = {"loss_mask": mask[ids]} if mask is not None else {}
    with tqdm(total=len(ids), desc="scoring", unit="seq", file=sys.stderr, disable=not progress) as bar:
        metrics = evaluate(model, packed.input_ids[ids], packed.domain_ids[ids], data.domains, batch_size=batch_size,
                           device=torch.device(device), on_batch=bar.update, **kwargs)

    def row(loss: float, sequences: int) -> dict:
        return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
                "sequences": sequences}

    table = {"model": str(path), "split": split, "seq_len": packed.seq_len,
             "overall": row(metrics["val/loss"], len(ids)), "domains": {}}
    for d, name in enumerate(data.domains):
        if f"val/{name}/loss" in metrics:
            table["domains"][name] = row(metrics[f"val/{name}/loss"], len(picks[d]))
    return table


def default_sequences_per_domain(path: str) -> int | None:
    """The run's own evaluation subset size (a HF directory or an unreadable config: the whole split, our
    default); None means the whole split."""
    try:
        config = read_config(resolve_checkpoint(Path(path)) / "config.yaml")
    except (FileNotFoundError, ValueError):
        return DEFAULT_SEQUENCES_PER_DOMAIN
    return (config.get("trainer") or {}).get("eval_sequences_per_domain", DEFAULT_SEQUENCES_PER_DOMAIN)


def to_markdown(table: dict) -> str:
    lines = [f"{table['model']} on the {table['split']} split ({table['seq_len']}-token sequences)", "",
             "| domain | sequences | loss (nats/token) | perplexity | bits/token |", "|---|---:|---:|---:|---:|"]
    for name, r in [*table["domains"].items(), ("all", table["overall"])]:
        lines.append(f"| {name} | {r['sequences']} | {r['loss']:.4f} | {r['perplexity']:.3f} | "
                     f"{r['bits_per_token']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a moe-lab checkpoint or run directory, or a Hugging Face model directory")
    parser.add_argument("overrides", nargs="*", help="data config overrides, as for train.py (data=hf ...)")
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--max-sequences", type=int, default=None,
                        help="per domain (default: the run's trainer.eval_sequences_per_domain, else all)")
    parser.add_argument("--all", action="store_true", help="score every sequence of the split")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if args.all and args.max_sequences is not None:
        parser.error("--all and --max-sequences exclude each other")
    max_sequences = None if args.all else args.max_sequences or default_sequences_per_domain(args.path)
    try:
        table = perplexity_table(args.path, args.overrides, split=args.split, max_sequences=max_sequences,
                                 batch_size=args.batch_size, device=args.device, progress=True)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"perplexity.py: error: {err}")
    print(to_markdown(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
