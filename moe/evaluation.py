"""Validation during training: LM loss overall and per domain, and routing balance on held-out data.

The same fixed subset is scored at every eval (the first ``sequences_per_domain`` validation
sequences of each domain), so curves are comparable across steps and runs. Routing loads are summed
over the whole subset, which gives MaxVio_global of Wang et al. 2408.15664; the score statistics of
``moe.metrics.routing_stats`` are averaged over the eval batches. Losses and statistics are summed on
the device and read once at the end of the pass (moe/metrics.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from moe.metrics import RoutingAccumulator, RunningSums


@torch.no_grad()
def evaluate(
    model: nn.Module,
    input_ids: torch.Tensor,
    domain_ids: torch.Tensor,
    domains: Sequence[str],
    *,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    loss_mask: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Token-weighted mean loss (nats/token) over all and per domain, plus per-layer routing stats.
    ``autocast`` makes a fresh precision context per batch (e.g. ``accelerator.autocast``).
    ``loss_mask`` [N, S+1] (bool, as ``PackedDataset.loss_mask``) counts only the target tokens it
    marks (chat data: the responses); None counts every token. ``on_batch(n)`` is called after each
    batch of n sequences (a progress bar)."""
    was_training = model.training
    model.eval()
    sums = RunningSums()
    routing = RoutingAccumulator(sums)
    num_domains = len(domains)
    for start in range(0, len(input_ids), batch_size):
        batch = input_ids[start:start + batch_size].to(device)
        with autocast():
            out = model(batch[:, :-1])
        token_loss_BS = F.cross_entropy(out.logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        seq_domain = domain_ids[start:start + batch_size]
        if loss_mask is None:
            tokens_B = torch.full(seq_domain.shape, batch.shape[1] - 1, dtype=torch.float64)
        else:
            mask_BS = loss_mask[start:start + batch_size, 1:]
            token_loss_BS = torch.where(mask_BS.to(device), token_loss_BS, 0.0)
            tokens_B = mask_BS.sum(dim=1).double()
        # per-domain sums: the losses on the device, the token counts on the host (known from the mask)
        sums.add("loss_sum", torch.zeros(num_domains, dtype=torch.float64, device=device).index_add_(
            0, seq_domain.to(device), token_loss_BS.sum(dim=1).double()))
        sums.add("token_count", torch.zeros(num_domains, dtype=torch.float64).index_add_(0, seq_domain, tokens_B))
        routing.add(out.layer_aux)
        if on_batch is not None:
            on_batch(len(batch))
    model.train(was_training)
    values = sums.read()
    if not values:  # no validation sequences
        return {"val/loss": 0.0}
    loss_sum, token_count = values["loss_sum"], values["token_count"]
    metrics = {"val/loss": sum(loss_sum) / max(sum(token_count), 1.0)}
    for d, name in enumerate(domains):
        if token_count[d] > 0:
            metrics[f"val/{name}/loss"] = loss_sum[d] / token_count[d]
    return {**metrics, **routing.metrics(values, prefix="val/")}
