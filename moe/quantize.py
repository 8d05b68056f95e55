"""Quantize a model's routed FFN experts (moe/experts/quantized.py) and save it as a checkpoint that
``load_model`` rebuilds, so every eval script scores it:

    from moe import quantize_experts
    quantize_experts(model, bits=8)                       # in place; bits: 8, 4, 2 or "ternary"
    python eval/quantize.py RUN_OR_HF_DIR OUT_DIR --bits 4 --group-size 32

Only the routed experts are quantized (as ExpertsInt8 does): attention, shared experts, dense FFNs,
routers and embeddings stay float. The saved checkpoint's config.yaml names the quantized experts
(``experts: {_target_: moe.experts.QuantizedExperts, bits, group_size}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

from moe.checkpoint import read_config, resolve_checkpoint, write_config
from moe.experts.quantized import QuantizedExperts, check_bits
from moe.experts.swiglu import PARAMETERS, SwiGLUExperts
from moe.loading import load_model


def quantize_experts(model: nn.Module, *, bits=8, group_size: int = 32) -> nn.Module:
    """Replace every MoE FFN's experts by :class:`QuantizedExperts` holding their quantized weights."""
    check_bits(bits, group_size)
    layers = [block.ffn for block in getattr(model, "blocks", []) if block.is_moe]
    if not layers:
        raise ValueError("the model has no routed FFN experts to quantize (a dense model?)")
    for layer in layers:
        experts = layer.experts
        if isinstance(experts, QuantizedExperts):
            raise ValueError(f"the experts are already quantized (bits={experts.bits!r})")
        if not isinstance(experts, SwiGLUExperts) or not hasattr(experts, PARAMETERS[experts.activation][0]):
            raise ValueError(f"experts {type(experts).__name__} hold no plain weight stacks to quantize")
        quantized = QuantizedExperts(num_experts=experts.num_experts, d_model=experts.d_model, d_ff=experts.d_ff,
                                     bits=bits, group_size=group_size, impl=getattr(experts, "impl", "auto"),
                                     activation=experts.activation)
        quantized.load_stacks({name: getattr(experts, name) for name in PARAMETERS[experts.activation]})
        layer.experts = quantized.to(next(experts.parameters()).device)
    return model


def save_quantized(source: str | Path, out_dir: str | Path, *, bits=8, group_size: int = 32) -> Path:
    """Quantize the model of a moe-lab checkpoint (or HF directory) into a new checkpoint ``out_dir``,
    which must not exist (nothing is overwritten)."""
    from moe.interop.hf_import import hf_run_config, is_hf_model_dir  # lazy: moe.interop imports moe

    check_bits(bits, group_size)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another output directory (nothing is overwritten)")
    config = hf_run_config(source) if is_hf_model_dir(source) else read_config(
        resolve_checkpoint(source) / "config.yaml")
    model = quantize_experts(load_model(source), bits=bits, group_size=group_size)
    impl = (config.get("experts") or {}).get("impl", "auto")
    config["experts"] = {"_target_": "moe.experts.QuantizedExperts", "_partial_": True, "bits": bits,
                         "group_size": group_size, "impl": impl}
    out_dir.mkdir(parents=True)
    save_model(model, str(out_dir / "model.safetensors"))
    write_config(out_dir / "config.yaml", config)
    meta = {"quantized_from": str(source), "bits": bits, "group_size": group_size, "torch": torch.__version__}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))  # last: marks a complete checkpoint
    return out_dir
