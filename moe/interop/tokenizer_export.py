"""The tokenizer files of a Hugging Face export: the tokenizer the model was trained with.

A run's ``data.tokenizer`` (absent or ``byte``: moe-lab's byte tokenizer; a path: a Hugging Face
``tokenizer.json`` or its directory) decides what goes next to ``config.json``:

- **byte**: a ``tokenizer.json`` built with the ``tokenizers`` library whose ids are moe-lab's exactly:
  UTF-8 byte b is token b (0..255) and ``<|endoftext|>`` — the end-of-document token — is 256. It is
  a byte-level BPE without merges: the ByteLevel pre-tokenizer maps each byte to one printable
  character (GPT-2's reversible byte ↔ unicode table), the vocabulary maps that character back to the
  byte's value, and the ByteLevel decoder undoes the mapping, so encode/decode round-trip any text.
  No regex split and no prefix space: ids are the bytes of the text, nothing else.
- **a path**: its ``tokenizer.json`` and, when beside it, ``tokenizer_config.json`` and
  ``special_tokens_map.json``, copied unchanged.

``tokenizer_config.json`` (byte case) names ``PreTrainedTokenizerFast`` and the end-of-document token,
so ``AutoTokenizer.from_pretrained(out)`` and ``pipeline("text-generation", out)`` work on an export.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moe.data.tokenizer import ByteTokenizer

END_OF_DOCUMENT = "<|endoftext|>"
COPIED_BESIDE = ("tokenizer_config.json", "special_tokens_map.json")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible table: printable Latin-1 bytes map to themselves, the other 68 bytes to
    code points 256, 257, ... in byte order, so every byte becomes one visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer_json() -> str:
    """moe-lab's byte tokenizer as the text of a Hugging Face ``tokenizer.json``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in byte_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(END_OF_DOCUMENT, special=True)])
    if tokenizer.token_to_id(END_OF_DOCUMENT) != ByteTokenizer.eos_id:
        raise AssertionError(f"{END_OF_DOCUMENT} got id {tokenizer.token_to_id(END_OF_DOCUMENT)}, not "
                             f"{ByteTokenizer.eos_id}")
    return tokenizer.to_str(pretty=True)


def is_byte_tokenizer_json(path: Path) -> bool:
    """True when ``path`` is a tokenizer.json with moe-lab's byte ids (as this module writes it)."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    model = spec.get("model") or {}
    added = {token.get("content"): token.get("id") for token in spec.get("added_tokens") or []}
    return (model.get("type") == "BPE" and not model.get("merges")
            and model.get("vocab") == {char: byte for byte, char in byte_to_unicode().items()}
            and added == {END_OF_DOCUMENT: ByteTokenizer.eos_id})


def trained_with_bytes(data_config: Mapping[str, Any] | None) -> bool:
    """Whether a (resolved) ``data`` node means moe-lab's byte tokenizer: no ``tokenizer`` key, or ``byte``."""
    return ((data_config or {}).get("tokenizer") or "byte") == "byte"


def tokenizer_files(data_config: Mapping[str, Any] | None, *, max_seq_len: int) -> dict[str, str | Path]:
    """File name → text to write, or the Path of a file to copy, for the export of a run with this
    resolved ``data`` node (``data.tokenizer=auto`` replaced, as ``moe.finetune.resolve_tokenizer`` does)."""
    if trained_with_bytes(data_config):
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": END_OF_DOCUMENT, "bos_token": None,
                  "pad_token": None, "unk_token": None, "model_max_length": max_seq_len,
                  "clean_up_tokenization_spaces": False}
        return {"tokenizer.json": byte_tokenizer_json(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}
    source = data_config["tokenizer"]
    path = Path(source)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"data.tokenizer={source}: no tokenizer.json there to export with the model")
    files: dict[str, str | Path] = {"tokenizer.json": file}
    files.update({name: file.parent / name for name in COPIED_BESIDE if (file.parent / name).is_file()})
    return files


def write_tokenizer_files(out: Path, files: Mapping[str, str | Path]) -> None:
    for name, content in files.items():
        if isinstance(content, Path):
            shutil.copyfile(content, out / name)
        else:
            (out / name).write_text(content)
