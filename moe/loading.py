"""``load_model(path)``: rebuild a trained model from a checkpoint directory or a run directory.

    from moe import load_model
    model = load_model("runs/my-run")          # the latest checkpoint of the run
    logits = model(input_ids).logits

Only the checkpoint's ``config.yaml`` and ``model.safetensors`` are read; no Hydra is needed.

A Hugging Face model directory (``config.json`` + ``model.safetensors`` or its shards, and no
moe-lab ``meta.json``) of a Llama, Mistral, Qwen2, GPT-2, Mixtral, Qwen2/3-MoE, OLMoE or DeepSeek-V3 model
is imported with :func:`moe.interop.load_hf` instead.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_into
from torch import nn

from moe.checkpoint import read_config, resolve_checkpoint
from moe.models.build import build_model


def load_model(path: str | Path, *, device: str = "cpu") -> nn.Module:
    from moe.interop.hf_import import is_hf_model_dir, load_hf  # lazy: moe.interop imports moe

    if is_hf_model_dir(path):
        return load_hf(path, device=device).eval()
    checkpoint = resolve_checkpoint(path)
    model = build_model(read_config(checkpoint / "config.yaml"))
    weights = checkpoint / "model.safetensors"
    try:
        missing, unexpected = load_safetensors_into(model, str(weights), strict=False, device=device)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights} is not a readable safetensors file: {err}") from err
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the model its config.yaml builds: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()
