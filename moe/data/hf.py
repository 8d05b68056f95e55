"""``data=hf``: any Hugging Face ``datasets`` dataset with a text column, from the hub or local files.

    data.path=wikitext data.name=wikitext-2-raw-v1 data.data_files=null   # a hub dataset (network)
    data.path=json data.data_files=corpus.jsonl data.domain_field=source  # local JSON lines
    data.path=text data.data_files='books/*.txt'                          # local text, one doc per line
    data.path=parquet data.data_files=shard.parquet

Rows are tokenised (bytes by default, or ``tokenizer``: a tokenizer.json) and packed per domain: the
value of ``domain_field`` when given (domains sorted by name), else one domain named after the dataset
(the config name, the first local file's stem, or the hub name). ``max_documents`` keeps the first
rows. The split is fixed by row index (moe/data/split.py); ``seed`` only orders the training rows
before packing. Local files are checked before ``datasets`` sees them, so a typo is a one-line error
naming the path, offline or not.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from moe.data.packing import DataBundle, pack_domains, split_stats, unigram_entropy
from moe.data.split import assign_validation, check_val_fraction, seeded_order
from moe.data.tokenizer import load_tokenizer

LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "arrow")
_BATCH_ROWS = 1024  # rows read per batch: column batches are ~10x faster than one dict per row


def _check_local_files(data_files: str | list[str] | dict) -> list[str]:
    """Every local path or glob must match a file, and not all of them may be empty; returns the files."""
    if isinstance(data_files, dict):  # {"train": ..., "validation": ...} as datasets accepts it
        patterns = [p for v in data_files.values() for p in ([v] if isinstance(v, str) else v)]
    else:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    matched = []
    for pattern in patterns:
        if "://" in pattern:  # a remote URL (hf://, s3://, https://): datasets resolves it
            continue
        found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not found:
            raise FileNotFoundError(f"data.data_files: {pattern} matches no file")
        matched.extend(found)
    if matched and all(os.path.isfile(f) and os.path.getsize(f) == 0 for f in matched):
        # datasets fails on empty files with StopIteration or a bare "error while generating"
        raise ValueError(f"data.data_files: {', '.join(matched)} holds no data (empty file)")
    return matched


def _load(datasets, *, path, name, data_files, split, cache_dir):
    try:
        return datasets.load_dataset(path, name, data_files=data_files, split=split, cache_dir=cache_dir)
    except FileNotFoundError:
        raise
    except Exception as error:  # datasets' own messages rarely name the call; keep them, add it
        raise RuntimeError(
            f"data: datasets.load_dataset(path={path!r}, name={name!r}, data_files={data_files!r}, "
            f"split={split!r}) failed: {type(error).__name__}: {error}"
        ) from error


def load_text_dataset(*, path, name, data_files, split, text_field, domain_field, max_documents, cache_dir,
                      option=lambda key: f"data.{key}"):
    """(the ``datasets`` rows, the domain of rows without a ``domain_field``: the config name, the first local
    file's stem, or the hub name), after checking the files and columns. ``option`` names a key in errors."""
    local_files = _check_local_files(data_files) if data_files else []
    import datasets  # imported here: slow to import, and the embedded default does not need it

    dataset = _load(datasets, path=path, name=name, data_files=data_files, split=split, cache_dir=cache_dir)
    for key, column in (("text_field", text_field), ("domain_field", domain_field)):
        if column is not None and column not in dataset.column_names:
            raise ValueError(f"{option(key)}={column!r} is not a column of {path}; columns: {dataset.column_names}")
    if max_documents is not None:
        dataset = dataset.select(range(min(max_documents, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"data: {path} (split {split!r}) has no rows")
    return dataset, name or (Path(local_files[0]).stem if local_files else path.rstrip("/").split("/")[-1])


def build_hf(
    *, seq_len: int, path: str, name: str | None = None, data_files: str | list[str] | dict | None = None,
    split: str = "train", text_field: str = "text", domain_field: str | None = None,
    val_fraction: float = 0.05, max_documents: int | None = None, cache_dir: str | None = None, seed: int = 0,
    tokenizer: str = "auto", eos_token: str | None = None,
) -> DataBundle:
    """A ``datasets`` dataset packed into sequences of ``seq_len + 1`` tokens (see the module doc).

    ``cache_dir`` is ``datasets``' own cache (None: its default, ~/.cache/huggingface/datasets).
    ``tokenizer``: ``byte``, or a directory holding a tokenizer.json (or the file); ``auto`` is
    init.path's, which ``moe.training.run`` resolves, and ``byte`` when called without a run.
    """
    check_val_fraction(val_fraction)
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    if max_documents is not None and max_documents < 1:
        raise ValueError(f"data.max_documents={max_documents} must be >= 1 (or null for all rows)")
    if path in LOCAL_BUILDERS and not data_files:
        raise ValueError(f"data.path={path!r} reads local files: set data.data_files")
    dataset, default_domain = load_text_dataset(
        path=path, name=name, data_files=data_files, split=split, text_field=text_field, domain_field=domain_field,
        max_documents=max_documents, cache_dir=cache_dir)
    tokenizer = load_tokenizer("byte" if tokenizer == "auto" else tokenizer, eos_token)
    rows = _tokenized_rows(dataset, tokenizer, text_field=text_field, domain_field=domain_field,
                           default_domain=default_domain)
    if not rows:
        raise ValueError(f"data: every row of {path} has an empty {text_field!r}")

    domains = tuple(sorted(rows))
    sides: dict[str, dict[str, list]] = {"train": {}, "val": {}}
    for domain, items in rows.items():
        flags = assign_validation([row_id for row_id, _ in items], val_fraction)
        train = [item for item, in_val in zip(items, flags) if not in_val]
        sides["train"][domain] = [train[i][1] for i in seeded_order([row_id for row_id, _ in train], seed)]
        sides["val"][domain] = [ids for (_, ids), in_val in zip(items, flags) if in_val]
    packed = {side: pack_domains(docs, seq_len=seq_len, eos_id=tokenizer.eos_id, domains=domains)
              for side, docs in sides.items()}
    for side, data in packed.items():
        if len(data) == 0:
            raise ValueError(
                f"data: {path} gives no {side} sequence of seq_len+1={seq_len + 1} tokens; "
                f"add documents or lower model.max_seq_len"
                + (" or raise data.val_fraction" if side == "val" else "")
            )
    stats = {side: split_stats(data, domains) for side, data in packed.items()}
    stats["documents"] = {side: {d: len(v) for d, v in docs.items()} for side, docs in sides.items()}
    return DataBundle(train=packed["train"], val=packed["val"], tokenizer=tokenizer, domains=domains,
                      unigram_entropy=unigram_entropy(packed["train"].input_ids, tokenizer.vocab_size), stats=stats)


def _tokenized_rows(dataset, tokenizer, *, text_field: str, domain_field: str | None,
                    default_domain: str) -> dict[str, list[tuple[str, object]]]:
    """domain -> [(row id, token ids)] of the non-empty rows (empty rows, e.g. wikitext's blank lines,
    would only add eos tokens)."""
    rows: dict[str, list[tuple[str, object]]] = {}
    columns = [text_field] + ([domain_field] if domain_field else [])
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=_BATCH_ROWS):
        for i, text in enumerate(batch[text_field], start=index):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"data.text_field={text_field!r}: row {i} holds a {type(text).__name__}, not text")
            if text:
                domain = str(batch[domain_field][i - index]) if domain_field else default_domain
                rows.setdefault(domain, []).append((f"row:{i}", tokenizer.encode_array(text)))
        index += len(batch[text_field])
    return rows
