"""Carving an MoE out of a dense SwiGLU FFN without training: CMoE (Pei et al. 2502.04416)
and the LLaMA-MoE neuron-split baselines (``init.method=split``).

Per MoE block, in order (calibration inputs go through the blocks already carved, as in CMoE):

1. Calibration: the block's FFN input x_t (the ``ffn_norm`` output) for a fixed slice of training
   tokens; neuron activations h_t = SiLU(x̂_t·ĝ_jᵀ)·(x̂_t·û_jᵀ) with x and the gate/up rows L2-normalised.
2. ATopK markers a[t, j] = 1 for the K_a neurons of largest |h_t,j|; activation rate μ_j = mean_t a[t, j].
3. Shared expert = the num_shared·shared_d_ff neurons of highest μ.
4. Routed experts = balanced clustering of the other neurons: initial centroids are the marker columns
   of the E highest-rate remaining neurons; cost = L1 (Hamming) distance between a neuron's marker
   column and a centroid; an exact balanced assignment (every cluster exactly expert_d_ff neurons);
   one iteration, then the centroids are updated to the cluster means.
5. Experts are exact row/column slices of the dense gate/up/down (nothing is trained).
6. A :class:`moe.routers.CMoERouter` gets, per expert, the normalised gate/up rows of its
   representative neuron (the member nearest the updated centroid); other routers are left as built.

``split`` keeps the same shared choice (when num_shared > 0) and partitions the rest either by a seeded
random permutation (``partition=random``) or by balanced k-means of the L2-normalised gate rows
(``partition=cluster``: squared Euclidean cost, the same exact balanced assignment, 5 iterations, seeded
random initial centroids) — a simplification of LLaMA-MoE's clustering split, documented as such. With a
CMoERouter the representatives of the split's groups are chosen from the calibration markers as in step
6 (so CMoE's "random partition + analytic router" baseline is ``split`` with ``router=cmoe``).

Balanced assignment: instead of the Hungarian algorithm on the cost matrix with each centroid column
repeated m times (scipy/lap in the paper's code), the neurons are inserted one at a time, each along the
shortest augmenting path between clusters (Bellman-Ford over the K clusters; edge a→b costs the cheapest
move of a member of a into b). This is the row-by-row Hungarian (successive shortest paths) on the
compressed problem, so the result is an exact optimum, at O(N²K) work instead of O(N³).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moe.types import Scored, TakesRepresentatives, supports

PARTITIONS = ("random", "cluster")
_CALIBRATION_BATCH = 32  # sequences per forward pass while collecting FFN inputs


def default_cache_dir() -> str:
    """The same default as configs/data/embedded.yaml (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path(os.environ.get("HOME", "~")).expanduser() / ".cache")
    return str(Path(root) / "moe-lab" / "data")


def calibration_ids(*, num_tokens: int, seq_len: int, cache_dir: str | None, tokenizer: str = "byte") -> torch.Tensor:
    """A fixed slice of the embedded corpus's training split, in the dense model's ``tokenizer`` (``byte``
    or a tokenizer.json path): ceil(num_tokens / seq_len) sequences [B, S]."""
    from moe.data import build_embedded

    if num_tokens < 1:
        raise ValueError(f"init.calibration_tokens={num_tokens} must be >= 1")
    data = build_embedded(seq_len=seq_len, cache_dir=cache_dir or default_cache_dir(), tokenizer=tokenizer)
    num_sequences = min(math.ceil(num_tokens / seq_len), len(data.train.input_ids))
    return data.train.input_ids[:num_sequences, :-1].long()


def check_sizes(*, d_ff: int, num_experts: int, expert_d_ff: int, num_shared: int, shared_d_ff: int) -> None:
    if d_ff != num_shared * shared_d_ff + num_experts * expert_d_ff:
        raise ValueError(
            f"carving needs the dense d_ff={d_ff} = num_shared_experts x shared_expert_d_ff + num_experts x "
            f"expert_d_ff = {num_shared} x {shared_d_ff} + {num_experts} x {expert_d_ff} = "
            f"{num_shared * shared_d_ff + num_experts * expert_d_ff}; make model.expert_d_ff / "
            f"model.shared_expert_d_ff match the dense FFN"
        )


@torch.no_grad()
def neuron_markers(x_TD: torch.Tensor, ffn: nn.Module, active_neurons: int) -> torch.Tensor:
    """ATopK markers a [T, F] (float 0/1): the ``active_neurons`` largest |h_t,j| of each token."""
    gate_FD, up_FD = ffn.gate.weight.float(), ffn.up.weight.float()
    if not 1 <= active_neurons <= gate_FD.shape[0]:
        raise ValueError(f"init.active_neurons={active_neurons} must lie in [1, d_ff={gate_FD.shape[0]}]")
    x_TD = F.normalize(x_TD.float(), dim=-1)
    h_TF = F.silu(x_TD @ F.normalize(gate_FD, dim=-1).T) * (x_TD @ F.normalize(up_FD, dim=-1).T)
    markers_TF = torch.zeros_like(h_TF)
    markers_TF.scatter_(1, h_TF.abs().topk(active_neurons, dim=-1).indices, 1.0)
    return markers_TF


