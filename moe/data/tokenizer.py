"""Byte-level tokenizer: UTF-8 bytes are tokens 0..255, and 256 ends a document.

No vocabulary to train or download, nothing unknown, and every byte LM number is in nats per byte.
"""

from __future__ import annotations


class ByteTokenizer:
    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
