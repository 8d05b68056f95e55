"""Model FLOPs per training token, and MFU (model FLOPs utilisation; PaLM, Chowdhery et al. 2204.02311,
appendix B).

    training FLOPs / token = 3 × (2 · N_matmul + A(S))
    MFU = tokens/s × training FLOPs / token ÷ peak FLOP/s

- N_matmul: the weights one token multiplies by in a forward (each multiply-add is 2 FLOPs): every
  block's weight matrices (parameters of 2 or more dimensions; norm gains and biases are not
  multiplied by), a routed layer's experts counted at k/E (its active share, moe/analysis/params.py),
  the router in full (it scores all E experts), a block shared by several layers (Zamba) once per
  application, and the LM head (V·D, tied or not). Embedding and position lookups are not matmuls and
  are left out, as in PaLM.
- A(S): attention scores q·kᵀ and the value sum, 2 · context · heads · (d_qk + d_v) per token and
  attention layer, each mixer's own ``score_flops``. ``context`` is the mean causal context of a training
  sequence of S tokens, (S + 1) / 2: masked-out positions are not counted (PaLM counts all S, which for
  short sequences makes MFU look higher than the work done).
- Backward = 2 × forward, hence the 3. Not counted: norms, activations, softmax, the SSM scan of
  Mamba mixers (elementwise, ≪ their projections), dispatch and communication — MFU is the share of
  the peak that the model's arithmetic would take, whatever the implementation spends.

The peak is ``trainer.peak_flops`` when set (a GPU's datasheet number), else measured at start by
:func:`measure_peak_flops`: a square matmul in the training dtype repeated for a short time. A measured
peak is what this machine's matmul kernel reaches, not a datasheet number, so MFU against it reads
"the share of the attainable matmul rate", which on a CPU is the honest denominator.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from moe.analysis.params import expected_experts_per_token
from moe.layer import MoELayer


def matmul_params_per_token(model: nn.Module) -> float:
    """N_matmul of the module docstring."""
    total = 0.0
    for block in model.blocks:
        total += _matrix_numel(block.parameters())  # a shared block: registered in each block that applies it
        for layer in block.modules():
            if isinstance(layer, MoELayer):
                E = layer.experts.num_experts
                k = min(expected_experts_per_token(layer.router), E)
                routed = getattr(layer.experts, "routed_parameters", layer.experts.parameters)()
                total -= (1 - k / E) * _matrix_numel(routed)
    return total + model.lm_head.weight.numel()


def _matrix_numel(params) -> int:
    return sum(p.numel() for p in params if p.dim() >= 2)


def attention_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """A(S) of the module docstring: every attention application's score FLOPs at the mean causal context."""
    context = (seq_len + 1) / 2
    return sum(module.score_flops(context) for block in model.blocks for module in block.modules()
               if hasattr(module, "score_flops"))


def training_flops_per_token(model: nn.Module, seq_len: int) -> float:
    return 3 * (2 * matmul_params_per_token(model) + attention_flops_per_token(model, seq_len))


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.2, size: int = 1024) -> float:
    """FLOP/s of a size×size matmul in ``dtype`` on ``device``, repeated for about ``seconds`` (after a
    warm-up that also takes oneDNN's first-call setup out of the timing)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        a @ b
        count += 1
        if count % 8 == 0:
            sync()
    sync()
    elapsed = time.perf_counter() - start
    return 2 * size**3 * count / elapsed
