"""Packing documents into fixed-length training sequences, and the bundle the training loop reads.

Each domain's documents are concatenated, separated by the end-of-document token, and cut into
sequences of ``seq_len + 1`` tokens (inputs are ``[:-1]``, targets ``[1:]``); the ragged tail is
dropped. Domains are packed separately, so every sequence has exactly one domain and validation
losses and routing statistics can be read per domain.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


class PackedDataset(Dataset):
    """Sequences ``input_ids`` [num_seqs, seq_len+1] (long) with their ``domain_ids`` [num_seqs]."""

    def __init__(self, input_ids: torch.Tensor, domain_ids: torch.Tensor):
        if input_ids.dim() != 2 or domain_ids.shape != input_ids.shape[:1]:
            raise ValueError(
                f"bad packed shapes: input_ids {tuple(input_ids.shape)}, domain_ids {tuple(domain_ids.shape)}"
            )
        self.input_ids, self.domain_ids = input_ids, domain_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "domain_id": self.domain_ids[i]}


@dataclass
class DataBundle:
    train: PackedDataset
    val: PackedDataset
    tokenizer: object  # encode(str) -> list[int], decode(list[int]) -> str, vocab_size, eos_id
    domains: tuple[str, ...]
    unigram_entropy: float  # nats/token of the train split's token frequencies: a trivial model's loss

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size


def pack(documents: Iterable[Sequence[int]], *, seq_len: int, eos_id: int) -> torch.Tensor:
    """One domain's documents → [num_seqs, seq_len + 1]; each document is followed by ``eos_id``."""
    stream: list[int] = []
    for doc in documents:
        stream.extend(doc)
        stream.append(eos_id)
    n = len(stream) // (seq_len + 1)
    return torch.tensor(stream[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def pack_domains(docs_by_domain: dict[str, list[list[int]]], *, seq_len: int, eos_id: int,
                 domains: Sequence[str]) -> PackedDataset:
    """Pack each domain separately and stack them, domain by domain in the order of ``domains``."""
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    parts = [pack(docs_by_domain.get(name, []), seq_len=seq_len, eos_id=eos_id) for name in domains]
    domain_ids = torch.cat([torch.full((len(p),), d, dtype=torch.long) for d, p in enumerate(parts)])
    return PackedDataset(torch.cat(parts), domain_ids)


def unigram_entropy(input_ids: torch.Tensor, vocab_size: int) -> float:
    """H = −Σ_v p_v log p_v (nats) of the token frequencies; the loss of the best context-free model."""
    counts_V = torch.bincount(input_ids.flatten(), minlength=vocab_size).double()
    p_V = counts_V[counts_V > 0] / counts_V.sum()
    return float(-(p_V * p_V.log()).sum()) if len(p_V) else math.nan
