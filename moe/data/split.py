"""A fixed train/validation split by document identity, and the seeded order of training documents.

A document goes to validation when a hash of its *split key* (a file path, a topic name, a row index)
falls below ``val_fraction``. The decision depends on the key alone — not on the seed, the document
order or the size of the corpus — so a document is always on the same side, and growing the corpus
never moves one. Documents that share text share a key: a stdlib file's code and its docstrings are
split together, so prose in validation is never seen as code in training. The one exception to
"key alone" is a domain so small that no key falls in validation: then its smallest-hash key goes
there (``assign_validation``), so every domain is validated.

The seed only changes the order in which *training* documents are concatenated before packing
(``seeded_order``): which documents share a sequence and where they are cut. The validation
sequences are the same for every seed, so validation losses compare across seeds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def doc_hash(key: str) -> float:
    """A stable number in [0, 1) for a string (sha1, so identical on every machine and Python)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def is_validation(split_key: str, val_fraction: float) -> bool:
    return doc_hash("split:" + split_key) < val_fraction


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must lie in (0, 1)")


def assign_validation(split_keys: Sequence[str], val_fraction: float) -> list[bool]:
    """``is_validation`` for each document's key; when that puts no document of a domain with two or
    more distinct keys in validation, every document with the smallest-hash key goes there."""
    flags = [is_validation(k, val_fraction) for k in split_keys]
    distinct = set(split_keys)
    if len(distinct) >= 2 and not any(flags):
        chosen = min(distinct, key=lambda k: doc_hash("split:" + k))
        flags = [k == chosen for k in split_keys]
    return flags


def seeded_order(doc_ids: Sequence[str], seed: int) -> list[int]:
    """A permutation of ``range(len(doc_ids))`` that depends only on the ids and the seed (not on the
    input order), so a document's neighbours in the packed stream are reproducible."""
    return sorted(range(len(doc_ids)), key=lambda i: (doc_hash(f"order:{seed}:{doc_ids[i]}"), doc_ids[i]))
