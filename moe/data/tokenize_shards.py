"""Tokenise a corpus once into token shards (moe/data/token_shards.py), for ``data=tokens``:

    python -m moe.data.tokenize_shards --out data/shards --path json --data-files corpus.jsonl \\
        [--domain-field source] [--tokenizer byte|DIR_OR_TOKENIZER_JSON] [--num-proc 8] [--shard-tokens N]
    python train.py data=tokens data.path=data/shards

``--path``/``--name``/``--data-files``/``--split`` are those of ``datasets.load_dataset`` (local files
or a hub dataset), as for ``data=hf``. The output directory must not exist: it is written under a
temporary name and renamed when complete, so a half-written corpus is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from moe.data.hf import load_text_dataset
from moe.data.split import check_val_fraction, is_validation
from moe.data.token_shards import FORMAT, MANIFEST
from moe.data.tokenizer import load_tokenizer

_BATCH_ROWS = 1024


class _ShardWriter:
    """Appends documents (each followed by eos) to ``{prefix}-{k:05d}.bin`` files of at most ``limit`` ids
    (a document is never split across two files, unless it alone exceeds the limit)."""

    def __init__(self, root: Path, prefix: str, dtype, eos_id: int, limit: int):
        self.root, self.prefix, self.dtype, self.eos, self.limit = root, prefix, dtype, eos_id, limit
        self.files: list[list] = []  # [name, tokens]
        self.handle = None

    def add(self, ids: np.ndarray) -> None:
        if self.handle is None or (self.files[-1][1] and self.files[-1][1] + len(ids) + 1 > self.limit):
            self._next_file()
        self.handle.write(np.append(ids, self.eos).astype(self.dtype).tobytes())
        self.files[-1][1] += len(ids) + 1

    def _next_file(self) -> None:
        if self.handle is not None:
            self.handle.close()
        name = f"{self.prefix}-{len(self.files):05d}.bin"
        self.handle = (self.root / name).open("wb")
        self.files.append([name, 0])

    def close(self) -> list[list]:
        if self.handle is not None:
            self.handle.close()
        return self.files


def tokenize_to_shards(*, out: str | Path, path: str, name: str | None = None, data_files=None, split: str = "train",
                       text_field: str = "text", domain_field: str | None = None, val_fraction: float = 0.05,
                       tokenizer: str = "byte", eos_token: str | None = None, num_proc: int = 1,
                       shard_tokens: int = 1 << 27, max_documents: int | None = None,
                       cache_dir: str | None = None) -> dict:
    """Write the token shards of a ``datasets`` source to ``out``; returns the manifest."""
    out = Path(out).expanduser()
    if out.exists():
        raise FileExistsError(f"--out {out} exists; token shards are written to a new directory")
    check_val_fraction(val_fraction)
    for option, value in (("--num-proc", num_proc), ("--shard-tokens", shard_tokens)):
        if value < 1:
            raise ValueError(f"{option}={value} must be >= 1")
    tok = load_tokenizer(tokenizer, eos_token)
    dataset, default_domain = load_text_dataset(
        path=path, name=name, data_files=data_files, split=split, text_field=text_field, domain_field=domain_field,
        max_documents=max_documents, cache_dir=cache_dir, option=lambda key: "--" + key.replace("_", "-"))

    def encode(batch, indices):
        domains = batch[domain_field] if domain_field else [default_domain] * len(indices)
        return {"ids": [tok.encode_array(text) if text else [] for text in batch[text_field]],
                "domain": [str(d) for d in domains],
                "val": [is_validation(f"row:{i}", val_fraction) for i in indices]}

    encoded = dataset.map(encode, batched=True, with_indices=True, num_proc=num_proc if num_proc > 1 else None,
                          remove_columns=dataset.column_names, desc="tokenising")
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "train").mkdir(parents=True)
    (tmp / "val").mkdir()
    writers: dict[tuple[str, str], _ShardWriter] = {}
    counts = np.zeros(tok.vocab_size, dtype=np.int64)
    # arrow batches: each row's ids are a slice of one flat array, never a list of Python ints
    for batch in encoded.with_format("arrow").iter(batch_size=_BATCH_ROWS):
        column = batch.column("ids").combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False)
        offsets = column.offsets.to_numpy()
        for row, (domain, in_val) in enumerate(zip(batch.column("domain").to_pylist(),
                                                    batch.column("val").to_pylist(), strict=True)):
            ids = values[offsets[row]:offsets[row + 1]]
            if not len(ids):
                continue  # an empty row would add only an eos
            side = "val" if in_val else "train"
            if (side, domain) not in writers:
                writers[side, domain] = _ShardWriter(tmp, f"{side}/{_safe(domain)}", dtype, tok.eos_id, shard_tokens)
            writers[side, domain].add(ids)
            if side == "train":
                counts += np.bincount(ids, minlength=tok.vocab_size)
                counts[tok.eos_id] += 1
    files = {"train": {}, "val": {}}
    for (side, domain), writer in sorted(writers.items()):
        files[side][domain] = writer.close()
    tokenizer_spec = "byte"
    if tokenizer != "byte":
        source = Path(tokenizer)
        shutil.copy(source / "tokenizer.json" if source.is_dir() else source, tmp / "tokenizer.json")
        tokenizer_spec = "tokenizer.json"
    p = counts[counts > 0] / max(1, counts.sum())
    manifest = {"format": FORMAT, "tokenizer": tokenizer_spec, "eos_token": eos_token, "vocab_size": tok.vocab_size,
                "dtype": np.dtype(dtype).name, "domains": sorted({d for _, d in writers}), "files": files,
                "unigram_entropy": float(-(p * np.log(p)).sum()) if len(p) else float("nan"),
                "source": {"path": path, "name": name, "data_files": data_files, "split": split,
                           "text_field": text_field, "domain_field": domain_field, "val_fraction": val_fraction}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out)
    return manifest


def _safe(domain: str) -> str:
    """A domain name as a file-name part."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in domain) or "_"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", required=True, help="a datasets builder (json, text, parquet, ...) or hub name")
    parser.add_argument("--name")
    parser.add_argument("--data-files", nargs="+")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--domain-field")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--tokenizer", default="byte")
    parser.add_argument("--eos-token")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--shard-tokens", type=int, default=1 << 27, help="ids per shard file (default 2^27)")
    parser.add_argument("--max-documents", type=int)
    parser.add_argument("--cache-dir")
    args = parser.parse_args(argv)
    try:
        manifest = tokenize_to_shards(
            out=args.out, path=args.path, name=args.name, data_files=args.data_files, split=args.split,
            text_field=args.text_field, domain_field=args.domain_field, val_fraction=args.val_fraction,
            tokenizer=args.tokenizer, eos_token=args.eos_token, num_proc=args.num_proc,
            shard_tokens=args.shard_tokens, max_documents=args.max_documents, cache_dir=args.cache_dir)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"moe-lab: error: {error}", file=sys.stderr)
        sys.exit(2)
    tokens = {side: sum(t for shards in f.values() for _, t in shards) for side, f in manifest["files"].items()}
    print(f"moe-lab: wrote {tokens['train']:,} train and {tokens['val']:,} validation tokens in "
          f"{sum(len(s) for f in manifest['files'].values() for s in f.values())} shards to {args.out}")


if __name__ == "__main__":
    main()
