"""Model backbones built from a layer pattern (dense or MoE FFN per block)."""

from moe.models.decoder import Block, DecoderLM, ModelOutput
from moe.models.ffn import SwiGLU
from moe.models.pattern import moe_block_indices

__all__ = ["Block", "DecoderLM", "ModelOutput", "SwiGLU", "moe_block_indices"]
