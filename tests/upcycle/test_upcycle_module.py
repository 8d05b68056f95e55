"""upcycle_module on a model that is not ours: a tiny ViT-style encoder with GELU MLPs with biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moe.upcycle.module import ModuleMoE, upcycle_module


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Encoder(nn.Module):
    def __init__(self, d: int = 16, depth: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.connector = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, 24))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.connector(x)


def test_upcycled_encoder_computes_what_it_did_and_can_diverge():
    torch.manual_seed(0)
    encoder = Encoder()
    x = torch.randn(2, 5, 16)
    before = encoder(x)
    replaced = upcycle_module(encoder, match=r"(blocks\.\d+\.mlp|connector)$", num_experts=4, top_k=2)
    assert replaced == ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp", "connector"]
    assert isinstance(encoder.connector, ModuleMoE) and len(encoder.blocks[1].mlp.experts) == 4
    after = encoder(x)
    assert after.shape == (2, 5, 24)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert encoder.connector.last_routing.tokens_per_expert_E.sum() == 2 * 5 * 2
    # identical experts make the output independent of the gates; once one differs, the router learns
    with torch.no_grad():
        encoder.blocks[0].mlp.experts[0][0].weight.mul_(1.5)
    encoder(x).square().sum().backward()
    assert encoder.blocks[0].mlp.router.scorer.weight_ED.grad.abs().max() > 1e-4


def test_nothing_matches():
    with pytest.raises(ValueError, match="no submodule of Encoder matches 'decoder'"):
        upcycle_module(Encoder(), match="decoder", num_experts=2, top_k=1)
