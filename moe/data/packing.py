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
    """Sequences ``input_ids`` [num_seqs, seq_len+1] (long) with their ``domain_ids`` [num_seqs] (long).

    ``loss_mask`` [num_seqs, seq_len+1] (bool, optional) marks the tokens that are targets: token j
    counts in the loss (predicted from tokens < j) where it is true, so column 0 is never read. None
    means every token counts (packed pre-training text). Chat data masks prompts and padding
    (moe/data/chat.py); every masked row must keep at least one target, so no batch has a 0/0 loss.
    """

    def __init__(self, input_ids: torch.Tensor, domain_ids: torch.Tensor, loss_mask: torch.Tensor | None = None):
        if input_ids.dim() != 2 or domain_ids.shape != input_ids.shape[:1]:
            raise ValueError(
                f"bad packed shapes: input_ids {tuple(input_ids.shape)}, domain_ids {tuple(domain_ids.shape)}"
            )
        if loss_mask is not None:
            if loss_mask.shape != input_ids.shape:
                raise ValueError(f"loss_mask {tuple(loss_mask.shape)} must have the shape of input_ids "
                                 f"{tuple(input_ids.shape)}")
            loss_mask = loss_mask.bool()
            if len(loss_mask) and not bool(loss_mask[:, 1:].any(dim=1).all()):
                raise ValueError("every row of loss_mask needs at least one target token (after column 0)")
        self.input_ids, self.domain_ids = input_ids.long(), domain_ids.long()
        self.loss_mask = loss_mask

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"input_ids": self.input_ids[i], "domain_id": self.domain_ids[i]}
        if self.loss_mask is not None:
            item["loss_mask"] = self.loss_mask[i]
        return item

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1] - 1

    def subset(self, indices: torch.Tensor) -> PackedDataset:
        """The sequences at ``indices`` [n] (long), in that order."""
        return PackedDataset(self.input_ids[indices], self.domain_ids[indices],
                             None if self.loss_mask is None else self.loss_mask[indices])


def first_per_domain(domain_ids: torch.Tensor, sequences_per_domain: int | None) -> torch.Tensor:
    """The indices of the first ``sequences_per_domain`` sequences of each domain (None: all of them),
    domain by domain: the validation subset of ``trainer.eval_sequences_per_domain`` and the training
    subset of ``trainer.train_sequences_per_domain``."""
    picks = [torch.nonzero(domain_ids == d).flatten()[:sequences_per_domain] for d in domain_ids.unique()]
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


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


IGNORE_INDEX = -100  # the target id cross_entropy skips (DecoderLM's loss passes ignore_index=-100)


def masked_targets(input_ids: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """The next-token targets ``input_ids[:, 1:]``, with ``IGNORE_INDEX`` where ``loss_mask[:, 1:]`` is false."""
    targets = input_ids[:, 1:]
    return targets if loss_mask is None else targets.masked_fill(~loss_mask[:, 1:].bool(), IGNORE_INDEX)
