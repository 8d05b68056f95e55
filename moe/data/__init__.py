"""Data: the embedded offline corpus, Hugging Face datasets, chat data, token shards, tokenizers and packing."""

from moe.data.chat import build_chat
from moe.data.embedded import build_embedded
from moe.data.hf import build_hf
from moe.data.hf_tokenizer import HFTokenizer
from moe.data.packing import DataBundle, PackedDataset
from moe.data.token_shards import build_tokens
from moe.data.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer", "DataBundle", "HFTokenizer", "PackedDataset", "build_chat", "build_embedded", "build_hf",
           "build_tokens"]
