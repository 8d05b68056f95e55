"""``data=chat``: instruction / chat data from local JSON lines, with the loss on the responses only.

Each non-blank line of ``data_files`` (a path, a glob, or a list of them) is one conversation in one
of two formats::

    {"prompt": "What is 2+2?", "response": "4"}
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, ...]}

Roles are system, user and assistant; a conversation needs at least one assistant turn, and every
assistant turn needs text. A malformed row (bad JSON, a missing key, an unknown role, no assistant
turn) is a ValueError naming ``file:line``. ``prompt``/``response`` is the user turn plus the
assistant turn.

The template is moe-lab's own (a ``chat_template`` in the tokenizer's tokenizer_config.json is not
used, so the same data gives the same sequences with any tokenizer)::

    <|system|>\\n{content}\\n
    <|user|>\\n{content}\\n
    <|assistant|>\\n{content}<eos>

``<eos>`` is the tokenizer's end-of-sequence token. Each marker and each content string is tokenised
on its own, so no token straddles a prompt/response boundary; to generate, encode the conversation
the same way up to and including ``<|assistant|>\\n`` and stop at eos. The loss mask is 1 on the
tokens of every assistant turn's content and on the eos that ends it, and 0 on system and user
turns and on the markers: the model learns to answer, not to predict prompts.

Sequences hold one conversation each (no packing across conversations, so attention never sees
another conversation): ``seq_len + 1`` tokens, the beginning kept when longer (``stats["truncated"]``
counts those), padded with eos tokens that are never targets when shorter. A conversation whose
response tokens all fall beyond the cut would train nothing and is dropped (``stats["dropped"]``),
so every sequence has a target. Padding still flows through the model (and its routers) but only
after the conversation, so under causal attention it changes no counted prediction.

The domain is ``chat``, or the value of ``domain_field`` in each row. The train/validation split is
fixed by a hash of the row index (moe/data/split.py), as for ``data=hf``; ``seed`` orders the
training rows.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from moe.data.packing import DataBundle, PackedDataset, split_stats, unigram_entropy
from moe.data.split import assign_validation, check_val_fraction, seeded_order
from moe.data.tokenizer import load_tokenizer

ROLES = ("system", "user", "assistant")
MARKERS = {role: f"<|{role}|>\n" for role in ROLES}
DEFAULT_DOMAIN = "chat"


def _files(data_files: str | Sequence[str]) -> list[str]:
    patterns = [data_files] if isinstance(data_files, str) else list(data_files)
    if not patterns:
        raise ValueError("data.data_files is empty: name one or more JSONL files")
    found: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matched:
            raise FileNotFoundError(f"data.data_files: {pattern} matches no file")
        found.extend(matched)
    return found


def parse_row(row: Any, where: str) -> list[tuple[str, str]]:
    """One JSON row → [(role, content)]; ValueError naming ``where`` (file:line) if malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        turns = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"{where}: messages[{i}] needs the keys 'role' and 'content'")
            turns.append((message["role"], message["content"]))
    elif "prompt" in row and "response" in row:
        turns = [("user", row["prompt"]), ("assistant", row["response"])]
    else:
        raise ValueError(f"{where}: a row needs 'messages', or 'prompt' and 'response'; got keys {sorted(row)}")
    for i, (role, content) in enumerate(turns):
        if role not in ROLES:
            raise ValueError(f"{where}: turn {i} has role {role!r}; allowed: {list(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"{where}: turn {i} ({role}) content must be a string, got {type(content).__name__}")
        if role == "assistant" and not content:
            raise ValueError(f"{where}: turn {i} is an empty assistant turn (nothing to train on)")
    if not any(role == "assistant" for role, _ in turns):
        raise ValueError(f"{where}: the conversation has no assistant turn (nothing to train on)")
    return turns


def render(turns: Sequence[tuple[str, str]], tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation in the template above, and its loss mask (True = a target)."""
    ids: list[int] = []
    mask: list[bool] = []

    def add(tokens: list[int], target: bool) -> None:
        ids.extend(tokens)
        mask.extend([target] * len(tokens))

    for role, content in turns:
        add(tokenizer.encode(MARKERS[role]), False)
        if role == "assistant":
            add(tokenizer.encode(content), True)
            add([tokenizer.eos_id], True)  # learning to stop is part of the answer
        else:
            add(tokenizer.encode(content) + tokenizer.encode("\n"), False)
    return ids, mask


def _read(files: list[str], domain_field: str | None) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """[(split key, domain, turns)] for every non-blank line of the files, in file and line order."""
    rows = []
    for file in files:
        with open(file, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{file}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
                turns = parse_row(row, where)
                domain = DEFAULT_DOMAIN
                if domain_field is not None:
                    if not isinstance(row.get(domain_field), str) or not row[domain_field]:
                        raise ValueError(f"{where}: data.domain_field={domain_field!r} is missing or not a string")
                    domain = row[domain_field]
                rows.append((f"row:{len(rows)}", domain, turns))
    if not rows:
        raise ValueError(f"data.data_files: {', '.join(files)} holds no conversation")
    return rows


def _fit(ids: list[int], mask: list[bool], width: int, eos_id: int) -> tuple[list[int], list[bool], bool] | None:
    """Truncate or pad to ``width`` tokens; None when no target is left after column 0."""
    truncated = len(ids) > width
    ids, mask = ids[:width], mask[:width]
    if not any(mask[1:]):
        return None
    pad = width - len(ids)
    return ids + [eos_id] * pad, mask + [False] * pad, truncated


def build_chat(
    *, seq_len: int, data_files: str | list[str], tokenizer: str, eos_token: str | None = None,
    domain_field: str | None = None, val_fraction: float = 0.05, seed: int = 0, cache_dir: str | None = None,
) -> DataBundle:
    """Conversations as masked sequences of ``seq_len + 1`` tokens (see the module doc).

    ``tokenizer``: ``byte``, or a directory with tokenizer.json (or the file); ``auto`` is replaced by
    ``moe.training.run`` with init.path's tokenizer. ``cache_dir`` is not read (nothing is cached): it
    exists so that ``data.cache_dir`` overrides and ``init=upcycle``'s interpolation of it resolve.
    """
    del cache_dir
    check_val_fraction(val_fraction)
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len} must be >= 1")
    files = _files(data_files)
    tok = load_tokenizer(tokenizer, eos_token)
    rows = _read(files, domain_field)
    width = seq_len + 1

    domains = tuple(sorted({domain for _, domain, _ in rows}))
    sides: dict[str, list[tuple[list[int], list[bool], int]]] = {"train": [], "val": []}
    counts = {key: {"train": 0, "val": 0} for key in ("conversations", "truncated", "dropped")}
    for d, domain in enumerate(domains):
        items = [(key, turns) for key, dom, turns in rows if dom == domain]
        flags = assign_validation([key for key, _ in items], val_fraction)
        train = [item for item, in_val in zip(items, flags) if not in_val]
        order = seeded_order([key for key, _ in train], seed)
        val = [item for item, in_val in zip(items, flags) if in_val]
        for side, chosen in (("train", [train[i] for i in order]), ("val", val)):
            for _, turns in chosen:
                fitted = _fit(*render(turns, tok), width, tok.eos_id)
                counts["conversations"][side] += 1
                if fitted is None:
                    counts["dropped"][side] += 1
                    continue
                ids, mask, truncated = fitted
                counts["truncated"][side] += truncated
                sides[side].append((ids, mask, d))

    packed = {}
    for side, seqs in sides.items():
        if not seqs:
            raise ValueError(
                f"data: {', '.join(files)} gives no {side} conversation with a response token within "
                f"seq_len+1={width} tokens; add rows or raise data.seq_len"
                + (" or data.val_fraction" if side == "val" else "")
            )
        packed[side] = PackedDataset(torch.tensor([s[0] for s in seqs], dtype=torch.long),
                                     torch.tensor([s[2] for s in seqs], dtype=torch.long),
                                     torch.tensor([s[1] for s in seqs], dtype=torch.bool))
    stats: dict[str, Any] = {side: split_stats(data, domains) for side, data in packed.items()}
    for side, data in packed.items():
        targets = data.loss_mask[:, 1:].sum(dim=1)
        for d, name in enumerate(domains):
            stats[side][name]["target_tokens"] = int(targets[data.domain_ids == d].sum())
    stats.update(counts)
    stats["files"] = [str(Path(f)) for f in files]
    train = packed["train"]
    response_tokens = train.input_ids[:, 1:][train.loss_mask[:, 1:]]  # what the model is trained to predict
    return DataBundle(train=train, val=packed["val"], tokenizer=tok, domains=domains,
                      unigram_entropy=unigram_entropy(response_tokens, tok.vocab_size), stats=stats)
