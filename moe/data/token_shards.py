"""Token shards: a corpus tokenised once into memory-mapped arrays, for data that outgrows memory.

Writing (``python -m moe.data.tokenize_shards``, moe/data/tokenize_shards.py) reads any ``datasets``
source, tokenises it in ``num_proc`` processes (``Dataset.map``) and appends each row's ids, followed by
the end-of-document id, to the current shard of its split and domain: a flat file of uint16 ids (uint32
when the vocabulary exceeds 65,536) that rolls over to a new file after ``shard_tokens`` ids. A row goes
to validation by a hash of its index (moe/data/split.py), so the split does not depend on the order or
size of the corpus. ``manifest.json`` lists the files with their lengths, the domains, the tokenizer
(``byte``, or a copy of the tokenizer.json) and the training split's unigram entropy.

Reading (``data=tokens``, :func:`build_tokens`) maps the files without loading them. Each file's
stream is cut into sequences of ``seq_len + 1`` ids at read time, the ragged tail of each file dropped,
exactly as packing cuts one domain's stream in memory (moe/data/packing.py); so one corpus serves any
sequence length. A training step reads only its own rows (each rank its share, moe/batches.py), and the
data position of a checkpoint is still its micro-step. The per-sequence domain ids and each epoch's
permutation are in memory: 8 bytes per sequence each (~60 MB per billion tokens at seq_len 256).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from moe.data.packing import DataBundle
from moe.data.tokenizer import load_tokenizer

MANIFEST = "manifest.json"
FORMAT = 1


class TokenRows:
    """Rows ``[i]`` of ``seq_len + 1`` ids cut from memory-mapped files: ``rows[picks]`` (an index, a slice,
    a list or a LongTensor) reads just those rows into a long tensor [len(picks), seq_len + 1];
    ``rows[picks, columns]`` then indexes the columns of what was read, as a tensor would."""

    def __init__(self, files: list[Path], dtype: str, seq_len: int):
        self.width = seq_len + 1
        self.maps = [np.memmap(f, dtype=dtype, mode="r") for f in files]
        rows_per_file = [len(m) // self.width for m in self.maps]
        self.starts = np.cumsum([0] + rows_per_file)  # row index where each file begins
        self.shape = (int(self.starts[-1]), self.width)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, picks) -> torch.Tensor:
        if isinstance(picks, tuple):
            rows = self[picks[0]]
            return rows[picks[1:]] if rows.dim() == 1 else rows[(slice(None), *picks[1:])]
        if isinstance(picks, slice):
            picks = range(*picks.indices(len(self)))
        single = isinstance(picks, int | np.integer) or (isinstance(picks, torch.Tensor) and picks.dim() == 0)
        rows = np.atleast_1d(np.asarray(picks.tolist() if isinstance(picks, torch.Tensor) else picks, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} token-shard sequences")
        files = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.width), dtype=np.int64)
        for j, (f, row) in enumerate(zip(files.tolist(), rows.tolist(), strict=True)):
            start = (row - int(self.starts[f])) * self.width
            out[j] = self.maps[f][start:start + self.width]
        tensor = torch.from_numpy(out)
        return tensor[0] if single else tensor


class ShardedSequences(Dataset):
    """One split of a token-shard corpus, with the interface of :class:`moe.data.packing.PackedDataset`:
    ``input_ids`` (lazy :class:`TokenRows`), ``domain_ids`` [num_seqs], ``loss_mask`` None."""

    def __init__(self, input_ids: TokenRows, domain_ids: torch.Tensor):
        self.input_ids, self.domain_ids, self.loss_mask = input_ids, domain_ids, None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "domain_id": self.domain_ids[i]}

    @property
    def seq_len(self) -> int:
        return self.input_ids.width - 1


def read_manifest(path: str | Path) -> dict:
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(f"data.path={path}: no {MANIFEST} (write token shards with "
                                f"python -m moe.data.tokenize_shards --out {path} ...)")
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"data.path={path}: {MANIFEST} is not valid JSON ({error})") from error
    if manifest.get("format") != FORMAT:
        raise ValueError(f"data.path={path}: token-shard format {manifest.get('format')!r}; this moe-lab reads "
                         f"format {FORMAT}")
    return manifest


def build_tokens(*, path: str, seq_len: int) -> DataBundle:
    """The token shards under ``path`` cut into sequences of ``seq_len + 1`` ids (see the module doc)."""
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    root = Path(path).expanduser()
    manifest = read_manifest(root)
    domains = tuple(manifest["domains"])
    splits = {}
    for side in ("train", "val"):
        listed = [(d, root / name, tokens) for d, domain in enumerate(domains)
                  for name, tokens in manifest["files"][side].get(domain, [])]
        missing = [str(f) for _, f, _ in listed if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"data.path={path}: token shard {missing[0]} listed in {MANIFEST} is missing")
        domain_ids = torch.tensor([d for d, _, tokens in listed for _ in range(tokens // (seq_len + 1))],
                                  dtype=torch.long)
        data = ShardedSequences(TokenRows([f for _, f, _ in listed], manifest["dtype"], seq_len), domain_ids)
        if len(data) == 0:
            raise ValueError(f"data.path={path}: no {side} sequence of seq_len+1={seq_len + 1} tokens in the shards; "
                             f"lower data.seq_len or tokenise more text")
        splits[side] = data
    tokenizer_spec = manifest["tokenizer"]
    tokenizer = load_tokenizer(tokenizer_spec if tokenizer_spec == "byte" else str(root / tokenizer_spec),
                               manifest.get("eos_token"))
    stats = {side: {domain: {"sequences": int((data.domain_ids == d).sum()),
                             "tokens": int((data.domain_ids == d).sum()) * (seq_len + 1)}
                    for d, domain in enumerate(domains)} for side, data in splits.items()}
    return DataBundle(train=splits["train"], val=splits["val"], tokenizer=tokenizer, domains=domains,
                      unigram_entropy=float(manifest["unigram_entropy"]), stats=stats)
