"""Data: the embedded offline corpus, Hugging Face datasets, the byte tokenizer and packing."""

from moe.data.embedded import build_embedded
from moe.data.hf import build_hf
from moe.data.packing import DataBundle, PackedDataset
from moe.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "DataBundle", "PackedDataset", "build_embedded", "build_hf"]
