"""The default dispatch backend: sort the assignments by expert once, run every expert on its contiguous
slice of rows, scale by the gate weights and scatter-add back (moe/experts/permute.py).

Three ways to run the experts on the sorted rows x_ND (expert e owns rows [o_{e-1}, o_e), o = cumsum of
tokens_per_expert_E), chosen by ``impl``:

- ``"grouped_mm"``: three grouped GEMMs, ``torch.nn.functional.grouped_mm(x_ND, w_EDF, offs=o)``
  (forward and backward on CPU from torch 2.9; float32/bfloat16/float16; int32 offsets; every row
  stride a multiple of 16 bytes, i.e. D and F multiples of 16 / element size).
- ``"sorted_loop"``: a Python loop over the E slices (``torch.split`` + ``w.unbind(0)``, one GEMM each).
- ``"padded_bmm"``: every expert's rows copied into a zero-padded [E, C, D] buffer, C = the busiest
  expert's rows rounded up to ``pad_multiple``, and three batched matmuls (moe/experts/padded.py; the
  same kernel as CapacityExperts without a capacity limit). It computes E·C rows for N.
- ``"auto"`` (default): ``grouped_mm`` whenever it can run here (torch has it, the dtype and row strides
  fit, a one-time forward+backward probe on this device and dtype passed, not inside ``torch.compile``,
  where fp32 grouped_mm failed to trace); else ``sorted_loop``. No shape threshold between these two,
  because none paid off: with few rows per expert the loop pays per-expert dispatch overhead and
  grouped_mm is faster; with many rows the two tie in fp32 and grouped_mm stays ahead in bf16
  (bench/README.md, "grouped_mm against the sorted loop").

``pad_multiple`` rounds every expert's row count up to a multiple of itself with zero rows before the
GEMMs (grouped_mm, sorted_loop) or rounds C (padded_bmm). ``None`` (default): 64 in bf16 on the CPU,
else 1. In bf16 on the CPU every new matrix shape makes oneDNN build (JIT-compile) a kernel, and the
per-expert row counts change at every step: unpadded, a default training step built a few dozen
kernels (~7k page faults per step on random-byte batches), and the churn slowed even the model's
elementwise ops. Rounded to 64, the shapes repeat and stay in oneDNN's kernel cache; the padding costs
at most 63 rows per expert (bench/README.md, "Rows rounded to 64 in bf16").

All three compute the same function; they differ only in rounding (the order of the sums). Zero
rows change nothing: a padded run matches an unpadded one to the last bit on this CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe.experts.padded import padded_expert_outputs, round_up, rounded_slots, through_slots
from moe.experts.swiglu import SwiGLUExperts

IMPLS = ("auto", "grouped_mm", "sorted_loop", "padded_bmm")
CPU_BF16_PAD_MULTIPLE = 64  # pad_multiple=None in bf16 on the CPU: few distinct matrix shapes for oneDNN
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
_probe_cache: dict[tuple[str, torch.dtype], bool] = {}


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: grouped_mm's backward rejects
    expanded gradients ("Invalid strides/sizes", e.g. after ``.sum()``), seen with torch 2.13 on CPU."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_mm(x_NX: torch.Tensor, w_EXY: torch.Tensor, offsets_E: torch.Tensor) -> torch.Tensor:
    """out_NY[rows of e] = x_NX[rows of e] @ w_EXY[e], rows of e = [offsets_E[e-1], offsets_E[e])."""
    return _ContiguousGrad.apply(_grouped_mm(x_NX, w_EXY, offs=offsets_E))


def _probe(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a tiny grouped_mm forward+backward runs on this device and dtype (cached). Runs with
    grad on and autocast off whatever the caller's mode, so a first call under no_grad or
    inference_mode does not record a false "unsupported"."""
    key = (str(device), dtype)
    if key not in _probe_cache:
        try:
            with (torch.inference_mode(False), torch.enable_grad(),
                  torch.autocast(device.type, enabled=False)):
                x = torch.randn(8, 16, device=device, dtype=dtype, requires_grad=True)
                w = torch.randn(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
                grouped_mm(x, w, torch.tensor([3, 8], device=device, dtype=torch.int32)).sum().backward()
            _probe_cache[key] = True
        except RuntimeError:
            _probe_cache[key] = False
    return _probe_cache[key]


class GroupedExperts(SwiGLUExperts):
    """Sorted dispatch with grouped GEMMs or a sorted loop (see the module docstring for ``impl``)."""

    def __init__(
        self, *, num_experts: int, d_model: int, d_ff: int, init_std: float = 0.02, impl: str = "auto",
        pad_multiple: int | None = None, activation: str = "swiglu",
    ):
        super().__init__(num_experts=num_experts, d_model=d_model, d_ff=d_ff, init_std=init_std, activation=activation)
        if impl not in IMPLS:
            raise ValueError(f"experts.impl={impl!r} is not one of {IMPLS}")
        if impl == "grouped_mm" and _grouped_mm is None:
            raise ValueError(f"experts.impl='grouped_mm' needs torch>=2.9 (installed: {torch.__version__})")
        if pad_multiple is not None and (isinstance(pad_multiple, bool) or not isinstance(pad_multiple, int)
                                         or pad_multiple < 1):
            raise ValueError(f"experts.pad_multiple={pad_multiple!r} must be null or an integer >= 1")
        self.impl, self.pad_multiple = impl, pad_multiple

    def grouped_mm_problem(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """Why grouped_mm cannot run for activations of this device and dtype, or None if it can."""
        if _grouped_mm is None:
            return f"torch {torch.__version__} has no grouped_mm"
        if dtype not in GROUPED_MM_DTYPES:
            return f"dtype {dtype} is not one of {GROUPED_MM_DTYPES}"
        itemsize = torch.empty((), dtype=dtype).element_size()
        if (self.d_model * itemsize) % 16 or (self.d_ff * itemsize) % 16:
            return f"d_model={self.d_model}, d_ff={self.d_ff} rows in {dtype} are not 16-byte multiples"
        if torch.compiler.is_compiling():  # fp32 grouped_mm failed to compile on torch 2.13 CPU; no probe
            return "under torch.compile"
        if not _probe(device, dtype):
            return f"grouped_mm failed on {device} in {dtype}"
        return None

    def resolved_impl(self, device: torch.device, dtype: torch.dtype) -> str:
        """The implementation a forward on activations of this device and dtype uses."""
        if self.impl != "auto":
            return self.impl
        return "sorted_loop" if self.grouped_mm_problem(device, dtype) else "grouped_mm"

    def resolved_pad_multiple(self, device: torch.device, dtype: torch.dtype) -> int:
        """The row multiple a forward on activations of this device and dtype pads to (module docstring)."""
        if self.pad_multiple is not None:
            return self.pad_multiple
        cpu_bf16 = device.type == "cpu" and dtype == torch.bfloat16 and not torch.compiler.is_compiling()
        return CPU_BF16_PAD_MULTIPLE if cpu_bf16 else 1

    def expert_outputs(self, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, weights) -> torch.Tensor:
        impl = self.resolved_impl(x_ND.device, x_ND.dtype)
        multiple = self.resolved_pad_multiple(x_ND.device, x_ND.dtype)
        if impl == "padded_bmm":
            capacity = round_up(int(tokens_per_expert_E.max()), multiple)
            return padded_expert_outputs(x_ND, tokens_per_expert_E, capacity, weights, self.mlp)
        if multiple == 1:
            return self.sorted_outputs(impl, x_ND, tokens_per_expert_E, weights)
        slot_N, rows_per_expert_E = rounded_slots(tokens_per_expert_E, multiple)
        return through_slots(x_ND, slot_N, int(rows_per_expert_E.sum()),
                             lambda x_PD: self.sorted_outputs(impl, x_PD, rows_per_expert_E, weights))

    def sorted_outputs(self, impl: str, x_ND: torch.Tensor, tokens_per_expert_E: torch.Tensor, weights) -> torch.Tensor:
        """FFN_e of every row by ``grouped_mm`` or ``sorted_loop``, the rows grouped by expert."""
        if impl == "grouped_mm":
            if problem := self.grouped_mm_problem(x_ND.device, x_ND.dtype):
                raise RuntimeError(f"experts.impl='grouped_mm' cannot run: {problem}; use impl='auto'")
            offsets_E = torch.cumsum(tokens_per_expert_E, 0, dtype=torch.int32)
            return self.mlp(x_ND, weights, matmul=lambda x, w_EXY: grouped_mm(x, w_EXY, offsets_E),
                            add_bias=lambda h, b_EX: h + torch.repeat_interleave(
                                b_EX, tokens_per_expert_E, dim=0, output_size=h.shape[0]))
        # unbind, not w[e]: indexing a stacked parameter in a loop makes backward O(E²·D·F) (docs/design.md)
        per_expert = zip(torch.split(x_ND, tokens_per_expert_E.tolist()), zip(*(w.unbind(0) for w in weights)),
                         strict=True)
        return torch.cat([self.mlp(x_rows, expert_weights) for x_rows, expert_weights in per_expert])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, impl={self.impl!r}, pad_multiple={self.pad_multiple!r}"
