"""``data=hf``: any Hugging Face ``datasets`` dataset with a text field, from the hub or local files.

    data.path=wikitext data.name=wikitext-2-raw-v1                       # a hub dataset
    data.path=json data.data_files=corpus.jsonl data.domain_field=source # local JSON lines
    data.path=text data.data_files='books/*.txt'                         # local text, one doc per line
    data.path=parquet data.data_files=shard.parquet

Documents are byte-tokenised and packed per domain (``domain_field`` when given, else one domain named
after the dataset); the train/validation split is fixed by row index (moe/data/split.py).
"""

from __future__ import annotations

import glob
from pathlib import Path

from moe.data.packing import DataBundle, pack_domains, unigram_entropy
from moe.data.split import assign_validation, check_val_fraction
from moe.data.tokenizer import ByteTokenizer

LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow")


def _check_local_files(data_files: str | list[str] | dict) -> list[str]:
    """Every local path or glob must match a file; returns the matched paths."""
    if isinstance(data_files, dict):
        patterns = [p for v in data_files.values() for p in ([v] if isinstance(v, str) else v)]
    else:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    matched = []
    for pattern in patterns:
        if "://" in pattern:
            matched.append(pattern)
            continue
        found = glob.glob(pattern)
        if not found:
            raise FileNotFoundError(f"data.data_files: {pattern} matches no file")
        matched.extend(found)
    return matched


def build_hf(
    *, seq_len: int, path: str, name: str | None = None, data_files: str | list[str] | dict | None = None,
    split: str = "train", text_field: str = "text", domain_field: str | None = None,
    val_fraction: float = 0.05, max_documents: int | None = None, cache_dir: str | None = None,
) -> DataBundle:
    import datasets  # imported here: slow to import, and the embedded default does not need it

    check_val_fraction(val_fraction)
    if path in LOCAL_BUILDERS and not data_files:
        raise ValueError(f"data.path={path!r} reads local files: set data.data_files")
    local_files = _check_local_files(data_files) if data_files else []
    dataset = datasets.load_dataset(path, name, data_files=data_files, split=split, cache_dir=cache_dir)
    if text_field not in dataset.column_names:
        raise ValueError(f"data.text_field={text_field!r} is not a column of {path}; columns: {dataset.column_names}")
    if domain_field is not None and domain_field not in dataset.column_names:
        raise ValueError(
            f"data.domain_field={domain_field!r} is not a column of {path}; columns: {dataset.column_names}"
        )
    if max_documents is not None:
        dataset = dataset.select(range(min(max_documents, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"data: {path} ({split}) has no rows")
    default_domain = name or (Path(local_files[0]).stem if local_files else path.rstrip("/").split("/")[-1])
    tokenizer = ByteTokenizer()
    rows_by_domain: dict[str, list[tuple[str, str]]] = {}
    for i, row in enumerate(dataset):
        if row[text_field]:
            domain = str(row[domain_field]) if domain_field else default_domain
            rows_by_domain.setdefault(domain, []).append((f"row:{i}", row[text_field]))
    domains = list(rows_by_domain)
    splits: dict[str, dict[str, list[list[int]]]] = {"train": {}, "val": {}}
    for domain, rows in rows_by_domain.items():
        for (_, text), in_val in zip(rows, assign_validation([row_id for row_id, _ in rows], val_fraction)):
            splits["val" if in_val else "train"].setdefault(domain, []).append(tokenizer.encode(text))
    packed = {side: pack_domains(docs, seq_len=seq_len, eos_id=tokenizer.eos_id, domains=domains)
              for side, docs in splits.items()}
    for side, data in packed.items():
        if len(data) == 0:
            raise ValueError(
                f"data: {path} gives no {side} sequence of seq_len+1={seq_len + 1} tokens; "
                f"add documents or lower model.max_seq_len / data.val_fraction"
            )
    return DataBundle(train=packed["train"], val=packed["val"], tokenizer=tokenizer, domains=tuple(domains),
                      unigram_entropy=unigram_entropy(packed["train"].input_ids, tokenizer.vocab_size))
