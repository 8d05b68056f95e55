"""Tensor rules: how our parameters and a Hugging Face checkpoint's tensors correspond, in both directions.

A :class:`TensorRule` names a group of our parameters (or buffers) and the HF tensors that hold the same
numbers, with the two conversions between them. An architecture's adapter lists its rules once
(``tensor_rules``); the import (moe/interop/hf_import.py) runs ``to_ours`` on every rule and the export
(moe/interop/hf_export.py) runs ``to_hf``, so a name or a layout is written down in one place only.
The conversions are exact inverses (``to_ours(*to_hf(*ours)) == ours`` bit for bit; tests/interop
checks this for every rule of every architecture), except for export-only rules (``ours`` empty):
tensors HF's format requires that our model does not have, written as constants that contribute
exactly nothing (zero biases, a zero shared expert).

The layouts: our linear weights are ``nn.Linear``'s [out, in], as HF's, so most rules are the
identity; expert stacks are [E, in, out] ("x @ w") against HF's E separate [out, in] matrices; our
``kv_proj`` is HF's ``k_proj`` rows followed by ``v_proj``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Convert = Callable[..., tuple[torch.Tensor, ...]]


def _identity(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tensors


@dataclass(frozen=True)
class TensorRule:
    """Our tensors ``ours`` ↔ HF tensors ``hf``.

    Attributes:
        ours: our parameter/buffer names (empty: an export-only constant, see the module docstring).
        hf: the HF tensor names.
        to_ours: HF tensors (in ``hf`` order) → our tensors (in ``ours`` order).
        to_hf: our tensors → HF tensors.
        exact_hf_shapes: whether the import can demand exactly the shapes ``to_hf`` gives (False where
            HF may hold more, e.g. GPT-2's position table beyond our max_seq_len).
    """

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    to_ours: Convert = _identity
    to_hf: Convert = _identity
    exact_hf_shapes: bool = True


def same(ours: str, hf: str) -> TensorRule:
    """One tensor, the same numbers and layout on both sides."""
    return TensorRule((ours,), (hf,))


def transposed(ours: str, hf: str) -> TensorRule:
    """GPT-2's Conv1D [in, out] ↔ our nn.Linear [out, in]."""
    return TensorRule((ours,), (hf,), to_ours=lambda t: (t.T,), to_hf=lambda t: (t.T,))


def scaled(ours: str, hf: str, factor: float) -> TensorRule:
    """HF's tensor = ours × factor. Exactly invertible for a power of two (nothing is rounded)."""
    return TensorRule((ours,), (hf,), to_ours=lambda t: (t / factor,), to_hf=lambda t: (t * factor,))


def concatenated(ours: str, hf: Sequence[str]) -> TensorRule:
    """Our tensor = HF's tensors stacked along rows in ``hf`` order, equal parts (k_proj, v_proj → kv_proj)."""
    parts = len(hf)
    return TensorRule((ours,), tuple(hf), to_ours=lambda *ts: (torch.cat(ts, dim=0),),
                      to_hf=lambda t: tuple(t.chunk(parts, dim=0)))


def split_rows(ours: Sequence[str], hf: str, rows: Sequence[int], *, transpose: bool = False) -> TensorRule:
    """Our tensors = consecutive row blocks of one HF tensor (of its transpose with ``transpose``):
    GPT-2's fused c_attn [D, 3D] → q_proj, kv_proj."""
    def to_ours(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple((t.T if transpose else t).split(list(rows), dim=0))

    def to_hf(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused = torch.cat(ts, dim=0)
        return (fused.T if transpose else fused,)

    return TensorRule(tuple(ours), (hf,), to_ours=to_ours, to_hf=to_hf)


def expert_stack(ours: str, hf: Sequence[str]) -> TensorRule:
    """Our expert stack [E, in, out] ↔ HF's E nn.Linear weights [out, in], one per expert."""
    return TensorRule((ours,), tuple(hf), to_ours=lambda *ws: (torch.stack([w.T for w in ws]),),
                      to_hf=lambda stack: tuple(w.T for w in stack.unbind(0)))


def row_permuted(ours: str, hf: str, order: torch.Tensor) -> TensorRule:
    """Our rows = HF's rows taken in ``order`` (a permutation); the export puts them back."""
    inverse = torch.argsort(order)
    return TensorRule((ours,), (hf,), to_ours=lambda t: (t[order.to(t.device)],),
                      to_hf=lambda t: (t[inverse.to(t.device)],))


def constant(hf: str, shape: Sequence[int]) -> TensorRule:
    """Export only: a zero tensor HF's format requires and our model lacks (it adds exactly nothing)."""
    return TensorRule((), (hf,), to_ours=lambda t: (), to_hf=lambda: (torch.zeros(*shape),))


def fused_gate_up(ours: str, hf: str) -> TensorRule:
    """Our w_gate_EDF, w_up_EDF ↔ HF's input_linear [E, 2F, D]: the gate rows, then the up rows."""
    def to_ours(w_E2FD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gate_EFD, up_EFD = w_E2FD.chunk(2, dim=1)
        return gate_EFD.transpose(1, 2), up_EFD.transpose(1, 2)

    def to_hf(gate_EDF: torch.Tensor, up_EDF: torch.Tensor) -> tuple[torch.Tensor]:
        return (torch.cat((gate_EDF, up_EDF), dim=2).transpose(1, 2),)

    return TensorRule((f"{ours}.w_gate_EDF", f"{ours}.w_up_EDF"), (hf,), to_ours=to_ours, to_hf=to_hf)
