"""switch_aux scope=global: cumulative counts over accumulation micro-steps, reset per optimizer
step, eval mode untouched, and the data-parallel all-reduce over two gloo processes."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moe.balance import SwitchAuxLoss
from moe.types import BalanceContext, Routing


def random_routing(T: int, E: int, K: int, seed: int) -> Routing:
    g = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(T, E, generator=g) * 2
    probs_TE = logits_TE.softmax(-1)
    expert_ids_N = probs_TE.topk(K, dim=-1).indices.reshape(-1)
    return Routing(
        token_ids_N=torch.arange(T).repeat_interleave(K), expert_ids_N=expert_ids_N,
        weights_N=probs_TE.gather(1, expert_ids_N.view(T, K)).reshape(-1), logits_TE=logits_TE,
        probs_TE=probs_TE, tokens_per_expert_E=torch.bincount(expert_ids_N, minlength=E), num_dropped=0,
        top_k=float(K),
    )


def ctx(T: int) -> BalanceContext:
    return BalanceContext(batch_size=1, seq_len=T, layer_index=0)


def test_global_scope_is_valid_and_others_are_rejected():
    SwitchAuxLoss(scope="global")
    with pytest.raises(ValueError, match="scope"):
        SwitchAuxLoss(scope="batch")


def test_cumulative_counts_over_three_micro_steps_then_reset():
    E, K = 6, 2
    sizes = [10, 7, 13]  # micro-batches of different sizes: the token counter matters
    balancer = SwitchAuxLoss(scope="global").train()
    for step in range(2):
        routings = [random_routing(T, E, K, seed=10 * step + m) for m, T in enumerate(sizes)]
        for m, routing in enumerate(routings, start=1):
            loss = balancer.loss(routing, ctx(routing.num_tokens))
            counts_E = sum(r.tokens_per_expert_E.double() for r in routings[:m])
            tokens = sum(r.num_tokens for r in routings[:m])
            f_E = counts_E / (K * tokens)
            expected = E * (f_E * routing.probs_TE.double().mean(0)).sum()
            assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
            assert torch.equal(balancer.global_counts_E, counts_E)
            assert balancer.global_tokens.item() == tokens
        balancer.on_optimizer_step()
        assert balancer.global_counts_E.sum().item() == 0 and balancer.global_tokens.item() == 0


def test_first_micro_step_equals_micro_scope_and_gradient_is_local():
    E, K, T = 8, 2, 20
    routing = random_routing(T, E, K, seed=3)
    logits_TE = routing.logits_TE.clone().requires_grad_(True)
    routing.probs_TE = logits_TE.softmax(-1)
    glob = SwitchAuxLoss(scope="global").loss(routing, ctx(T))
    micro = SwitchAuxLoss(scope="micro").loss(routing, ctx(T))
    assert glob.item() == pytest.approx(micro.item(), rel=1e-6)
    glob.backward()
    assert logits_TE.grad is not None and logits_TE.grad.abs().sum() > 0


def test_balanced_global_batch_scores_exactly_one_though_micro_batches_are_skewed():
    E, K, T = 4, 1, 8
    balancer = SwitchAuxLoss(scope="global").train()
    probs_TE = torch.full((T, E), 1.0 / E)
    # micro-step 1 uses experts 0,1 only; micro-step 2 experts 2,3 only: together balanced
    for experts in ([0, 1], [2, 3]):
        expert_ids_N = torch.tensor(experts).repeat(T // 2)
        routing = Routing(torch.arange(T), expert_ids_N, torch.ones(T), probs_TE.log(), probs_TE,
                          torch.bincount(expert_ids_N, minlength=E), 0, float(K))
        loss = balancer.loss(routing, ctx(T))
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_eval_mode_uses_micro_counts_and_leaves_buffer_alone():
    E, K = 5, 2
    balancer = SwitchAuxLoss(scope="global").train()
    balancer.loss(random_routing(12, E, K, seed=0), ctx(12))
    saved = balancer.global_counts_E.clone()
    balancer.eval()
    routing = random_routing(9, E, K, seed=1)
    loss = balancer.loss(routing, ctx(9))
    assert loss.item() == pytest.approx(SwitchAuxLoss().loss(routing, ctx(9)).item(), rel=1e-6)
    assert torch.equal(balancer.global_counts_E, saved)


def test_buffers_are_not_in_the_state_dict():
    balancer = SwitchAuxLoss(scope="global").train()
    balancer.loss(random_routing(8, 4, 1, seed=0), ctx(8))
    assert balancer.state_dict() == {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


E2, K2, SIZES = 6, 2, (9, 14)  # two micro-steps; rank r uses micro-batch seeds 100·r + m


def _rank_worker(rank: int, world: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        balancer = SwitchAuxLoss(scope="global").train()
        losses = []
        for m, T in enumerate(SIZES):
            routing = random_routing(T + rank, E2, K2, seed=100 * rank + m)
            losses.append(balancer.loss(routing, ctx(routing.num_tokens)).item())
        out[rank] = (balancer.global_counts_E.clone(), balancer.global_tokens.item(), losses)
        balancer.on_optimizer_step()
        assert balancer.global_counts_E.sum().item() == 0
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_see_the_union_counts():
    world = 2
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_rank_worker, args=(world, free_port(), out), nprocs=world, join=True)
    counts0, tokens0, losses0 = out[0]
    counts1, tokens1, losses1 = out[1]
    assert torch.equal(counts0, counts1) and tokens0 == tokens1
    # a single process over the union of both ranks' tokens
    routings = {(r, m): random_routing(T + r, E2, K2, seed=100 * r + m) for r in range(world)
                for m, T in enumerate(SIZES)}
    union_counts = sum(rt.tokens_per_expert_E.double() for rt in routings.values())
    union_tokens = sum(rt.num_tokens for rt in routings.values())
    assert torch.equal(counts0, union_counts) and tokens0 == union_tokens
    # each rank's loss: f from all ranks' micro-steps 1..m, P from its own micro-batch
    for r, losses in ((0, losses0), (1, losses1)):
        for m in range(len(SIZES)):
            seen = [routings[(rr, mm)] for rr in range(world) for mm in range(m + 1)]
            f_E = sum(x.tokens_per_expert_E.double() for x in seen) / (K2 * sum(x.num_tokens for x in seen))
            expected = E2 * (f_E * routings[(r, m)].probs_TE.double().mean(0)).sum()
            assert losses[m] == pytest.approx(expected.item(), rel=1e-6)

