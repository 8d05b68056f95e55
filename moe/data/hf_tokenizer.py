"""A Hugging Face ``tokenizer.json`` behind the interface of :class:`moe.data.tokenizer.ByteTokenizer`.

``data.tokenizer=PATH`` names a directory holding ``tokenizer.json`` (a model directory saved by
``transformers``) or the file itself. It is read with the ``tokenizers`` library alone, so no
``transformers`` is needed to train. The end-of-sequence token is, in this order: ``eos_token``
(``data.eos_token``), the ``eos_token`` of ``tokenizer_config.json`` next to the file, that of
``special_tokens_map.json``; without one it is an error (the chat builder ends every response with
it, and a generation must learn where to stop).

``encode`` adds no special tokens (no BOS): the data builders add exactly the tokens they document.
``vocab_size`` counts added tokens, because their ids lie beyond the base vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


def tokenizer_file(path: str | Path) -> Path | None:
    """``path`` itself when it is a file, else ``path/tokenizer.json`` when that exists, else None."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    candidate = path / TOKENIZER_FILE
    return candidate if candidate.is_file() else None


def _eos_from_json(path: Path) -> str | None:
    """The ``eos_token`` of a tokenizer_config.json / special_tokens_map.json (a string or an AddedToken dict)."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("eos_token")
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from err
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizer:
    """``encode(str) -> list[int]`` / ``decode(list[int]) -> str``, ``vocab_size``, ``eos_id``."""

    def __init__(self, path: str | Path, *, eos_token: str | None = None):
        from tokenizers import Tokenizer  # imported here: the byte tokenizer (the default) does not need it

        file = tokenizer_file(path)
        if file is None:
            raise FileNotFoundError(f"data.tokenizer={path}: no {TOKENIZER_FILE} there (nor is it a file)")
        try:
            self._tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # the Rust library raises a bare Exception for a malformed file
            raise ValueError(f"data.tokenizer={path}: {file} is not a readable tokenizer.json: {err}") from err
        self.path = file
        token = eos_token or _eos_from_json(file.parent / "tokenizer_config.json") \
            or _eos_from_json(file.parent / "special_tokens_map.json")
        if token is None:
            raise ValueError(
                f"data.tokenizer={path}: no end-of-sequence token found (no eos_token in tokenizer_config.json or "
                f"special_tokens_map.json next to {file.name}); name it with data.eos_token=TOKEN"
            )
        eos_id = self._tokenizer.token_to_id(token)
        if eos_id is None:
            raise ValueError(f"data.tokenizer={path}: the eos token {token!r} is not in its vocabulary")
        self.eos_token, self.eos_id = token, int(eos_id)
        self.vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str) -> np.ndarray:
        """The ids of ``encode`` as an int32 array (packing a large corpus keeps arrays, not Python ints)."""
        return np.asarray(self.encode(text), dtype=np.int32)

    def decode(self, ids: list[int]) -> str:
        """Ids back to text, special tokens (eos) skipped like the byte tokenizer does."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"
