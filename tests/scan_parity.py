"""The check both state-space mixers' tests share: a chunked scan against its token-by-token reference."""

from __future__ import annotations

import torch


def assert_scan_matches_reference(chunked, reference, inputs, chunk: int) -> None:
    """Outputs, final state and the gradients of every input agree (float64: to 1e-10 and 1e-8)."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y_ref, h_ref = reference(*inputs)
    grads_ref = torch.autograd.grad((y_ref * torch.cos(y_ref)).sum() + h_ref.sum(), inputs)
    y, h = chunked(*inputs, chunk=chunk)
    grads = torch.autograd.grad((y * torch.cos(y)).sum() + h.sum(), inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-8)
