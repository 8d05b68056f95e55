"""Build objects from config mappings that name their class: ``{"_target_": "pkg.Cls", ...}``.

This reads the same ``_target_`` / ``_partial_`` keys as ``hydra.utils.instantiate`` so the config
files in ``configs/`` work unchanged, but lives in ``moe/`` because the library must not import
Hydra (docs/design.md): ``moe.load_model`` rebuilds a model from a checkpoint's ``config.yaml`` with it.
It is not a registry — the dotted path in the config file is the only name a part has. Unlike
Hydra's version it reports a wrong keyword with the allowed ones, and a constructor's refusal
(ValueError, or TypeError for a missing or mistyped argument) comes out as a :class:`ConfigError`
prefixed with the config node the user wrote (``balance.switch_aux: balancer coeff=-1 ...``), also
when a ``_partial_`` part is built later, inside the model.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from moe.config_types import describe, has_type, signature_hints


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


class ConfigError(ValueError):
    """A config value that a part refused, its message prefixed with the config node it came from."""


def _build(target: Any, kwargs: Mapping[str, Any], where: str) -> Any:
    try:
        return target(**kwargs)
    except ConfigError:
        raise  # a nested node already named itself
    except (ValueError, TypeError) as err:
        message = str(err)
        named = message.startswith((f"{where}.", f"{where}:", f"{where}="))
        raise ConfigError(message if named else f"{where}: {message}") from err


class _Bound:
    """A ``_partial_`` node: the target with its config keywords; the caller adds the rest."""

    def __init__(self, target: Any, kwargs: Mapping[str, Any], where: str):
        self.target, self.kwargs, self.where = target, dict(kwargs), where

    def __call__(self, **more: Any) -> Any:
        return _build(self.target, {**self.kwargs, **more}, self.where)

    def __repr__(self) -> str:
        return f"{self.where}: partial {self.target.__qualname__}({self.kwargs})"


def instantiate(spec: Mapping[str, Any], where: str = "config", **extra: Any) -> Any:
    """Call (or, with ``_partial_: true``, bind) ``spec["_target_"]`` with the other keys plus ``extra``.

    Nested mappings with a ``_target_`` are instantiated first. ``where`` names the config node in
    error messages (e.g. ``"router"``).
    """
    if "_target_" not in spec:
        raise ValueError(f"{where}: missing _target_ (got keys {sorted(spec)})")
    values = {key: value for key, value in spec.items() if key not in ("_target_", "_partial_")}
    built = {key for key, value in values.items() if isinstance(value, Mapping) and "_target_" in value}
    kwargs = {key: instantiate(value, f"{where}.{key}") if key in built else value for key, value in values.items()}
    kwargs.update(extra)
    target = locate(spec["_target_"])
    _check_keywords(target, kwargs, where)
    hints = signature_hints(target)
    for key in values.keys() - built - extra.keys():
        if key in hints and not has_type(values[key], hints[key]):
            raise ConfigError(f"{where}.{key}={values[key]!r} must be {describe(hints[key])}")
    if spec.get("_partial_", False):
        return _Bound(target, kwargs, where)
    return _build(target, kwargs, where)
