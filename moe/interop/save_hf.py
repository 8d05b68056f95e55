"""``save_hf``: write a moe-lab model as a Hugging Face model directory.

    from moe.interop import save_hf
    save_hf(model, "hf-out", config=run_config)          # a DecoderLM + the run config it was built from
    save_hf("runs/my-run", "hf-out")                     # a run / checkpoint dir (its config.yaml + weights)
    save_hf("runs/my-run", "hf-out", arch="qwen2_moe")   # force a target; ValueError if it cannot hold it

    transformers.AutoModelForCausalLM.from_pretrained("hf-out")   # the same logits
    moe.load_model("hf-out")                                       # back into moe-lab

The directory holds ``config.json`` (a plain dict: moe-lab never imports transformers), one
``model.safetensors`` (metadata ``format: pt``) in the per-expert layout transformers 5.24
``save_pretrained`` writes, and the tokenizer the model was trained with (``tokenizer.json`` +
``tokenizer_config.json``; moe/interop/tokenizer_export.py) when the source says which: a run or
checkpoint directory, a HF directory with a tokenizer, or ``config=`` with a ``data`` node. Which
HF ``model_type`` a model becomes, the exact conversions and what is refused are documented in
moe/interop/hf_export.py. Command line: ``eval/export_hf.py``.

Safety: every check (unsupported option, wrong ``arch``, non-empty ``out_dir`` without
``overwrite=True``) runs before anything is written; the files are written into a hidden temporary
directory next to ``out_dir`` and renamed into place, so a failure leaves no half-written model (and,
with ``overwrite=True``, the old directory is only removed once the new one is in place).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from moe.data.tokenizer import ByteTokenizer
from moe.finetune import resolve_tokenizer
from moe.interop.hf_export import export_hf
from moe.interop.tokenizer_export import tokenizer_files, trained_with_bytes, write_tokenizer_files

DEFAULT_ROPE_THETA = 10000.0  # build_decoder's default, used when the model node does not set rope_theta


def _load_source(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A moe-lab run/checkpoint directory, or a HF model directory, as (model, run config)."""
    from moe.checkpoint import read_config, resolve_checkpoint  # lazy: moe.loading imports moe.interop
    from moe.interop.hf_import import hf_run_config, is_hf_model_dir
    from moe.loading import load_model

    path = Path(source)
    if is_hf_model_dir(path):  # its tokenizer, if it has one, goes with it
        tokenizer = {"data": {"tokenizer": str(path)}} if (path / "tokenizer.json").is_file() else {}
        return load_model(path), {**hf_run_config(path), **tokenizer}
    checkpoint = resolve_checkpoint(path)
    return load_model(checkpoint), read_config(checkpoint / "config.yaml")


def _rope_theta(config: Mapping[str, Any] | None) -> float | None:
    """θ from a run config (its ``model`` node) or a bare model node; None without a config."""
    if config is None:
        return None
    model_cfg = config.get("model", config)
    return float(model_cfg.get("rope_theta", DEFAULT_ROPE_THETA))


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")


def _tokenizer_files(config: Mapping[str, Any] | None, model: nn.Module) -> dict[str, str | Path]:
    """The tokenizer the model was trained with (moe/interop/tokenizer_export.py), from the source's
    ``data`` node; none for a model object without a run config."""
    if config is None or "data" not in config:
        return {}
    data = resolve_tokenizer(dict(config))["data"]
    return tokenizer_files(data, max_seq_len=int(getattr(model, "max_seq_len", 2048)))


def _write_atomic(out: Path, config_json: dict[str, Any], tensors: dict[str, torch.Tensor],
                  tokenizer: Mapping[str, str | Path]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed export by a process with our pid
    try:
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # HF requires format
        write_tokenizer_files(tmp, tokenizer)
        if out.exists():  # checked by the caller: empty, or overwrite=True
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous directory back
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_hf(source: nn.Module | str | Path, out_dir: str | Path, *, config: Mapping[str, Any] | None = None,
            arch: str | None = None, overwrite: bool = False) -> Path:
    """Write ``source`` to ``out_dir`` as a Hugging Face model (config.json + model.safetensors).

    Args:
        source: a :class:`moe.models.DecoderLM`, or the path of a moe-lab run or checkpoint directory
            (its latest checkpoint's config.yaml + model.safetensors) or of a HF model directory.
        out_dir: the directory to create; must be absent or empty unless ``overwrite``.
        config: for a model object, the run config it was built from (``model``/``router``/... nodes, as
            in a checkpoint's config.yaml) or its ``model`` node; only RoPE's θ is taken from it (and
            checked against the model), the rest is read off the modules. Optional: without it θ is
            the model's own ``rope_theta`` (so ``save_hf(load_model(run), out)`` works). Not allowed
            with a path.
        arch: force a HF ``model_type`` (llama, qwen2, qwen3, gpt2, mixtral, qwen2_moe, qwen3_moe, olmoe,
            deepseek_v3);
            default: the first that represents the model exactly (see moe/interop/hf_export.py).
        overwrite: replace a non-empty ``out_dir``.

    Returns the output directory. Raises ValueError for a model no (or not the forced) HF architecture
    represents, FileExistsError for a non-empty ``out_dir`` without ``overwrite``.
    """
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    if isinstance(source, (str, Path)):
        if config is not None:
            raise ValueError("config= is only for a model object; a directory source brings its own config")
        model, config = _load_source(source)
    else:
        model = source
    rope_theta = _rope_theta(config) if config is not None else getattr(model, "rope_theta", None)
    _, config_json, tensors = export_hf(model, rope_theta=rope_theta, arch=arch)
    tokenizer = _tokenizer_files(config, model)
    if tokenizer and trained_with_bytes(config["data"]):  # generation stops at the end-of-document id
        config_json["eos_token_id"] = ByteTokenizer.eos_id
    _write_atomic(out, config_json, tensors, tokenizer)
    return out
