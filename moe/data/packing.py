"""Packing documents into fixed-length training sequences, and the bundle the training loop reads.

Each domain's documents are concatenated, each followed by the end-of-document token, and cut into
sequences of ``seq_len + 1`` tokens (inputs are ``[:-1]``, targets ``[1:]``); the ragged tail is
dropped. Domains are packed separately, so every sequence has exactly one domain and validation
losses and routing statistics can be read per domain. The unigram entropy H = −Σ_v p_v log p_v of
the training tokens is the loss of the best model that ignores context: a trained LM must beat it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class PackedDataset(Dataset):
    """Sequences ``input_ids`` [num_seqs, seq_len+1] (long) with their ``domain_ids`` [num_seqs] (long)."""

    def __init__(self, input_ids: torch.Tensor, domain_ids: torch.Tensor):
        if input_ids.dim() != 2 or domain_ids.shape != input_ids.shape[:1]:
            raise ValueError(
                f"bad packed shapes: input_ids {tuple(input_ids.shape)}, domain_ids {tuple(domain_ids.shape)}"
            )
        self.input_ids, self.domain_ids = input_ids.long(), domain_ids.long()

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "domain_id": self.domain_ids[i]}

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1] - 1


@dataclass
class DataBundle:
    train: PackedDataset
    val: PackedDataset
    tokenizer: Any  # encode(str) -> list[int], decode(list[int]) -> str, vocab_size, eos_id
    domains: tuple[str, ...]  # domain_ids index this tuple
    unigram_entropy: float  # nats/token of the train split's token frequencies: a context-free model's loss
    stats: dict = field(default_factory=dict)  # sizes per domain and split (what was read, what was kept)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def _as_array(doc: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    if isinstance(doc, bytes | bytearray | memoryview):
        return np.frombuffer(doc, dtype=np.uint8)  # a byte string is its own token ids, no copy
    return np.asarray(doc, dtype=np.int64)


def pack(documents: Sequence[Sequence[int] | bytes | np.ndarray], *, seq_len: int, eos_id: int) -> torch.Tensor:
    """One domain's documents → long [num_seqs, seq_len + 1]; each document is followed by ``eos_id``.

    Documents are token-id lists, arrays, or byte strings (the byte tokenizer's ids). The stream is
    filled in one preallocated array, so memory is one int64 per token, not one Python int.
    """
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    arrays = [_as_array(doc) for doc in documents]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    stream = np.full(int(lengths.sum()) + len(arrays), eos_id, dtype=np.int64)
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    for array, start in zip(arrays, starts.tolist()):
        stream[start:start + len(array)] = array
    num_seqs = len(stream) // (seq_len + 1)
    return torch.from_numpy(stream[: num_seqs * (seq_len + 1)].reshape(num_seqs, seq_len + 1).copy())


def pack_domains(docs_by_domain: dict[str, Sequence], *, seq_len: int, eos_id: int,
                 domains: Sequence[str]) -> PackedDataset:
    """Pack each domain separately and stack them, domain by domain in the order of ``domains``."""
    parts = [pack(docs_by_domain.get(name, []), seq_len=seq_len, eos_id=eos_id) for name in domains]
    domain_ids = torch.cat([torch.full((len(p),), d, dtype=torch.long) for d, p in enumerate(parts)])
    return PackedDataset(torch.cat(parts), domain_ids)


def unigram_entropy(input_ids: torch.Tensor, vocab_size: int) -> float:
    """H = −Σ_v p_v log p_v (nats per token) of the token frequencies in ``input_ids``; NaN if empty."""
    counts_V = torch.bincount(input_ids.flatten(), minlength=vocab_size).double()
    p_V = counts_V[counts_V > 0] / counts_V.sum()
    return float(-(p_V * p_V.log()).sum()) if len(p_V) else math.nan


def split_stats(packed: PackedDataset, domains: Sequence[str]) -> dict[str, dict[str, int]]:
    """Sequences and tokens per domain of one split (for the manifest and the run summary)."""
    counts = torch.bincount(packed.domain_ids, minlength=len(domains)).tolist()
    width = packed.input_ids.shape[1]
    return {name: {"sequences": n, "tokens": n * width} for name, n in zip(domains, counts)}
