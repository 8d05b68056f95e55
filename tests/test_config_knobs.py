"""No dead knobs: every value the model-building config files set changes what is built or run.

For each leaf of ``configs/model/moe_tiny.yaml`` and of every ``configs/{router,experts,balance}`` file,
the test builds the model twice from the same seed, once with the leaf changed, and looks for any
difference: a parameter or buffer, the train-mode loss (LM + aux) and its gradients, the eval-mode
logits, or the same after one optimizer-step hook (bias updates, adaptive coefficients). A build that
refuses the changed value also counts (the value is read and checked). A knob that acts only together
with another one is listed in CONDITIONAL with the option that switches it on, and is checked with that
option set;
the two speed knobs of the experts backends (SPEED_ONLY) change how the same outputs are computed.

The ``trainer`` and ``optim`` leaves are fields of dataclasses that the trainer reads by name;
tests/test_config_defaults.py keeps them equal to their YAML keys, and the last test here checks that
the code reads every field. ``data``, ``init`` and ``logger`` are builder arguments, checked there too.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools

import pytest
import torch
import yaml
from conftest import CONFIGS, compose

from moe.models.build import build_model
from moe.train_config import OptimConfig, TrainerConfig

# a small version of the default model (shared expert and all), so each build takes milliseconds
SMALL = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64",
         "model.expert_d_ff=16", "model.shared_expert_d_ff=32", "model.max_seq_len=16", "model.num_experts=8"]

# another valid value for string and null leaves, and for numbers whose small change has no effect here
ALTERNATIVES = {
    "num_iters": 1, "tol": 0.5,  # sinkhorn converges within 8 iterations to 1e-4 on 30 tokens
    "order": "softmax_then_topk", "impl": "sorted_loop", "scope": ("sequence", "micro"), "attention": "mla",
    "qk_norm_scope": "full", "drop_policy": "position", "rule": "proportional", "target": "top_k",
    "mode": "balanced", "norm": "layernorm", "position": "learned", "mlp": "gelu", "update_rate": 0.01,
    "capacity_factor": 1.0, "eval_capacity_factor": 1.0, "q_lora_rank": 8, "moe_layers": [0],
    "n_kv_heads": 2, "expert_d_ff": 8, "shared_expert_d_ff": 8, "kv_lora_rank": 8,
    "ssm": "gqa", "mixer_layers": ["mamba", "gqa"], "mamba_dt_rank": 3, "moa_num_experts": 3,
    "final_norm_eps": 1e-3, "shared_attention_every": 2, "bond_dim": 2,
}

# knob -> the overrides under which it acts (and is then checked)
CONDITIONAL = {
    "model.qk_norm_scope": ["model.qk_norm=true"],
    "model.q_lora_rank": ["model.attention=mla"],
    "model.kv_lora_rank": ["model.attention=mla"],
    "model.qk_nope_head_dim": ["model.attention=mla"],
    "model.qk_rope_head_dim": ["model.attention=mla"],
    "model.v_head_dim": ["model.attention=mla"],
    "model.drop_policy": ["model.capacity_factor=1.0"],
    "model.moe_every": ["model.n_layers=3"],
    "model.moe_first_dense": ["model.n_layers=3"],
    "router.perturb_constant": ["router.perturbed=true"],
    "model.d_ff": ["model.moe_every=2"],  # the FFN width of dense blocks
    "model.max_seq_len": ["++model.position=learned"],  # with RoPE it only bounds the accepted length
    "balance.aux_free.target": ["router=relu"],  # top-k loads always average k·T/E, ReLU loads do not
    "router.num_iters": ["router.init_std=1.0"],  # near-uniform initial scores are balanced after one pass
    "router.tol": ["router.init_std=1.0"],
    "model.ssm": ["model.attention_every=2"],  # the mixer of the blocks that do not attend
    **{f"model.mamba_{name}": ["model.attention=mamba"]
       for name in ("d_state", "d_conv", "expand", "dt_rank", "conv_bias", "proj_bias", "inner_norms")},
    "model.mamba_head_dim": ["model.attention=mamba2"],
    **{f"model.moa_{name}": ["model.attention=moa"] for name in ("heads", "head_dim")},
    "model.mamba_n_groups": ["model.attention=mamba2", "model.mamba_head_dim=16"],
    "model.moa_num_experts": ["model.attention=moa"],
    "model.shared_attention_offset": ["model.shared_attention_every=2"],
    "model.shared_attention_blocks": ["model.shared_attention_every=1"],
    "model.shared_attention_lora_rank": ["model.shared_attention_every=1"],
}

# knobs that choose how, not what: every experts backend computes the same outputs (tests/experts/)
SPEED_ONLY = {"experts.impl", "experts.pad_multiple"}


def changed(value, key: str):
    if key in ALTERNATIVES and not isinstance(value, bool):
        options = ALTERNATIVES[key] if isinstance(ALTERNATIVES[key], tuple) else (ALTERNATIVES[key],)
        return next(option for option in options if option != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 if value else 0.5
    raise AssertionError(f"no alternative value for {key}={value!r}: add one to ALTERNATIVES")


def leaves(group: str, option: str) -> list[tuple[str, object]]:
    """(dotted override key, value) of every settable leaf of configs/GROUP/OPTION.yaml."""
    node = yaml.safe_load((CONFIGS / group / f"{option}.yaml").read_text()) or {}
    prefix = group
    if group == "balance":  # a one-key mapping: balance.NAME.KEY
        (name, node), = node.items() if node else [(None, {})]
        prefix = f"balance.{name}"
    return [(f"{prefix}.{key}", value) for key, value in node.items()
            if not key.startswith("_") and key != "defaults" and not (isinstance(value, str) and "${" in value)]


def knob_cases() -> list[tuple[str, str, object]]:
    cases = [("model=moe_tiny", key, value) for key, value in leaves("model", "moe_tiny")]
    for group in ("router", "experts", "balance"):
        for path in sorted((CONFIGS / group).glob("*.yaml")):
            cases += [(f"{group}={path.stem}", key, value) for key, value in leaves(group, path.stem)]
    return cases


def footprint(config: dict) -> list[torch.Tensor]:
    """Everything observable about a freshly built model: state, which parameters train, losses, gradients,
    logits, and again after a step."""
    torch.manual_seed(0)
    model = build_model(config)
    input_ids = torch.randint(0, config["model"]["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    seen = [t.detach().clone() for t in model.state_dict().values()]
    seen.append(torch.tensor([p.requires_grad for p in model.parameters()]))  # what trains (frozen parts)
    for _ in range(2):
        model.train()
        torch.manual_seed(2)  # the same router noise in both builds
        out = model(input_ids[:, :-1], input_ids[:, 1:])
        seen += [out.loss.detach(), *(loss.detach() * coeff for loss, coeff in
                                      zip(out.aux_losses.values(), out.aux_coeffs.values()))]
        out.loss.backward()  # knobs that act on gradients only (MPOE's gradient mask)
        seen += [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            seen.append(model(input_ids).logits)
        model.on_optimizer_step()
        seen += [t.detach().clone() for t in model.state_dict().values()]
    return seen


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


@functools.cache
def composed(*overrides: str) -> dict:
    return compose(*SMALL, *overrides, "logger=none")


@functools.cache
def base_footprint(*overrides: str) -> list[torch.Tensor]:
    return footprint(composed(*overrides))


def leaf_value(config: dict, key: str):
    """The value as composed (SMALL and the context may have changed the file's)."""
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def with_leaf(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    *path, leaf = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[leaf] = value
    return config


@pytest.mark.slow  # about a second per leaf: builds and runs a model for each of ~90 leaves
@pytest.mark.parametrize("option, key, value", knob_cases(), ids=lambda v: str(v))
def test_every_leaf_changes_what_is_built_or_run(option, key, value):
    if key in SPEED_ONLY:
        pytest.skip("a speed knob: the backends' equality is tested in tests/experts/")
    context = (option, *CONDITIONAL.get(key, []))
    config = composed(*context)
    try:
        other = footprint(with_leaf(config, key, changed(leaf_value(config, key), key.split(".")[-1])))
    except (ValueError, RuntimeError):
        return  # the changed value is read and refused (at build or at the forward): the knob is alive
    assert not same(base_footprint(*context), other), f"{key} (in {option}) changes nothing"


def test_the_code_reads_every_trainer_and_optim_field():
    """``trainer.X`` / ``optim.X`` (also ``plan.trainer.X``) attribute reads of the validated configs,
    anywhere in moe/."""
    read = set()
    for path in (CONFIGS.parent / "moe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                read.add((node.value.id, node.attr))
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                read.add((node.value.attr, node.attr))
    for name, view in (("trainer", TrainerConfig), ("optim", OptimConfig)):
        assert [f.name for f in dataclasses.fields(view) if (name, f.name) not in read] == [], name
