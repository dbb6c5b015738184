"""The layer registry: one name, one :class:`LayerType`; duplicates are refused.

Built-in families register on import of :mod:`odespec.layers`; third-party packages register
through the ``odespec.layers`` entry-point group (each entry point names a module or a callable
that calls :func:`register`).
"""

from __future__ import annotations

import difflib
from typing import Iterable, Optional, TypeVar

from odespec.layers.base import LayerType

__all__ = ["register", "get", "names", "all_types", "UnknownLayerError", "did_you_mean"]

_REGISTRY: dict[str, LayerType] = {}
# names that are not layers but can stand in the same place (model lists), for suggestions
RESERVED = ("ode",)

L = TypeVar("L", bound=type)


class UnknownLayerError(KeyError):
    """No layer type of that name; the message carries a did-you-mean."""

    def __init__(self, name: str):
        self.name = name
        self.suggestion = did_you_mean(name, names())
        super().__init__(f"unknown layer {name!r}" + (f"; did you mean {self.suggestion!r}?" if self.suggestion else ""))


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The closest candidate to a misspelt ``name``, or None."""
    found = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def register(cls: L, *, replace: bool = False) -> L:
    """Register a :class:`LayerType` subclass (usable as a decorator). Refuses duplicate names."""
    if not (isinstance(cls, type) and issubclass(cls, LayerType)):
        raise TypeError(f"{cls!r} is not a LayerType subclass")
    name = cls.name
    if name in RESERVED:
        raise ValueError(f"{name!r} is reserved")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a layer named {name!r} is already registered ({type(_REGISTRY[name]).__qualname__})")
    _REGISTRY[name] = cls()
    return cls


def get(name: str) -> LayerType:
    """The layer type called ``name``; raises :class:`UnknownLayerError`."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownLayerError(name) from None


def names() -> list[str]:
    """Registered layer names, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def all_types() -> list[LayerType]:
    """Registered layer types, sorted by name."""
    return [_REGISTRY[n] for n in names()]


_loaded = False
_BUILTIN: frozenset = frozenset()


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from odespec.layers import activation, blocks, conv, dense, norm  # noqa: F401  (register built-ins)

    global _BUILTIN
    _BUILTIN = frozenset(_REGISTRY)
    _load_entry_points()


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="odespec.layers"):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, LayerType):
            register(obj)
        elif callable(obj):
            obj(register)


def plugin_names() -> list[str]:
    """Names registered by third-party entry points (they extend the shipped schema)."""
    return [n for n in names() if n not in _BUILTIN]

