"""Byte-level tokenizer: the UTF-8 bytes of the text are tokens 0..255, and 256 ends a document.

Why bytes: there is no vocabulary to train or download (the project must work offline), no token is
ever unknown, and a loss in nats per token is a loss in nats per byte, so runs on different corpora
and sequence lengths compare directly. ``vocab_size`` stays 257 (no padding to a multiple of 8):
the models pick their own embedding size (``model.vocab_size`` >= 257) and may pad it there.
"""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    """``encode(str) -> list[int]`` / ``decode(list[int]) -> str``; ``eos_id`` separates documents."""

    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """The same ids as ``encode`` as a uint8 array: 1 byte per token instead of a Python int each,
        which is what keeps packing a large ``datasets`` corpus within memory."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; ``eos_id`` (and anything outside 0..255) is skipped, and a byte sequence
        cut mid-character (a sequence boundary) decodes to U+FFFD instead of raising."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def load_tokenizer(tokenizer: str, eos_token: str | None = None):
    """``byte`` → :class:`ByteTokenizer`; a directory with tokenizer.json (or the file) → :class:`HFTokenizer`."""
    if tokenizer == "byte":
        if eos_token is not None:
            raise ValueError("data.eos_token applies to a tokenizer.json; the byte tokenizer's eos id is fixed (256)")
        return ByteTokenizer()
    if tokenizer == "auto":  # needs init.path, which only the run config knows
        raise ValueError("data.tokenizer='auto' is resolved by moe.training.run from init.path; "
                         "when building data directly pass 'byte' or a tokenizer path")
    from moe.data.hf_tokenizer import HFTokenizer  # needs the tokenizers library

    return HFTokenizer(tokenizer, eos_token=eos_token)
