"""The embedded default corpus: text every machine with Python already has, so training works offline.

Two domains, each document tagged with its domain:

- ``code``: the standard library's own ``.py`` source files (tests, IDLE and lib2to3 excluded).
- ``prose``: English prose shipped with the interpreter — the ``pydoc`` help topics
  (``pydoc_data.topics``) and the docstrings (of at least 200 characters) of stdlib modules, classes and
  functions, read with ``ast`` (nothing is imported or executed).

Documents are taken in the order of a hash of their id until ``max_bytes_per_domain`` is reached, so
the selection spreads over the whole library and is the same on every run with the same Python
version. Train/validation is a fixed split by document id (moe/data/split.py). The packed tensors are
cached in ``cache_dir`` under a key of all the parameters and the Python version; the cache file is
written atomically and rebuilt if unreadable.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import sysconfig
from pathlib import Path

import torch

from moe.data.packing import DataBundle, PackedDataset, pack_domains, unigram_entropy
from moe.data.split import assign_validation, check_val_fraction, doc_hash
from moe.data.tokenizer import ByteTokenizer

DOMAINS = ("code", "prose")
CACHE_FORMAT = 1
_EXCLUDED_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__", "turtledemo"}
_MIN_DOCSTRING_CHARS = 200


def _stdlib_sources() -> list[tuple[str, str]]:
    """(relative path, source text) of the stdlib's .py files, skipping undecodable ones."""
    root = Path(sysconfig.get_paths()["stdlib"])
    sources = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _EXCLUDED_DIRS & set(relative.parts):
            continue
        try:
            sources.append((relative.as_posix(), path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return sources


def _docstrings(path: str, source: str) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            text = ast.get_docstring(node)
            if text and len(text) >= _MIN_DOCSTRING_CHARS:
                found.append((f"doc:{path}:{getattr(node, 'lineno', 0)}", text))  # the module's is line 0
    return found


@functools.cache
def collect_documents() -> dict[str, list[tuple[str, str]]]:
    """All candidate (doc id, text) pairs per domain, before selection (read once per process)."""
    from pydoc_data.topics import topics

    sources = _stdlib_sources()
    prose = [(f"topic:{key}", text) for key, text in sorted(topics.items())]
    for path, source in sources:
        prose.extend(_docstrings(path, source))
    return {"code": [(f"code:{path}", text) for path, text in sources], "prose": prose}


def _select(documents: list[tuple[str, str]], max_bytes: int) -> list[tuple[str, bytes]]:
    chosen, total = [], 0
    for doc_id, text in sorted(documents, key=lambda d: doc_hash(d[0])):
        if total >= max_bytes:
            break
        data = text.encode("utf-8")[: max_bytes - total]
        chosen.append((doc_id, data))
        total += len(data)
    return chosen


def _build(*, seq_len: int, max_bytes_per_domain: int, val_fraction: float) -> dict:
    tokenizer = ByteTokenizer()
    splits: dict[str, dict[str, list[list[int]]]] = {"train": {}, "val": {}}
    for domain, documents in collect_documents().items():
        chosen = _select(documents, max_bytes_per_domain)
        for (_, data), in_val in zip(chosen, assign_validation([d for d, _ in chosen], val_fraction)):
            splits["val" if in_val else "train"].setdefault(domain, []).append(list(data))
    packed = {side: pack_domains(docs, seq_len=seq_len, eos_id=tokenizer.eos_id, domains=DOMAINS)
              for side, docs in splits.items()}
    return {
        "train_input_ids": packed["train"].input_ids, "train_domain_ids": packed["train"].domain_ids,
        "val_input_ids": packed["val"].input_ids, "val_domain_ids": packed["val"].domain_ids,
        "unigram_entropy": unigram_entropy(packed["train"].input_ids, tokenizer.vocab_size),
    }


def build_embedded(
    *, seq_len: int, cache_dir: str | None = None, max_bytes_per_domain: int = 2_000_000,
    val_fraction: float = 0.05,
) -> DataBundle:
    """The embedded corpus packed into sequences of ``seq_len + 1`` byte tokens (see module doc)."""
    check_val_fraction(val_fraction)
    if max_bytes_per_domain < 1:
        raise ValueError(f"data.max_bytes_per_domain={max_bytes_per_domain} must be >= 1")
    params = {"format": CACHE_FORMAT, "python": platform.python_version(), "seq_len": seq_len,
              "max_bytes_per_domain": max_bytes_per_domain, "val_fraction": val_fraction}
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    cache_file = Path(cache_dir) / f"embedded-{key}.pt" if cache_dir else None
    tensors = None
    if cache_file is not None and cache_file.is_file():
        try:
            tensors = torch.load(cache_file, weights_only=True)
        except Exception:  # a truncated or foreign file: rebuild it below
            tensors = None
    if tensors is None:
        tensors = _build(seq_len=seq_len, max_bytes_per_domain=max_bytes_per_domain, val_fraction=val_fraction)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
            torch.save(tensors, tmp)
            os.replace(tmp, cache_file)
    return DataBundle(
        train=PackedDataset(tensors["train_input_ids"], tensors["train_domain_ids"]),
        val=PackedDataset(tensors["val_input_ids"], tensors["val_domain_ids"]),
        tokenizer=ByteTokenizer(), domains=DOMAINS, unigram_entropy=float(tensors["unigram_entropy"]),
    )
