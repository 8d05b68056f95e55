"""Weight-only quantized routed experts, for inference: int8 per output row (Jamba-1.5's ExpertsInt8), 4-
and 2-bit with one scale per group of ``group_size`` inputs of each output, and ternary {−1, 0, +1} × one
scale per output row (QMoE-style, Frantar & Alistarh 2310.16795; the ternary rule of Li et al. 1605.04711).

For a stacked weight W [E, X, Y] ("x @ w": X inputs, Y outputs) and b bits, with q_max = 2^(b−1) − 1:

    int8, 4, 2 bit:  s = max |W[e, group, y]| / q_max,   q = clamp(round(W / s), −q_max, q_max),   Ŵ = s·q
    ternary:         Δ = 0.7·mean |W[e, :, y]|,   q = sign(W)·[|W| > Δ],   s = mean |W| over |W| > Δ,   Ŵ = s·q

(int8: the group is the whole row, X inputs, as ExpertsInt8 stores it). The codes are packed along X, 8/b
per byte (ternary as 2-bit codes), in uint8 buffers that safetensors stores as they are; ``forward``
unpacks and scales only the experts the routing uses (one decoded token touches k of E) and dispatches
over them like :class:`GroupedExperts` (the activations stay in the compute
dtype, as ExpertsInt8's upcast tile does). Biases stay in float.

Libraries checked first (2026-12-01, torch 2.13 CPU):
- torchao 0.18: ``quantize_`` with ``Int8WeightOnlyConfig`` on a module holding a 3-D weight yields an
  Int8Tensor with per-(expert, row) scales; ``F.linear`` on one expert's slice works, but ``transpose``
  and ``bmm`` are unimplemented, so neither the grouped nor the padded dispatch can use it.
- optimum-quanto 0.2.7: quantizes ``nn.Linear`` modules; its group optimisers run on 2-D tensors.
Neither holds the stacked experts of every backend, hence this module.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.experts.grouped import GroupedExperts
from moe.experts.permute import dispatch_over_used
from moe.experts.swiglu import PARAMETERS, compute_dtype

BITS = (8, 4, 2, "ternary")


def check_bits(bits, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits={bits!r} is not supported; one of {BITS}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be an integer >= 1")


def code_bits(bits) -> int:
    return 2 if bits == "ternary" else int(bits)


def quantize(W_EXY: torch.Tensor, bits, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [E, X, Y], scales [E, X/g, Y] float32) with g = group_size (X for int8 and ternary)."""
    E, X, Y = W_EXY.shape
    W = W_EXY.detach().float()
    if bits == "ternary":
        magnitude = W.abs()
        threshold_E1Y = 0.7 * magnitude.mean(dim=1, keepdim=True)
        kept = magnitude > threshold_E1Y
        scale_E1Y = (magnitude * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True).clamp_min(1)
        return (torch.sign(W) * kept).to(torch.int8), scale_E1Y
    group = X if bits == 8 else group_size
    if X % group:
        raise ValueError(f"group_size={group_size} must divide the experts' input width {X}")
    q_max = 2 ** (int(bits) - 1) - 1
    grouped = W.view(E, X // group, group, Y)
    scale_EGY = (grouped.abs().amax(dim=2) / q_max).clamp_min(torch.finfo(torch.float32).tiny)
    codes = (grouped / scale_EGY[:, :, None]).round().clamp(-q_max, q_max).to(torch.int8)
    return codes.view(E, X, Y), scale_EGY


def pack(codes_EXY: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed b-bit codes → uint8 bytes along X (8/b codes per byte, the first in the lowest bits)."""
    if bits == 8:
        return codes_EXY.view(torch.uint8)
    per_byte = 8 // bits
    E, X, Y = codes_EXY.shape
    unsigned = (codes_EXY.to(torch.int16) + 2 ** (bits - 1)).to(torch.uint8).view(E, X // per_byte, per_byte, Y)
    packed = torch.zeros(E, X // per_byte, Y, dtype=torch.uint8, device=codes_EXY.device)
    for k in range(per_byte):
        packed |= unsigned[:, :, k] << (bits * k)
    return packed


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack`: int8 codes [E, X, Y]."""
    if bits == 8:
        return packed.view(torch.int8)
    per_byte, mask = 8 // bits, (1 << bits) - 1
    parts = [((packed >> (bits * k)) & mask).to(torch.int8) - 2 ** (bits - 1) for k in range(per_byte)]
    E, G, Y = packed.shape
    return torch.stack(parts, dim=2).view(E, G * per_byte, Y)


class QuantizedExperts(GroupedExperts):
    """Routed experts stored as packed codes and scales (see the module docstring); inference only."""

    def __init__(self, *, num_experts: int, d_model: int, d_ff: int, bits=8, group_size: int = 32,
                 impl: str = "auto", activation: str = "swiglu", init_std: float = 0.02):
        check_bits(bits, group_size)
        self.bits, self.group_size = bits, group_size
        super().__init__(num_experts=num_experts, d_model=d_model, d_ff=d_ff, init_std=init_std, impl=impl,
                         activation=activation)
        sizes = {"D": d_model, "F": d_ff, "E": num_experts}
        b = code_bits(bits)
        for name in PARAMETERS[activation]:
            if name.startswith("b_"):
                continue  # biases stay float parameters
            delattr(self, name)
            E, X, Y = (sizes[c] for c in name.rsplit("_", 1)[1])
            group = X if bits in (8, "ternary") else group_size
            if X % group or X % (8 // b):
                raise ValueError(f"group_size={group_size} (and {8 // b} codes per byte) must divide the "
                                 f"experts' input width {X}")
            self.register_buffer(f"{name}_codes", torch.zeros(E, X // (8 // b), Y, dtype=torch.uint8))
            self.register_buffer(f"{name}_scale", torch.ones(E, X // group, Y))

    def reset_parameters(self) -> None:
        for name in PARAMETERS[self.activation]:
            if name.startswith("b_") and hasattr(self, name):
                nn.init.zeros_(getattr(self, name))

    @torch.no_grad()
    def load_stacks(self, stacks: dict[str, torch.Tensor]) -> None:
        """Quantize float stacks ({name: [E, X, Y]}) into the codes and scales (biases copied as they are)."""
        for name, W in stacks.items():
            if name.startswith("b_"):
                getattr(self, name).copy_(W)
                continue
            codes, scale = quantize(W, self.bits, self.group_size)
            getattr(self, f"{name}_codes").copy_(pack(codes, code_bits(self.bits)))
            getattr(self, f"{name}_scale").copy_(scale)

    def dequantized(self, name: str, experts: torch.Tensor | None = None) -> torch.Tensor:
        """Ŵ [E, X, Y] of one stack, or with ``experts`` (ids) only theirs, [len(experts), X, Y]."""
        codes, scale = getattr(self, f"{name}_codes"), getattr(self, f"{name}_scale")
        if experts is not None:
            codes, scale = codes[experts], scale[experts]
        codes = unpack(codes, code_bits(self.bits)).float()
        E, X, Y = codes.shape
        return (codes.view(E, scale.shape[1], -1, Y) * scale[:, :, None]).view(E, X, Y)

    def stacked_weights(self, dtype: torch.dtype, experts: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        return tuple((getattr(self, name) if name.startswith("b_") else self.dequantized(name, experts)).to(dtype)
                     for name in PARAMETERS[self.activation])

    def forward(self, x_TD: torch.Tensor, routing) -> torch.Tensor:
        """As GroupedExperts, dequantizing only the experts this routing uses (decoding touches k of E)."""
        dtype = compute_dtype(x_TD)
        return dispatch_over_used(x_TD, routing, dtype, self.expert_outputs,
                                  lambda used_U: self.stacked_weights(dtype, used_U))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits!r}, group_size={self.group_size}"
