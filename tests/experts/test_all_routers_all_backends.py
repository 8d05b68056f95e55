"""Every expert backend config against the loop reference, on the Routing of every router config:
the same outputs and the same gradients (w.r.t. x, the gate weights and the three weight stacks)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import group_files

from moe.dropping import drop_over_capacity
from moe.experts import LoopExperts
from moe.spec import instantiate

T, D, F_, E = 48, 16, 32, 8  # D and F multiples of 16 so grouped_mm runs
DIMS = {"num_experts": E, "d_model": D, "d_ff": F_}

ROUTERS = [pytest.param(p, id=f"router={p.stem}") for p in group_files("router")]
# experts=mpo is a parameterisation, not a dispatch: it runs GroupedExperts on its contracted stacks
# (tests/experts/test_mpo.py), and its weights cannot take the reference's state dict
BACKENDS = [pytest.param(p, id=f"experts={p.stem}") for p in group_files("experts") if p.stem != "mpo"]


def load(path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def router_routing(path, capacity_factor=None):
    """The Routing of the router built from this config on random tokens (optionally with the
    assignments beyond a capacity dropped), with its gate weights detached into a leaf (so the test
    sees their gradient, not the router's)."""
    router = instantiate(load(path), f"router {path.stem}")(d_model=D, num_experts=E)
    x_TD = torch.randn(T, D)
    with torch.no_grad():
        if getattr(router, "uses_token_ids", False):
            routing = router(x_TD, torch.arange(T) % 257)
        else:
            routing = router(x_TD)
    if capacity_factor is not None:
        routing = drop_over_capacity(routing, capacity_factor=capacity_factor)
    routing.validate()
    routing.weights_N = routing.weights_N.detach().clone().requires_grad_()
    return routing


def outputs_and_grads(experts, x_TD, routing, grad_TD):
    x_TD = x_TD.detach().clone().requires_grad_()
    routing.weights_N.grad = None
    y_TD = experts(x_TD, routing)
    y_TD.backward(grad_TD)
    grads = {"x": x_TD.grad, "weights_N": routing.weights_N.grad}
    grads.update({name: p.grad for name, p in experts.named_parameters()})
    return y_TD.detach(), grads


@pytest.mark.parametrize("capacity_factor", [None, 0.5], ids=["dropless", "dropping"])
@pytest.mark.parametrize("backend_path", BACKENDS)
@pytest.mark.parametrize("router_path", ROUTERS)
def test_backend_matches_loop_on_router_routing(router_path, backend_path, capacity_factor):
    routing = router_routing(router_path, capacity_factor)
    reference = LoopExperts(**DIMS)
    backend = instantiate(load(backend_path), f"experts {backend_path.stem}")(**DIMS)
    backend.load_state_dict(reference.state_dict())
    x_TD, grad_TD = torch.randn(T, D), torch.randn(T, D)
    y_ref, grads_ref = outputs_and_grads(reference, x_TD, routing, grad_TD)
    y, grads = outputs_and_grads(backend, x_TD, routing, grad_TD)
    assert y.dtype == torch.float32 and y.shape == (T, D)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        assert grads[name] is not None, f"no gradient for {name}"
        torch.testing.assert_close(grads[name], g_ref, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, n=name: f"grad {n}: {m}")
