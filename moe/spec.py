"""Build objects from config mappings that name their class: ``{"_target_": "pkg.Cls", ...}``.

This reads the same ``_target_`` / ``_partial_`` keys as ``hydra.utils.instantiate`` so the config
files in ``configs/`` work unchanged, but lives in ``moe/`` because the library must not import
Hydra (docs/design-notes.md): ``moe.load_model`` rebuilds a model from a checkpoint's ``config.yaml`` with it.
It is not a registry — the dotted path in the config file is the only name a part has. Unlike
Hydra's version it reports a wrong keyword with the allowed ones.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any


def locate(path: str) -> Any:
    """Import ``pkg.module.attr`` (the longest importable module prefix, then attributes)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[split:]:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            break
    raise ValueError(f"_target_={path!r} cannot be imported")


def _check_keywords(target: Any, kwargs: Mapping[str, Any], where: str) -> None:
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = sorted(name for name, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
        raise ValueError(f"{where}: unknown option(s) {unknown} for {target.__qualname__}; allowed: {allowed}")


def instantiate(spec: Mapping[str, Any], where: str = "config", **extra: Any) -> Any:
    """Call (or, with ``_partial_: true``, bind) ``spec["_target_"]`` with the other keys plus ``extra``.

    Nested mappings with a ``_target_`` are instantiated first. ``where`` names the config node in
    error messages (e.g. ``"router"``).
    """
    if "_target_" not in spec:
        raise ValueError(f"{where}: missing _target_ (got keys {sorted(spec)})")
    kwargs = {
        key: instantiate(value, f"{where}.{key}") if isinstance(value, Mapping) and "_target_" in value else value
        for key, value in spec.items()
        if key not in ("_target_", "_partial_")
    }
    kwargs.update(extra)
    target = locate(spec["_target_"])
    _check_keywords(target, kwargs, where)
    if spec.get("_partial_", False):
        return functools.partial(target, **kwargs)
    return target(**kwargs)
