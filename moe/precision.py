"""``trainer.mixed_precision: auto``: bf16 autocast where the hardware computes bf16 natively, else fp32.

bf16 pays only where matmuls run in bf16 in silicon. On a CPU with AVX512-BF16 or AMX, bf16 autocast
made the default MoE's training step 1.57× faster (with the padded expert kernel, moe/experts/grouped.py)
and the dense baseline's 1.83× (docs/results.md); on a CPU without them oneDNN emulates bf16 and the
same matmuls ran ~30× slower than fp32. So ``auto`` resolves per machine:

- CUDA (unless ``trainer.cpu``): ``bf16`` when the GPU has native bf16 (Ampere and later), else ``no``;
- CPU: ``bf16`` when it has AVX512-BF16 or AMX tiles (x86) or the BF16 extension (Arm, from
  /proc/cpuinfo), else ``no``.

The run's config.yaml keeps ``auto`` (the request); summary.json records what it resolved to.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (not by oneDNN emulation)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(torch.cpu, probe, lambda: False)():
            return True
    # Arm: torch.cpu has no probe, but Linux lists "bf16" among the CPU's features
    if platform.machine() in ("aarch64", "arm64") and CPUINFO.is_file():
        return any(line.startswith("Features") and "bf16" in line.split() for line in CPUINFO.read_text().splitlines())
    return False


def resolve_mixed_precision(requested: str, *, cpu: bool) -> str:
    """What ``trainer.mixed_precision`` means on this machine: ``auto`` becomes ``bf16`` or ``no``; an
    explicit ``bf16`` on a CPU without native bf16 is kept, with a warning that it will be slow."""
    on_cuda = not cpu and torch.cuda.is_available()
    native = torch.cuda.is_bf16_supported(including_emulation=False) if on_cuda else cpu_has_native_bf16()
    if requested == "auto":
        return "bf16" if native else "no"
    if requested == "bf16" and not native:
        warnings.warn("trainer.mixed_precision='bf16' on a device without native bf16: matmuls are emulated "
                      "and can run many times slower than 'no' (fp32); 'auto' picks per machine", stacklevel=2)
    return requested
