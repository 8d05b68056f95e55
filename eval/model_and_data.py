"""What the eval scripts share: loading a model with its run config, and the data to score it on.

The data is a ``data`` config node, chosen with the same override syntax as ``train.py``:
by default a moe-lab checkpoint is scored on the data of its own run (its ``config.yaml``); overrides
such as ``data=hf data.data_files=x.jsonl`` compose a fresh node from configs/. A Hugging Face
directory needs one, with its tokenizer (``data=chat ... data.tokenizer=auto``), unless it is a
moe-lab export of a byte-level model (its tokenizer.json holds moe-lab's byte ids): that one is
scored on the default corpus. ``data.tokenizer=auto`` follows train.py's rule with the scored model as
``init.path``: its directory's tokenizer.json, the tokenizer a moe-lab run trained with, else bytes.
Sequences never exceed the model's ``max_seq_len``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from moe.checkpoint import read_config, resolve_checkpoint
from moe.data import DataBundle
from moe.finetune import resolve_tokenizer
from moe.interop.hf_import import hf_run_config, is_hf_model_dir
from moe.interop.tokenizer_export import is_byte_tokenizer_json
from moe.loading import load_model
from moe.spec import instantiate

REPO = Path(__file__).resolve().parent.parent


def compose_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved ``train.yaml`` config for these command-line overrides (as ``train.py`` sees it)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def run_config(path: str | Path) -> dict[str, Any]:
    """The run config of a moe-lab checkpoint / run directory, or the imported config of a HF directory."""
    if is_hf_model_dir(path):
        return hf_run_config(path)
    return read_config(resolve_checkpoint(path) / "config.yaml")


def load(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, its run config)."""
    return load_model(path, device=device), run_config(path)


def eval_data(path: str | Path, config: dict[str, Any], overrides: list[str], model: nn.Module) -> DataBundle:
    """The data to score ``model`` (loaded from ``path``) on (see the module docstring)."""
    max_seq_len, vocab_size = int(model.max_seq_len), int(model.vocab_size)
    data_overrides = [o for o in overrides if o.lstrip("+~").startswith("data")]
    if "data" in config and not data_overrides:
        node = dict(config["data"])
    elif not data_overrides and is_byte_tokenizer_json(Path(path) / "tokenizer.json"):
        node = dict(compose_config([])["data"])  # a moe-lab export of a byte-level model: the default corpus
    elif not data_overrides:  # a HF model: the byte-level default corpus would not match its vocabulary
        raise ValueError(f"{path} brings no data config: name one with its tokenizer, e.g. "
                         f"data=chat data.data_files=rows.jsonl (data.tokenizer=auto uses the model's tokenizer.json)")
    else:
        node = dict(compose_config(overrides)["data"])
    if not any(o.startswith("data.seq_len=") for o in overrides):
        node["seq_len"] = min(int(node.get("seq_len", max_seq_len)), max_seq_len)
    # data.tokenizer=auto means what it means in train.py with init.path = the scored model
    node = resolve_tokenizer({"data": node, "init": {"path": str(path)}})["data"]
    data = instantiate(node, "data")
    if data.vocab_size > vocab_size:
        raise ValueError(f"the data's tokenizer has {data.vocab_size} tokens, more than the model's vocab_size="
                         f"{vocab_size}: score the model with its own tokenizer (data.tokenizer)")
    return data
