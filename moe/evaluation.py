"""Validation during training: LM loss overall and per domain, and routing balance on held-out data.

The same fixed subset is scored at every eval (the first ``sequences_per_domain`` validation
sequences of each domain), so curves are comparable across steps and runs. Routing loads are summed
over the whole subset, which gives MaxVio_global of Wang et al. 2408.15664; the score statistics of
``moe.metrics.routing_stats`` are averaged over the eval batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from moe.metrics import load_stats, routing_stats


def eval_indices(domain_ids: torch.Tensor, sequences_per_domain: int | None) -> torch.Tensor:
    """The first ``sequences_per_domain`` sequence indices of each domain (None: all of them), domain by domain."""
    picks = [torch.nonzero(domain_ids == d).flatten()[:sequences_per_domain] for d in domain_ids.unique()]
    return torch.cat(picks) if picks else torch.zeros(0, dtype=torch.long)


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
    loss_sum = torch.zeros(len(domains), dtype=torch.float64)
    token_count = torch.zeros(len(domains), dtype=torch.float64)
    loads: dict[int, torch.Tensor] = {}
    stat_sums: dict[int, dict[str, float]] = {}
    num_batches = 0
    for start in range(0, len(input_ids), batch_size):
        batch = input_ids[start:start + batch_size].to(device)
        with autocast():
            out = model(batch[:, :-1])
        token_loss_BS = F.cross_entropy(out.logits.float().transpose(1, 2), batch[:, 1:], reduction="none")
        seq_domain = domain_ids[start:start + batch_size]
        if loss_mask is None:
            loss_sum.index_add_(0, seq_domain, token_loss_BS.sum(dim=1).double().cpu())
            token_count.index_add_(0, seq_domain, torch.full_like(seq_domain, batch.shape[1] - 1).double())
        else:
            mask_BS = loss_mask[start:start + batch_size, 1:].to(device)
            loss_sum.index_add_(0, seq_domain, torch.where(mask_BS, token_loss_BS, 0.0).sum(dim=1).double().cpu())
            token_count.index_add_(0, seq_domain, mask_BS.sum(dim=1).double().cpu())
        num_batches += 1
        if on_batch is not None:
            on_batch(len(batch))
        for layer, aux in out.layer_aux.items():
            loads[layer] = loads.get(layer, 0) + aux.routing.tokens_per_expert_E.detach().cpu()
            sums = stat_sums.setdefault(layer, {})
            for stat, value in routing_stats(aux.routing).items():
                sums[stat] = sums.get(stat, 0.0) + value
    model.train(was_training)
    metrics = {"val/loss": float(loss_sum.sum() / token_count.sum().clamp(min=1))}
    for d, name in enumerate(domains):
        if token_count[d] > 0:
            metrics[f"val/{name}/loss"] = float(loss_sum[d] / token_count[d])
    for layer, load_E in sorted(loads.items()):
        for stat, value in load_stats(load_E).items():
            metrics[f"val/layer{layer}/{stat}"] = value
        for stat, value in stat_sums[layer].items():
            metrics[f"val/layer{layer}/{stat}"] = value / num_batches
    return metrics
