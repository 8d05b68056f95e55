"""Model backbones: blocks of (token mixer, FFN) wired by the builder from a layer pattern."""

from moe.models.builder import build_decoder
from moe.models.decoder import Block, DecoderLM, ModelOutput
from moe.models.ffn import SwiGLU
from moe.models.pattern import moe_block_indices

__all__ = ["Block", "DecoderLM", "ModelOutput", "SwiGLU", "build_decoder", "moe_block_indices"]
