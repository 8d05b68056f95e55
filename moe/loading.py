"""``load_model(path)``: rebuild a trained model from a checkpoint directory or a run directory.

    from moe import load_model
    model = load_model("runs/my-run")          # the latest checkpoint of the run
    logits = model(input_ids).logits

Only the checkpoint's ``config.yaml`` and ``model.safetensors`` are read; no Hydra is needed.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_into
from torch import nn

from moe.checkpoint import read_config, resolve_checkpoint
from moe.models.build import build_model


def load_model(path: str | Path, *, device: str = "cpu") -> nn.Module:
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
