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
from moe.types import Routing

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
# every expert's rows rounded up with zero rows (auto's default in CPU bf16), here also in fp32
BACKENDS += [pytest.param(lambda i=i: GroupedExperts(**DIMS, impl=i, pad_multiple=8), id=f"impl={i},pad_multiple=8")
             for i in ("grouped_mm", "sorted_loop", "padded_bmm")]


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


def test_pad_multiple_is_64_in_cpu_bf16_unless_set():
    """None pads to 64 only where oneDNN builds a kernel per matrix shape (bf16 on the CPU)."""
    cpu = torch.device("cpu")
    auto, set_to_1 = GroupedExperts(**DIMS), GroupedExperts(**DIMS, pad_multiple=1)
    assert auto.resolved_pad_multiple(cpu, torch.bfloat16) == 64
    assert auto.resolved_pad_multiple(cpu, torch.float32) == 1
    assert auto.resolved_pad_multiple(torch.device("cuda"), torch.bfloat16) == 1
    assert set_to_1.resolved_pad_multiple(cpu, torch.bfloat16) == 1
    assert GroupedExperts(**DIMS, pad_multiple=16).resolved_pad_multiple(cpu, torch.float32) == 16


@pytest.mark.parametrize("impl", ["grouped_mm", "sorted_loop", "padded_bmm"])
def test_rows_reach_the_gemms_rounded_up_to_the_multiple(monkeypatch, impl):
    """The GEMMs see every expert's rows rounded up to 64 (bf16 default): [3, 0, 65, 1, ...] → 64, 0, 128, 64;
    padded_bmm's C = the busiest expert's 65 → 128. The zero rows leave outputs and gradients as unpadded."""
    counts = [3, 0, 65, 1, 6, 5]
    expert_ids_N = torch.repeat_interleave(torch.arange(E), torch.tensor(counts))
    routing = Routing(token_ids_N=torch.arange(80), expert_ids_N=expert_ids_N,
                      weights_N=torch.rand(80, requires_grad=True), logits_TE=torch.zeros(80, E),
                      probs_TE=torch.full((80, E), 1 / E),
                      tokens_per_expert_E=torch.tensor(counts), num_dropped=0, top_k=1.0)
    padded, unpadded = GroupedExperts(**DIMS, impl=impl), GroupedExperts(**DIMS, impl=impl, pad_multiple=1)
    unpadded.load_state_dict(padded.state_dict())
    seen = []
    real_mlp = SwiGLUExperts.mlp

    def recording_mlp(self, x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real_mlp(self, x, *args, **kwargs)

    monkeypatch.setattr(SwiGLUExperts, "mlp", recording_mlp)
    x_TD, grad_TD = torch.randn(80, D), torch.randn(80, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (y, grads), (y_ref, grads_ref) = (outputs_and_grads(m, x_TD, routing, grad_TD) for m in (padded, unpadded))
    expected = {"grouped_mm": [(64 + 128 + 64 + 64 + 64, D), (80, D)],
                "sorted_loop": [(64, D), (0, D), (128, D), (64, D), (64, D), (64, D)] + [(n, D) for n in counts],
                "padded_bmm": [(E, 128, D), (E, 65, D)]}[impl]
    assert seen == expected
    for got, want in zip((y, *grads), (y_ref, *grads_ref), strict=True):
        assert rel_err(got, want) < 1e-2  # bf16 rounding at most (on this CPU: equal to the last bit)


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
        ({"pad_multiple": 0}, "experts.pad_multiple=0 must be null or an integer >= 1"),
        ({"pad_multiple": 64.0}, "experts.pad_multiple=64.0 must be null or an integer >= 1"),
        ({"pad_multiple": True}, "experts.pad_multiple=True must be null"),
    ],
)
def test_bad_arguments(kwargs, message):
    cls = GroupedExperts if {"impl", "pad_multiple"} & kwargs.keys() else LoopExperts
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
    options = {}
    if isinstance(backend, GroupedExperts):
        options = {"impl": backend.impl, "pad_multiple": backend.pad_multiple}
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