def balanced_assignment(cost_NK: torch.Tensor, size: int) -> torch.Tensor:
    """Labels [N] minimising Σ cost[n, label_n] with exactly ``size`` items per column (N = K·size)."""
    N, K = cost_NK.shape
    if N != K * size:
        raise ValueError(f"balanced assignment of {N} items to {K} clusters of {size} needs N = K x size")
    cost = cost_NK.detach().double().cpu().numpy()  # numpy: N small steps, torch's per-op overhead dominates
    labels = np.full(N, -1)
    counts = np.zeros(K, dtype=np.int64)
    for j in range(N):
        dist, pred = cost[j].copy(), np.full(K, -1)
        if j:
            # delta[i, b]: cost change of moving assigned item i (items 0..j-1) from its cluster to b
            done = labels[:j]
            delta = cost[:j] - cost[np.arange(j), done][:, None]
            edge_KK = np.full((K, K), np.inf)
            for a in np.flatnonzero(counts):
                edge_KK[a] = delta[done == a].min(axis=0)
            for _ in range(K):  # Bellman-Ford: no negative cycle while the assignment so far is optimal
                through = dist[:, None] + edge_KK
                via = through.argmin(axis=0)
                through = through[via, np.arange(K)]
                better = through < dist - 1e-9
                if not better.any():
                    break
                dist, pred = np.where(better, through, dist), np.where(better, via, pred)
        end = int(np.where(counts < size, dist, np.inf).argmin())
        counts[end] += 1
        b, hops = end, 0
        while pred[b] >= 0:  # walk back: one member of pred[b] moves into b
            a = int(pred[b])
            members = np.flatnonzero(labels[:j] == a)
            labels[members[(cost[members, b] - cost[members, a]).argmin()]] = b
            b, hops = a, hops + 1
            if hops > K:
                raise RuntimeError("balanced_assignment: cycle in the augmenting path")
        labels[j] = b
    return torch.from_numpy(labels).long()


def _l1_to_centroids(markers_TN: torch.Tensor, centroids_TK: torch.Tensor) -> torch.Tensor:
    """Σ_t |a_tn − c_tk| [N, K] for 0/1 markers and centroids in [0, 1]."""
    return centroids_TK.sum(0) + markers_TN.T @ (1.0 - 2.0 * centroids_TK)


