"""Router z-loss against its formula."""

from __future__ import annotations

import math

import pytest
import torch

from moe.balance import ZLoss
from moe.types import BalanceContext, Routing


def test_z_loss_values():
    logits_TE = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, 3.0]])
    routing = Routing(
        token_ids_N=torch.arange(2), expert_ids_N=torch.tensor([0, 3]), weights_N=torch.ones(2),
        logits_TE=logits_TE, probs_TE=logits_TE.softmax(-1), tokens_per_expert_E=torch.tensor([1, 0, 0, 1]),
        num_dropped=0, top_k=1.0,
    )
    expected = (math.log(4) ** 2 + math.log(sum(math.exp(v) for v in (2.0, -1.0, 0.5, 3.0))) ** 2) / 2
    loss = ZLoss().loss(routing, BalanceContext(batch_size=1, seq_len=2, layer_index=0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
