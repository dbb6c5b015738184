"""What every registered spec component shares (layer types, data sources): a name, a
description, an options schema with an optional scalar short form, the normalisation of a
written value into complete options, and the registry with its entry-point plugins; and the one
form the spec schema writes alternatives in (:func:`alternatives`).
Torch-free: the validator uses it."""

from __future__ import annotations

import difflib
from typing import Any, Callable, ClassVar, Generic, Iterable, Mapping, Optional, TypeVar


def branch_types(branch: Mapping[str, Any]) -> frozenset[str]:
    """The JSON types a branch of :func:`alternatives` takes (``integer`` counts as ``number``):
    its ``type``, or the types of its ``enum``/``const`` values."""
    if "type" in branch:
        types = branch["type"] if isinstance(branch["type"], list) else [branch["type"]]
    else:
        values = branch["enum"] if "enum" in branch else [branch["const"]]
        types = [json_type(v) for v in values]
    return frozenset("number" if t == "integer" else t for t in types)


def json_type(value: Any) -> str:
    """The JSON type of a loaded value, integers counted as numbers (as :func:`branch_types`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names: dict[type, str] = {dict: "object", list: "array", str: "string"}
    return names[type(value)]


def alternatives(*branches: Mapping[str, Any], **annotations: Any) -> dict[str, Any]:
    """A value written in one of several forms that differ in JSON type (a name or a mapping with
    options; a short form or the full mapping), as the spec schema writes every such choice:
    ``{"oneOf": [branch, ...], **annotations}`` (``description``, ``default``).

    The branches take disjoint JSON types, so a value matches at most one and the validator's
    messages follow the one the value's type selects (:mod:`odespec.spec.messages`): one error per
    mistake, at the form the user wrote. ``oneOf`` rather than ``if/then/else`` because editors
    (yaml-language-server) complete values only from ``anyOf``/``oneOf`` branches: behind
    ``if: {type: string}`` an empty ``solver:`` offered no method names. ``oneOf`` rather than
    ``anyOf`` because that server then reports the error of the branch of the value's type.
    A branch of names (``enum``, ``const``) has no ``type``: that server would report a value of
    another type twice.
    """
    seen: set[str] = set()
    for branch in branches:
        types = branch_types(branch)
        if types & seen:
            raise ValueError(f"alternatives must take disjoint JSON types; {sorted(types & seen)} is taken twice")
        seen |= types
    return {"oneOf": [dict(b) for b in branches], **annotations}


class OptionsComponent:
    """A component written in specs as ``name``, ``{name: short_value}`` or ``{name: {options}}``."""

    #: the name used in specs
    name: ClassVar[str]
    #: one-line description, shown in the schema and the README
    description: ClassVar[str]
    #: JSON-Schema properties of the options object (each with description and default)
    properties: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: option names without a default
    required: ClassVar[tuple[str, ...]] = ()
    #: the option a scalar short form fills (``- linear: 50`` means ``features: 50``)
    shorthand: ClassVar[Optional[str]] = None
    #: schema of the short form's value; defaults to the shorthand option's own schema
    shorthand_schema: ClassVar[Optional[Mapping[str, Any]]] = None

    @classmethod
    def options_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the component's value in ``{name: value}`` form; its description
        is the component's, which editors show beside the name."""
        full: dict[str, Any] = {
            "type": "object",
            "description": cls.description,
            "properties": {k: dict(v) for k, v in cls.properties.items()},
            "additionalProperties": False,
        }
        if cls.required:
            full["required"] = list(cls.required)
        if cls.shorthand is None:
            if cls.required:
                return full
            # a component without required options may also be written `name:` (null value)
            return alternatives(full, {"type": "null", "description": "No options: the defaults."},
                                description=cls.description)
        short = dict(cls.shorthand_schema or cls.properties[cls.shorthand])
        short.setdefault("description", f"short for {{{cls.shorthand}: VALUE}}")
        return alternatives(full, short, description=cls.description)

    @classmethod
    def bare_allowed(cls) -> bool:
        """Whether the component can be written as a bare name."""
        return not cls.required

    @classmethod
    def normalize(cls, value: Any) -> dict[str, Any]:
        """Turn a schema-valid value (object, short form or null) into complete options."""
        if isinstance(value, dict):
            given = dict(value)
        elif value is None:
            given = {}
        else:
            assert cls.shorthand is not None
            given = {cls.shorthand: value}
        # an option without a default is None until given ("unset: odespec chooses")
        options = {k: spec.get("default") for k, spec in cls.properties.items()}
        options.update(given)
        return options


def did_you_mean(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The closest candidate to a misspelt ``name``, or None."""
    found = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


C = TypeVar("C", bound=OptionsComponent)
#: a component class being registered
K = TypeVar("K", bound=type)


class ComponentRegistry(Generic[C]):
    """One name, one instance of a component class (layer types, data sources); duplicates are
    refused. The built-ins register themselves when ``load_builtins`` imports their modules, on
    first use; then every entry point of ``group`` (a component class, or a callable given
    :meth:`register`) adds the third-party ones, which :meth:`plugin_names` lists."""

    def __init__(self, kind: str, base: type[C], group: str, load_builtins: Callable[[], None],
                 unknown: Callable[[str], KeyError], reserved: tuple[str, ...] = ()):
        self.kind = kind
        self.base = base
        self.group = group
        self.load_builtins = load_builtins
        self.unknown = unknown
        self.reserved = reserved
        self._items: dict[str, C] = {}
        self._loaded = False
        self._builtin: frozenset = frozenset()

    def register(self, cls: K) -> K:
        """Register a component class (usable as a decorator); refuses a name already taken, as
        every odespec registry does."""
        component: type = cls  # narrowed below to the base's subclasses; cls keeps its own type
        if not (isinstance(component, type) and issubclass(component, self.base)):
            raise TypeError(f"{cls!r} is not a {self.base.__name__} subclass")
        name = component.name
        if name in self.reserved:
            raise ValueError(f"{name!r} is reserved")
        if name in self._items:
            raise ValueError(f"a {self.kind} named {name!r} is already registered "
                             f"({type(self._items[name]).__qualname__})")
        self._items[name] = component()
        return cls

    def get(self, name: str) -> C:
        """The component called ``name``; raises the registry's unknown-name error (a KeyError
        with a did-you-mean)."""
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            raise self.unknown(name) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._ensure_loaded()
        return sorted(self._items)

    def all(self) -> list[C]:
        """Registered components, sorted by name."""
        return [self._items[n] for n in self.names()]

    def plugin_names(self) -> list[str]:
        """Names registered by third-party entry points (they extend the shipped schema)."""
        return [n for n in self.names() if n not in self._builtin]

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the built-in modules may look names up while importing
        self.load_builtins()
        self._builtin = frozenset(self._items)
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, self.base):
                self.register(obj)
            elif callable(obj):
                obj(self.register)
