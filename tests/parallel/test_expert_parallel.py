"""Expert parallelism on 2 gloo processes: an MoE layer whose experts are split over the ranks (EP=2)
gives each rank the outputs and gradients of the whole layer in one process (EP=1), within 1e-5.

Each rank routes its own tokens (different counts per rank, so the loads and the rows exchanged are
uneven); the reference is the unsharded layer on the same tokens. Gradients w.r.t. the input and the
router are compared per rank; an expert's gradient on its rank must equal the sum over both ranks of
the reference's gradients (the all-to-all's backward brings every rank's contribution).
"""

from __future__ import annotations

import copy
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from conftest import group_files
from routings import random_routing

from moe.experts import GroupedExperts
from moe.layer import MoELayer
from moe.parallel.expert_parallel import ExpertParallelGroup, expert_parallel_forward
from moe.parallel.sharding import shard_layer_experts
from moe.spec import instantiate

D, F_, E, WORLD = 16, 32, 8, 2
ROUTERS = [p for p in group_files("router")]
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _layer_case(router_path, capacity_factor, ep, rank) -> None:
    torch.manual_seed(0)  # the same layer on every rank
    router = instantiate(yaml.safe_load(router_path.read_text()), router_path.stem)(d_model=D, num_experts=E)
    layer = MoELayer(router=router, experts=GroupedExperts(num_experts=E, d_model=D, d_ff=F_),
                     capacity_factor=capacity_factor).train()
    reference = copy.deepcopy(layer)
    shard_layer_experts(layer, ep)
    torch.manual_seed(1 + rank)  # each rank its own tokens, and a different number of them
    x_BSD, grad_BSD = torch.randn(2 + rank, 6, D), torch.randn(2 + rank, 6, D)
    ids_BS = torch.randint(0, 257, (2 + rank, 6))
    results = {}
    for name, module in (("ep", layer), ("reference", reference)):
        x = x_BSD.clone().requires_grad_()
        with torch.random.fork_rng():
            torch.manual_seed(100 + rank)  # noisy and random routers draw the same noise in both
            y_BSD, _ = module(x, ids_BS)
        (y_BSD * grad_BSD).sum().backward()
        results[name] = (y_BSD.detach(), x.grad)
    torch.testing.assert_close(results["ep"][0], results["reference"][0], **TOLERANCE, msg=lambda m: f"output: {m}")
    torch.testing.assert_close(results["ep"][1], results["reference"][1], **TOLERANCE, msg=lambda m: f"x grad: {m}")
    for (name, p), p_ref in zip(layer.router.named_parameters(), reference.router.parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, **TOLERANCE, msg=lambda m, n=name: f"router {n} grad: {m}")
    for (name, p), p_ref in zip(layer.experts.named_parameters(), reference.experts.parameters(), strict=True):
        summed = p_ref.grad.clone()
        dist.all_reduce(summed)
        torch.testing.assert_close(p.grad, summed[ep.local_slice(E)], **TOLERANCE,
                                   msg=lambda m, n=name: f"expert {n} grad: {m}")


def _routing_case(case, ep, rank) -> None:
    """Hand-made routings: an expert (and so a rank) receiving nothing, dropped assignments, no rows."""
    torch.manual_seed(0)
    experts = GroupedExperts(num_experts=E, d_model=D, d_ff=F_)
    reference = copy.deepcopy(experts)
    for param in experts.parameters():
        param.data = param.data[ep.local_slice(E)].clone()
    torch.manual_seed(1 + rank)
    T = 20 + 7 * rank
    routing = random_routing(case, T=T, E=E, K=2)
    x, grad = torch.randn(T, D), torch.randn(T, D)
    outs = []
    for run in (lambda x_: expert_parallel_forward(experts, x_, routing, ep), lambda x_: reference(x_, routing)):
        x_ = x.clone().requires_grad_()
        routing.weights_N.grad = None
        y = run(x_)
        y.backward(grad)
        outs.append((y.detach(), x_.grad, routing.weights_N.grad))
    for got, want, what in zip(outs[0], outs[1], ("output", "x grad", "gate weight grad"), strict=True):
        torch.testing.assert_close(got, want, **TOLERANCE, msg=lambda m, w=what: f"{w}: {m}")


def _worker(rank: int, port: int, out) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    failures = []
    try:
        ep = ExpertParallelGroup.create(WORLD)
        cases = [(f"router={p.stem}, capacity={c}", lambda p=p, c=c: _layer_case(p, c, ep, rank))
                 for p in ROUTERS for c in (None, 1.0)]
        cases += [(f"routing={case}", lambda case=case: _routing_case(case, ep, rank))
                  for case in ("skewed", "dropped", "empty", "plain")]
        for name, case in cases:
            try:
                case()
            except Exception:  # every case runs on every rank, so the collectives stay matched
                failures.append(f"rank {rank}, {name}: {traceback.format_exc(limit=3)}")
        out[rank] = (len(cases), failures)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    return dict(out)


def test_every_router_with_and_without_dropping_matches_the_unsharded_layer(results):
    for rank in range(WORLD):
        count, failures = results[rank]
        assert count == 2 * len(ROUTERS) + 4
        assert not failures, "\n".join(failures)
