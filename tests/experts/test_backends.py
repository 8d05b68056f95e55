"""Expert backends: every backend (each config file, each GroupedExperts impl) gives the loop reference's
outputs and gradients on awkward routings, plus exact invariants, dtypes and argument checks."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from conftest import group_files, load_group_option
from routings import expert_outputs_and_grads as outputs_and_grads
from routings import random_routing

from moe.experts import CapacityExperts, GroupedExperts, LoopExperts, SwiGLUExperts
from moe.experts import grouped as grouped_module

T, D, F_, E, K = 40, 16, 32, 6, 2
DIMS = {"num_experts": E, "d_model": D, "d_ff": F_}
CASES = ["topk", "skewed", "dropped", "empty"]


def from_config(name: str, **dims) -> SwiGLUExperts:
    """Build a backend the way Hydra would from configs/experts/<name>.yaml (without hydra)."""
    cfg = load_group_option("experts", name)
    module_name, _, class_name = cfg.pop("_target_").rpartition(".")
    assert cfg.pop("_partial_") is True  # the model fills the dimensions, one instance per layer
    return getattr(importlib.import_module(module_name), class_name)(**cfg, **dims)


BACKENDS = [pytest.param(lambda p=p: from_config(p.stem, **DIMS), id=f"config={p.stem}")
            for p in group_files("experts") if p.stem != "mpo"]  # mpo: tests/experts/test_mpo.py
BACKENDS += [pytest.param(lambda i=i: GroupedExperts(**DIMS, impl=i), id=f"impl={i}")
             for i in ("grouped_mm", "sorted_loop", "padded_bmm", "auto")]


def parity(backend, case: str, dtype=torch.float32, autocast: bool = False):
    routing, reference = make_routing(case), LoopExperts(**DIMS)
    backend.load_state_dict(reference.state_dict())
    if not autocast:
        reference, backend = reference.to(dtype), backend.to(dtype)
    x_TD, grad_TD = torch.randn(T, D, dtype=dtype), torch.randn(T, D)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected = outputs_and_grads(reference, x_TD, routing, grad_TD)
        got = outputs_and_grads(backend, x_TD, routing, grad_TD)
    return expected, got, routing


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("make_backend", BACKENDS)
def test_backend_matches_loop_reference_fp32(make_backend, case):
    (y_ref, grads_ref), (y, grads), routing = parity(make_backend(), case)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for name, g, g_ref in zip(("x", "weights_N", "w_gate", "w_up", "w_down"), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"grad {n}: {m}")
    unrouted_T = torch.ones(T, dtype=torch.bool)
    unrouted_T[routing.token_ids_N] = False
    assert unrouted_T.any() == (case in ("dropped", "empty"))
    assert torch.equal(y[unrouted_T], torch.zeros_like(y[unrouted_T]))  # dropped tokens: exactly 0
    if case == "skewed":  # empty experts get exactly zero weight gradient
        assert grads[2][-2:].abs().max() == 0 and grads[4][-2:].abs().max() == 0


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "bf16_weights"])
@pytest.mark.parametrize("make_backend", BACKENDS)
def test_backend_matches_loop_reference_bf16(make_backend, autocast):
    (y_ref, grads_ref), (y, grads), _ = parity(make_backend(), "dropped", torch.bfloat16, autocast)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert rel_err(y, y_ref) < 2e-2
    for g, g_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(g, g_ref) < 2e-2


@pytest.mark.parametrize("impl", ["grouped_mm", "sorted_loop"])
def test_plain_sum_loss_backward(impl):
    """``y.sum()`` hands back an expanded (stride-0) gradient, which grouped_mm's backward rejects
    unless it is made contiguous first."""
    experts, routing = GroupedExperts(**DIMS, impl=impl), make_routing("topk")
    x_TD = torch.randn(T, D, requires_grad=True)
    experts(x_TD, routing).sum().backward()
    assert x_TD.grad is not None and experts.w_down_EFD.grad.abs().sum() > 0


@pytest.mark.parametrize("experts_cls", [LoopExperts, GroupedExperts])
def test_identical_experts_with_weights_summing_to_one_equal_one_dense_swiglu(experts_cls):
    w_gate_DF, w_up_DF, w_down_FD = torch.randn(D, F_), torch.randn(D, F_), torch.randn(F_, D)
    experts = experts_cls(**DIMS)
    with torch.no_grad():
        for stack, w in ((experts.w_gate_EDF, w_gate_DF), (experts.w_up_EDF, w_up_DF),
                         (experts.w_down_EFD, w_down_FD)):
            stack.copy_(w.expand_as(stack))
    routing = make_routing("topk")
    routing.weights_N = torch.rand(T, K).softmax(-1).reshape(-1)  # each token's weights sum to 1
    x_TD = torch.randn(T, D)
    dense_TD = (F.silu(x_TD @ w_gate_DF) * (x_TD @ w_up_DF)) @ w_down_FD
    torch.testing.assert_close(experts(x_TD, routing), dense_TD, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("experts_cls", [LoopExperts, GroupedExperts])
@pytest.mark.parametrize(
    ("x_dtype", "weight_dtype", "autocast", "expected"),
    [
        (torch.float32, torch.float32, False, torch.float32),
        (torch.bfloat16, torch.bfloat16, False, torch.bfloat16),
        (torch.bfloat16, torch.float32, False, torch.bfloat16),  # weights cast to x's dtype
        (torch.float64, torch.float64, False, torch.float64),  # grouped_mm has no fp64: auto falls back
        (torch.float32, torch.float32, True, torch.bfloat16),  # like nn.Linear under autocast
    ],
)
def test_output_dtype_follows_input(experts_cls, x_dtype, weight_dtype, autocast, expected):
    experts = experts_cls(**DIMS).to(weight_dtype)
    routing = make_routing("topk")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y_TD = experts(torch.randn(T, D, dtype=x_dtype), routing)
    assert y_TD.dtype == expected and y_TD.shape == (T, D)


def test_auto_rule():
    """Without row counts (or outside CPU bf16): auto = grouped_mm wherever it runs (measured never
    slower than the loop on this CPU), else the sorted loop."""
    experts, cpu = GroupedExperts(num_experts=8, d_model=16, d_ff=32), torch.device("cpu")
    assert experts.resolved_impl(cpu, torch.float32) == "grouped_mm"
    assert experts.resolved_impl(cpu, torch.bfloat16) == "grouped_mm"
    assert experts.resolved_impl(cpu, torch.float64) == "sorted_loop"  # unsupported dtype
    assert "float64" in experts.grouped_mm_problem(cpu, torch.float64)
    odd = GroupedExperts(num_experts=8, d_model=6, d_ff=12)  # rows not 16-byte multiples
    assert odd.resolved_impl(cpu, torch.float32) == "sorted_loop"
    assert "16-byte" in odd.grouped_mm_problem(cpu, torch.float32)
    assert GroupedExperts(num_experts=8, d_model=8, d_ff=12).resolved_impl(cpu, torch.bfloat16) == "sorted_loop"
    forced = GroupedExperts(num_experts=8, d_model=6, d_ff=12, impl="sorted_loop")
    assert forced.resolved_impl(cpu, torch.float32) == "sorted_loop"


@pytest.mark.parametrize(
    ("counts", "dtype", "expected"),
    [
        ([64] * 8, torch.bfloat16, "padded_bmm"),                          # C = 64: E·C = N
        ([192, 64, 64, 64, 64, 64, 0, 0], torch.bfloat16, "padded_bmm"),   # E·C = 1536 = 3·N: the bound
        ([192, 64, 64, 64, 64, 63, 0, 0], torch.bfloat16, "grouped_mm"),   # 1536 > 3·511
        ([193, 64, 64, 64, 64, 64, 64, 64], torch.bfloat16, "grouped_mm"),  # C = 256: 2048 > 3·641
        ([0] * 8, torch.bfloat16, "grouped_mm"),                          # nothing routed
        ([64] * 8, torch.float32, "grouped_mm"),                          # padded_bmm only for bf16
    ],
)
def test_auto_takes_padded_bmm_in_cpu_bf16_while_padding_at_most_triples_the_rows(counts, dtype, expected):
    experts = GroupedExperts(num_experts=8, d_model=16, d_ff=32)
    assert experts.resolved_impl(torch.device("cpu"), dtype, torch.tensor(counts)) == expected


def test_auto_padded_bmm_is_the_capacity_backend_bit_for_bit():
    """In CPU bf16 with balanced routing, auto runs CapacityExperts(pad_multiple=64)'s kernel, so the default
    reproduces runs made with experts=capacity experts.pad_multiple=64 exactly."""
    grouped, capacity = GroupedExperts(**DIMS), CapacityExperts(**DIMS, pad_multiple=64)
    capacity.load_state_dict(grouped.state_dict())
    tokens = 384  # enough rows per expert that C, rounded to 64, pads by less than 3x
    routing = random_routing("topk", T=tokens, E=E, K=K)
    x_TD, grad_TD = torch.randn(tokens, D), torch.randn(tokens, D)
    assert grouped.resolved_impl(x_TD.device, torch.bfloat16, routing.tokens_per_expert_E) == "padded_bmm"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y_g, grads_g), (y_c, grads_c) = (outputs_and_grads(m, x_TD, routing, grad_TD) for m in (grouped, capacity))
    assert torch.equal(y_g, y_c)
    assert all(torch.equal(a, b) for a, b in zip(grads_g, grads_c, strict=True))


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_first_forward_without_grad_does_not_disable_grouped_mm(monkeypatch, mode):
    monkeypatch.setattr(grouped_module, "_probe_cache", {})
    experts = GroupedExperts(**DIMS)
    with mode():
        y_TD = experts(torch.randn(T, D), make_routing("topk"))
        assert experts.resolved_impl(y_TD.device, torch.float32) == "grouped_mm"
    assert grouped_module._probe_cache == {("cpu", torch.float32): True}


def test_misaligned_shapes_fall_back_or_fail_clearly():
    reference, auto = LoopExperts(num_experts=E, d_model=6, d_ff=10), GroupedExperts(num_experts=E, d_model=6,
                                                                                    d_ff=10)
    auto.load_state_dict(reference.state_dict())
    routing, x_TD = make_routing("topk"), torch.randn(T, 6)
    torch.testing.assert_close(auto(x_TD, routing), reference(x_TD, routing), atol=1e-5, rtol=1e-5)
    forced = GroupedExperts(num_experts=E, d_model=6, d_ff=10, impl="grouped_mm")
    with pytest.raises(RuntimeError, match="impl='grouped_mm' cannot run: .*16-byte"):
        forced(x_TD, routing)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 0}, "experts.num_experts=0 must be an integer >= 1"),
        ({"d_model": -1}, "experts.d_model=-1 must be an integer >= 1"),
        ({"d_ff": 2.5}, "experts.d_ff=2.5 must be an integer >= 1"),
        ({"num_experts": True}, "experts.num_experts=True"),
        ({"init_std": 0.0}, "experts.init_std=0.0 must be a number > 0"),
        ({"impl": "cuda"}, r"experts.impl='cuda' is not one of \('auto', 'grouped_mm', 'sorted_loop', 'padded_bmm'\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    cls = GroupedExperts if "impl" in kwargs else LoopExperts
    with pytest.raises(ValueError, match=message):
        cls(**{**DIMS, **kwargs})


def test_constructor_is_keyword_only_and_init_follows_init_std():
    with pytest.raises(TypeError):
        GroupedExperts(E, D, F_)
    experts = GroupedExperts(num_experts=64, d_model=64, d_ff=64, init_std=0.1)
    for w in (experts.w_gate_EDF, experts.w_up_EDF, experts.w_down_EFD):
        w = w.detach()
        assert abs(float(w.std()) - 0.1) < 0.005 and abs(float(w.mean())) < 0.005
    assert experts.w_down_EFD.shape == (64, 64, 64) and "impl='auto'" in repr(experts)
    with pytest.raises(NotImplementedError, match="base class"):
        SwiGLUExperts(**DIMS)(torch.randn(T, D), make_routing("topk"))


def make_routing(case: str, T: int = T, E: int = E, K: int = K):
    return random_routing(case, T=T, E=E, K=K)


def gelu_experts(make_backend) -> SwiGLUExperts:
    """A backend's GELU twin (same class and options, activation="gelu") with random non-zero biases."""
    backend = make_backend()
    options = {"impl": backend.impl} if isinstance(backend, GroupedExperts) else {}
    if isinstance(backend, CapacityExperts):
        options = {"pad_multiple": backend.pad_multiple, "capacity_factor": backend.capacity_factor}
    experts = type(backend)(**DIMS, **options, activation="gelu")
    with torch.no_grad():
        experts.b_fc_EF.normal_(0.0, 0.5)
        experts.b_proj_ED.normal_(0.0, 0.5)
    return experts


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("make_backend", BACKENDS)
def test_gelu_experts_match_the_loop_reference_and_the_formula(make_backend, case):
    """GPT-2-style experts: y_t = Σ w · (GELU_tanh(x W_fc,e + b_fc,e) W_proj,e + b_proj,e), biases included,
    in every backend, with the gradients of every stack."""
    backend = gelu_experts(make_backend)
    assert [name for name, _ in backend.named_parameters()] == ["w_fc_EDF", "b_fc_EF", "w_proj_EFD", "b_proj_ED"]
    reference = LoopExperts(**DIMS, activation="gelu")
    reference.load_state_dict(backend.state_dict())
    routing, x_TD, grad_TD = make_routing(case), torch.randn(T, D), torch.randn(T, D)
    y_ref, grads_ref = outputs_and_grads(reference, x_TD, routing, grad_TD)
    y, grads = outputs_and_grads(backend, x_TD, routing, grad_TD)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for name, g, g_ref in zip(("x", "weights_N", "w_fc", "b_fc", "w_proj", "b_proj"), grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"grad {n}: {m}")
    # the formula, token by token
    expected_TD = torch.zeros(T, D)
    for t, e, w in zip(routing.token_ids_N.tolist(), routing.expert_ids_N.tolist(), routing.weights_N.tolist()):
        h_F = F.gelu(x_TD[t] @ backend.w_fc_EDF[e] + backend.b_fc_EF[e], approximate="tanh")
        expected_TD[t] += w * (h_F @ backend.w_proj_EFD[e] + backend.b_proj_ED[e])
    torch.testing.assert_close(y, expected_TD.detach(), atol=1e-5, rtol=1e-5)
