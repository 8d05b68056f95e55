"""A fixed train/validation split by document identity.

A document goes to validation when a hash of its stable id (a file path, a topic name, a row index)
falls below ``val_fraction``: the split does not depend on the seed, on document order, or on which
other documents were selected, so the same document is always on the same side.
"""

from __future__ import annotations

import hashlib


def doc_hash(doc_id: str) -> float:
    """A stable number in [0, 1) for a document id."""
    return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "big") / 2**64


def is_validation(doc_id: str, val_fraction: float) -> bool:
    return doc_hash("split:" + doc_id) < val_fraction


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must lie in (0, 1)")
