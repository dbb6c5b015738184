"""What every registered spec component shares (layer types, data sources): a name, a
description, an options schema with an optional scalar short form, and the normalisation of a
written value into complete options. Torch-free: the validator uses it."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional


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
        """The JSON Schema of the component's value in ``{name: value}`` form."""
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
            return {"if": {"type": "object"}, "then": full, "else": {"type": "null"}}
        short = dict(cls.shorthand_schema or cls.properties[cls.shorthand])
        short.setdefault("description", f"short for {{{cls.shorthand}: VALUE}}")
        return {"if": {"type": "object"}, "then": full, "else": short}

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
        options = {k: spec["default"] for k, spec in cls.properties.items() if "default" in spec}
        options.update(given)
        return options
