"""Type checks of config values against the annotations of what they configure, at build time.

A YAML or command-line value of the wrong type (``router.top_k=2.5``, ``optim.lr=abc``) would
otherwise surface from deep inside torch once training has started. ``has_type`` answers for the
annotations config-facing signatures use (``int``, ``float``, ``bool``, ``str``, ``None``,
``Literal`` choices, unions, ``tuple``/``list``/``Sequence`` of them, ``Mapping``); anything else (a
module, a callable) is not a value a config file can hold and is accepted as is. An int is a valid
float; a bool is not a number.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any

_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
_SEQUENCES = (tuple, list, collections.abc.Sequence)


def has_type(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float):
        return isinstance(value, int if hint is int else (int, float)) and not isinstance(value, bool)
    if hint in (str, type(None)):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        return any(has_type(value, arg) for arg in args)
    if origin in _SEQUENCES:  # YAML gives lists for tuples
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(has_type(item, arg) for item, arg in zip(value, args))
        return all(has_type(item, args[0]) for item in value) if args else True
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, collections.abc.Mapping)
    return True  # not a type a config value can take (a module, a callable): nothing to check


def describe(hint: Any) -> str:
    """``hint`` in words, for messages: "an integer", "a number or a string", "a list of 2 numbers"."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return f"one of {args}"
    if origin in _SEQUENCES and args:
        item = describe(args[0]).removeprefix("a ").removeprefix("an ")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} {item}s"
        return f"a list of {item}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    return str(hint)


def signature_hints(target: Any) -> dict[str, Any]:
    """The resolved annotations of a class's ``__init__`` or a function; {} when they cannot be resolved."""
    function = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation naming something only imported for type checkers: skip the check
        return {}
