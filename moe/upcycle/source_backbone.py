"""``init=upcycle`` / ``init=carve``: the run's backbone comes from the dense source, its MoE from the config.

Upcycling ("Sparse Upcycling", Komatsuzaki et al. 2212.05055; "Llama 3 Meets MoE", Vavre et al.
2412.09952) starts from a released dense model, so the width, depth, heads, vocabulary, RoPE, norms,
biases, tying, maximum length and attention type are the source's: ``adopt_dense_backbone`` copies
every ``model`` key of the source (a Hugging Face ``config.json`` through its adapter, or a moe-lab
checkpoint's config.yaml) except the MoE keys below, which stay the user's. A backbone key the user
set on the command line (``model.d_model=64``) must agree with the source: two different values are
an error naming both, never a silent choice.

MoE sizes the user did not set follow the method:

- ``copy`` / ``drop``: each routed expert is the whole dense FFN, ``expert_d_ff = d_ff``;
- ``virtual_group`` with granularity G: experts are shards, ``expert_d_ff = d_ff / G``;
- these three fill routed experts only, so ``num_shared_experts`` defaults to 0 (the default MoE has one);
- ``carve`` / ``split``: the dense neurons are partitioned into ``num_shared_experts + num_experts``
  equal experts, ``expert_d_ff = shared_expert_d_ff = d_ff / (S + E)``; they need SwiGLU neurons (a
  GPT-2 source, ``mlp=gelu``, is refused: its experts are GELU MLPs, filled by copy or virtual groups).

Function preservation at step 0 (He et al. 2410.07524) needs the k gate weights to sum to one over
identical experts, which top-k routing with ``order=topk_then_softmax`` and no token dropping gives.
``step0_caveat`` names, in one line, why another setting starts away from the dense model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moe.checkpoint import read_config, resolve_checkpoint
from moe.data.hf_tokenizer import TOKENIZER_FILE
from moe.spec import locate

# The keys of the model node that shape the MoE part; every other key is the dense backbone's.
MOE_KEYS = ("num_experts", "expert_d_ff", "num_shared_experts", "shared_expert_d_ff", "shared_expert_gate",
            "capacity_factor", "eval_capacity_factor", "drop_policy", "moe_every", "moe_first_dense", "moe_layers")
ROUTED_ONLY_METHODS = ("copy", "virtual_group", "drop")  # every routed expert a copy or shard of the FFN
PRESERVING_METHODS = ("copy", "virtual_group")


def explicit_keys(overrides: Iterable[str], node: str) -> set[str]:
    """The keys of ``node`` set by command-line overrides ``node.key=value`` (Hydra's ``+``/``++``
    prefixes allowed; a group choice such as ``model=dense_tiny`` names no key)."""
    names = (item.lstrip("+").partition("=")[0] for item in overrides if "=" in item)
    return {name[len(node) + 1:] for name in names if name.startswith(node + ".") and name.count(".") == 1}


def adopt_dense_backbone(config: dict[str, Any], source_model: Mapping[str, Any], *, path: str,
                         explicit: Iterable[str] = ()) -> dict[str, Any]:
    """The config with the source's backbone keys and the method's MoE sizes (see the module doc).
    ``explicit`` names the model keys set on the command line. Never mutates ``config``."""
    init, model, explicit = config["init"], dict(config["model"]), set(explicit)
    for key, value in source_model.items():
        if key in MOE_KEYS:
            continue
        if key in explicit and key in model and model[key] != value:
            raise ValueError(f"model.{key}={model[key]!r} disagrees with init.path={path}, which has {key}={value!r}; "
                             f"the backbone comes from the source: drop model.{key} from the command line")
        model[key] = value
    d_ff, method = source_model["d_ff"], init.get("method", "copy")
    if method not in ROUTED_ONLY_METHODS and model.get("mlp", "swiglu") != "swiglu":
        raise ValueError(f"init.method={method} partitions SwiGLU neurons; init.path={path} has model.mlp="
                         f"{model['mlp']} (use init.method=copy or virtual_group)")
    if method in ROUTED_ONLY_METHODS:
        if "num_shared_experts" not in explicit:
            model["num_shared_experts"] = 0
        if "expert_d_ff" not in explicit:
            G = init.get("granularity", 1) if method == "virtual_group" else 1
            if d_ff % G:
                raise ValueError(f"init.granularity={G} must divide the d_ff={d_ff} of init.path={path}")
            model["expert_d_ff"] = d_ff // G
    elif not {"expert_d_ff", "shared_expert_d_ff"} & explicit:
        parts = model["num_experts"] + model["num_shared_experts"]
        if parts < 1 or d_ff % parts:
            raise ValueError(f"init.method={method} splits the d_ff={d_ff} of init.path={path} into "
                             f"num_shared_experts + num_experts = {parts} equal experts, which does not divide it; "
                             f"set model.num_experts (and model.num_shared_experts) to a divisor, or "
                             f"model.expert_d_ff and model.shared_expert_d_ff")
        model["expert_d_ff"] = model["shared_expert_d_ff"] = d_ff // parts
    return {**config, "model": model}


def step0_caveat(config: Mapping[str, Any]) -> str | None:
    """Why this upcycled run will not start exactly at the dense model's function, or None."""
    init, model, router = config["init"], config["model"], config.get("router") or {}
    method = init.get("method", "copy")
    if method not in PRESERVING_METHODS:
        return None  # drop re-initialises neurons and carve/split repartition them: not meant to preserve
    from moe.routers import TopKRouter

    if locate(router.get("_target_", "")) is not TopKRouter:
        return (f"router {router.get('_target_')} does not give k gate weights that sum to 1 over the chosen experts; "
                f"router=top_k (router.order=topk_then_softmax) does")
    if router.get("order") != "topk_then_softmax":
        return (f"router.order={router.get('order')} scales the routed output by the top-k probability mass (the "
                f"output scale E*G/k is exact only for a uniform router); router.order=topk_then_softmax does not")
    for key in ("capacity_factor", "eval_capacity_factor"):
        if model.get(key) is not None:
            return f"model.{key}={model[key]} may drop tokens; null (dropless) keeps every token's FFN"
    return None


def source_tokenizer(path: str | None) -> str:
    """``data.tokenizer=auto``: init.path when it holds a tokenizer.json, the tokenizer a moe-lab
    checkpoint was trained with (its data.tokenizer), else ``byte``."""
    if not path or not Path(path).exists():
        return "byte"  # the init node reports a missing path in its own words
    if (Path(path) / TOKENIZER_FILE).is_file():
        return str(path)
    try:
        previous = (read_config(resolve_checkpoint(path) / "config.yaml").get("data") or {}).get("tokenizer")
    except (FileNotFoundError, ValueError):
        return "byte"
    return previous if previous not in (None, "byte", "auto") else "byte"
