"""One default per knob: the config files and the code never disagree about a default.

- ``trainer`` and ``optim`` are read through dataclasses (moe/train_config.py) that have no defaults:
  their YAML files are the only place a default lives, and the fields and keys must be the same set.
- Every node built from a ``_target_`` sets arguments of a constructor or builder. For each argument
  the file sets, the code must have either no default or the same one. The one exception is the
  argument that tells several files of one class apart (``experts/grouped`` and
  ``experts/sorted_loop`` differ in ``impl``; ``switch_aux``/``global_aux``/``sequence_aux`` in
  ``scope``): there the file *chooses*; it does not restate a default.
- ``configs/model/`` files are not compared: each defines one model (its sizes and choices), the way
  ``dense_tiny`` is ``moe_tiny`` with a dense FFN; ``build_decoder``'s own defaults describe a bare module
  (dense, ``n_kv_heads`` = ``n_heads``), not the framework's default model.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections import defaultdict

import pytest
import yaml
from conftest import CONFIGS

from moe.parallel.config import ParallelConfig
from moe.train_config import OptimConfig, TrainerConfig

VIEWS = {"trainer/default.yaml": TrainerConfig, "optim/adamw.yaml": OptimConfig,
         "parallel/default.yaml": ParallelConfig}


@pytest.mark.parametrize("file, view", VIEWS.items(), ids=list(VIEWS))
def test_dataclass_views_have_no_defaults_and_the_yaml_sets_every_field(file, view):
    fields = dataclasses.fields(view)
    with_defaults = [f.name for f in fields
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_defaults == [], f"{view.__name__} defaults {with_defaults}: the default belongs in configs/{file}"
    assert set(yaml.safe_load((CONFIGS / file).read_text())) == {f.name for f in fields}


def targeted_nodes(node, where: str):
    """(file:path, node) for every mapping with a ``_target_`` inside a parsed config file."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield where, node
        for key, value in node.items():
            yield from targeted_nodes(value, f"{where}.{key}" if ":" in where else f"{where}:{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targeted_nodes(value, f"{where}[{i}]")


def all_targeted_nodes() -> list[tuple[str, dict]]:
    return [found for path in sorted(CONFIGS.rglob("*.yaml")) if path.parent.name != "model"
            for found in targeted_nodes(yaml.safe_load(path.read_text()) or {}, str(path.relative_to(CONFIGS)))]


def constructor(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def is_set_elsewhere(value) -> bool:
    """Values that are not defaults: interpolations (``${...}``) and Hydra's mandatory ``???``."""
    return isinstance(value, str) and (value == "???" or "${" in value)


def comparable(value):
    return list(value) if isinstance(value, tuple) else value


def drift_in(nodes: list[tuple[str, dict]]) -> list[str]:
    """Every argument a file sets to something other than the code's default, unless it is a choice."""
    values_by_target: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
    for _, node in nodes:
        for key, value in node.items():
            values_by_target[node["_target_"]][key].add(repr(value))
    drift = []
    for where, node in nodes:
        parameters = inspect.signature(constructor(node["_target_"])).parameters
        for key, value in node.items():
            if key.startswith("_") or is_set_elsewhere(value):
                continue
            assert key in parameters, f"{where}: {key} is not an argument of {node['_target_']}"
            default = parameters[key].default
            chooses = len(values_by_target[node["_target_"]][key]) > 1  # files of one class differ in it
            if default is not inspect.Parameter.empty and comparable(default) != value and not chooses:
                drift.append(f"{where}.{key}: file {value!r}, code {default!r}")
    return drift


def test_config_files_and_code_agree_on_every_default():
    nodes = all_targeted_nodes()
    assert len(nodes) >= 30  # every router, balancer, experts backend, data builder, init and logger
    assert drift_in(nodes) == []


def test_the_drift_check_reports_a_restated_default_that_differs():
    top_k = {"_target_": "moe.routers.TopKRouter", "top_k": 2, "jitter_eps": 0.5}
    assert drift_in([("router/top_k.yaml", top_k)]) == ["router/top_k.yaml.jitter_eps: file 0.5, code 0.0"]
    # two files of one class that differ in an argument choose it
    other = {**top_k, "jitter_eps": 0.1}
    assert drift_in([("a.yaml", top_k), ("b.yaml", other)]) == []
