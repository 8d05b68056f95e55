"""A fixed train/validation split by document identity.

A document goes to validation when a hash of its stable id (a file path, a topic name, a row index)
falls below ``val_fraction``: the split does not depend on the seed or on document order, so the same
document is always on the same side (the one exception, a domain too small to get any validation
document, is handled by ``assign_validation``).
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


def assign_validation(doc_ids: list[str], val_fraction: float) -> list[bool]:
    """``is_validation`` for each id; when that puts none of two or more documents in validation (a
    small domain), the document with the smallest hash goes there, so every domain is validated."""
    flags = [is_validation(d, val_fraction) for d in doc_ids]
    if len(doc_ids) >= 2 and not any(flags):
        flags[min(range(len(doc_ids)), key=lambda i: doc_hash("split:" + doc_ids[i]))] = True
    return flags