@torch.no_grad()
def cluster_by_markers(markers_TN: torch.Tensor, num_clusters: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CMoE step 4: labels [N] (``size`` per cluster) and the updated centroids [T, K] (cluster means)."""
    rates_N = markers_TN.mean(0)
    seeds = rates_N.argsort(descending=True, stable=True)[:num_clusters]
    labels_N = balanced_assignment(_l1_to_centroids(markers_TN, markers_TN[:, seeds]), size)
    centroids_TK = torch.stack([markers_TN[:, labels_N == k].mean(1) for k in range(num_clusters)], dim=1)
    return labels_N, centroids_TK


@torch.no_grad()
def cluster_by_gate_rows(gate_ND: torch.Tensor, num_clusters: int, size: int, generator: torch.Generator,
                         iterations: int = 5) -> torch.Tensor:
    """``split`` with ``partition=cluster``: balanced k-means of the normalised gate rows."""
    rows_ND = F.normalize(gate_ND.float(), dim=-1)
    centroids_KD = rows_ND[torch.randperm(len(rows_ND), generator=generator)[:num_clusters]]
    for _ in range(iterations):
        labels_N = balanced_assignment(torch.cdist(rows_ND, centroids_KD).square(), size)
        centroids_KD = torch.stack([rows_ND[labels_N == k].mean(0) for k in range(num_clusters)])
    return labels_N


def groups_from_labels(labels_N: torch.Tensor, neurons_N: torch.Tensor, num_groups: int) -> torch.Tensor:
    """[K, size] dense-neuron ids per cluster, in increasing neuron order."""
    return torch.stack([neurons_N[labels_N == k].sort().values for k in range(num_groups)])


@torch.no_grad()
def representatives(markers_TF: torch.Tensor, groups_Em: torch.Tensor) -> torch.Tensor:
    """The member of each group nearest (L1) to the mean marker column of the group [E]."""
    reps = []
    for group in groups_Em:
        members_Tm = markers_TF[:, group]
        distance_m = _l1_to_centroids(members_Tm, members_Tm.mean(1, keepdim=True)).squeeze(1)
        reps.append(group[int(distance_m.argmin())])
    return torch.stack(reps)


def partition(*, method: str, dense_ffn: nn.Module, markers_TF: torch.Tensor | None, num_experts: int,
              expert_d_ff: int, num_shared_neurons: int, split_partition: str = "random",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(shared neuron ids [num_shared_neurons], routed groups [E, expert_d_ff]) of one dense FFN."""
    d_ff = dense_ffn.gate.weight.shape[0]
    if num_shared_neurons:
        shared = markers_TF.mean(0).argsort(descending=True, stable=True)[:num_shared_neurons].sort().values
    else:
        shared = torch.zeros(0, dtype=torch.long)
    mask = torch.ones(d_ff, dtype=torch.bool)
    mask[shared] = False
    rest = torch.nonzero(mask).squeeze(1)
    if method == "carve":
        labels, _ = cluster_by_markers(markers_TF[:, rest], num_experts, expert_d_ff)
    elif split_partition == "random":
        labels = torch.randperm(len(rest), generator=generator) % num_experts
    elif split_partition == "cluster":
        labels = cluster_by_gate_rows(dense_ffn.gate.weight[rest], num_experts, expert_d_ff, generator)
    else:
        raise ValueError(f"init.partition={split_partition!r} is not one of {PARTITIONS}")
    return shared, groups_from_labels(labels, rest, num_experts)


@torch.no_grad()
def fill_layer(dense_ffn: nn.Module, layer: nn.Module, shared: torch.Tensor, groups_Em: torch.Tensor,
               reps_E: torch.Tensor | None) -> None:
    """Experts (and the shared expert) as exact slices of the dense FFN; a CMoERouter's representatives."""
    gate_FD, up_FD, down_DF = dense_ffn.gate.weight, dense_ffn.up.weight, dense_ffn.down.weight
    experts = layer.experts
    for e, group in enumerate(groups_Em):
        experts.w_gate_EDF[e].copy_(gate_FD[group].T)
        experts.w_up_EDF[e].copy_(up_FD[group].T)
        experts.w_down_EFD[e].copy_(down_DF[:, group].T)
    if len(shared):
        ffn = layer.shared_expert.ffn
        ffn.gate.weight.copy_(gate_FD[shared])
        ffn.up.weight.copy_(up_FD[shared])
        ffn.down.weight.copy_(down_DF[:, shared])
    if reps_E is not None and takes_representatives(layer.router):
        layer.router.scorer.set_representatives(gate_FD[reps_E], up_FD[reps_E])


def takes_representatives(router) -> bool:
    """Whether the router scores with representative neurons that carving fills in (CMoE)."""
    return supports(router, Scored) and supports(router.scorer, TakesRepresentatives)


class _Captured(Exception):
    pass


@torch.no_grad()
def _ffn_inputs(block: nn.Module, hidden: list[torch.Tensor], ids: list[torch.Tensor]) -> torch.Tensor:
    """The block's FFN input (``ffn_norm`` output) for every calibration chunk, as [T, D]."""
    captured = []

    def grab(_module, args):
        captured.append(args[0].reshape(-1, args[0].shape[-1]))
        raise _Captured

    handle = block.ffn.register_forward_pre_hook(grab)
    try:
        for x_BSD, ids_BS in zip(hidden, ids):
            try:
                block(x_BSD, ids_BS)
            except _Captured:
                pass
    finally:
        handle.remove()
    return torch.cat(captured)


@torch.no_grad()
def carve_model(dense: nn.Module, model: nn.Module, *, method: str, calibration: Callable[[], torch.Tensor],
                active_neurons: int = 10, split_partition: str = "random", seed: int = 0) -> None:
    """Fill every MoE block of ``model`` from the matching dense block (the rest is already copied);
    ``calibration()`` gives the calibration token ids [B, S], called only if activations are needed."""
    generator = torch.Generator().manual_seed(seed)
    moe_blocks = [block for block in model.blocks if block.is_moe]
    layer = moe_blocks[0].ffn
    E, m = layer.experts.num_experts, layer.experts.d_ff
    num_shared, shared_d_ff = 0, 0
    if layer.shared_expert is not None:
        num_shared = layer.shared_expert.num_experts
        shared_d_ff = layer.shared_expert.ffn.gate.weight.shape[0] // num_shared
    check_sizes(d_ff=dense.blocks[0].ffn.gate.weight.shape[0], num_experts=E, expert_d_ff=m,
                num_shared=num_shared, shared_d_ff=shared_d_ff)
    analytic_router = takes_representatives(layer.router)
    needs_markers = method == "carve" or num_shared > 0 or analytic_router
    was_training = model.training
    model.eval()
    try:
        hidden, ids = [], []
        if needs_markers:
            ids = list(calibration().split(_CALIBRATION_BATCH))
            hidden = [model.embed(chunk) for chunk in ids]
        for dense_block, block in zip(dense.blocks, model.blocks):
            if block.is_moe:
                markers = None
                if needs_markers:
                    markers = neuron_markers(_ffn_inputs(block, hidden, ids), dense_block.ffn, active_neurons)
                shared, groups = partition(method=method, dense_ffn=dense_block.ffn, markers_TF=markers,
                                           num_experts=E, expert_d_ff=m, num_shared_neurons=num_shared * shared_d_ff,
                                           split_partition=split_partition, generator=generator)
                reps = representatives(markers, groups) if analytic_router else None
                fill_layer(dense_block.ffn, block.ffn, shared, groups, reps)
            if needs_markers:
                hidden = [block(x_BSD, chunk)[0] for x_BSD, chunk in zip(hidden, ids)]
    finally:
        model.train(was_training)
