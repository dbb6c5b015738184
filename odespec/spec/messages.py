"""Turn JSON-Schema validation errors into the messages users read.

jsonschema's own messages are written for schema authors ("Additional properties are not
allowed ('solvr' was unexpected)"); users of a spec need the place, what was expected and how to
fix it ("unknown key 'solvr'" + "did you mean 'solver'?"). One function per keyword.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, Iterator, Optional

from odespec.components import branch_types, json_type
from odespec.errors import SpecIssue
from odespec.spec.load import LoadedDocument, format_path
from odespec.solvers import tableaus
from odespec.spec.schema import FIXED_STEP_NAMES, NAMES_KEY

_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "nothing (null)",
}
_YAML11_BOOLS = {"yes", "no", "on", "off", "y", "n"}


def _type_words(json_type: str) -> str:
    """A JSON type in words ("a mapping")."""
    return _TYPE_WORDS.get(json_type, json_type)
#: text that a reader takes for a number, digit separators included ('1_000', '-2.5e3')
_NUMBER_TEXT = re.compile(r"[-+]?[0-9][0-9_]*(\.[0-9_]*)?([eE][-+]?[0-9]+)?")


def describe(value: Any) -> str:
    """A short, YAML-flavoured rendering of a value for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    return type(value).__name__


def _method_hint(name: str) -> Optional[str]:
    """An ``odeint`` alias names its method; a torchdiffeq method that is no Runge-Kutta method
    names the ones to use instead."""
    from odespec.solvers import tableaus

    why = tableaus.not_runge_kutta(name)
    if why is not None:
        return why
    try:
        canonical = tableaus.get_tableau(name).name
    except KeyError:
        return None
    return f"{name!r} is odeint's alias of {canonical!r}; specs name a method by its canonical name: write {canonical}"


def suggestion(name: Any, candidates: Iterable[str]) -> Optional[str]:
    """A did-you-mean hint naming the one or two closest candidates, or None.

    Two when they are equally close ('dopri' -> 'dopri5' or 'dopri8'): picking one at random
    would mislead.
    """
    cands = sorted(set(candidates))
    found = difflib.get_close_matches(str(name), cands, n=3, cutoff=0.6)
    if not found:
        return None
    ratio = lambda c: difflib.SequenceMatcher(None, str(name), c).ratio()  # noqa: E731
    best = sorted(c for c in found if ratio(c) == ratio(found[0]))[:2]
    return "did you mean " + " or ".join(repr(c) for c in best) + "?"


def _choices(names: Iterable[Any], limit: int = 12) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _type_hint(expected: list[str], instance: Any) -> Optional[str]:
    """Hints for the values people actually write wrongly, YAML 1.1 habits first."""
    if isinstance(instance, str):
        low = instance.strip().lower()
        if "boolean" in expected and low in _YAML11_BOOLS:
            return f"write true or false; YAML 1.1 words such as {instance!r} are read as text here"
        if ("integer" in expected or "number" in expected) and _NUMBER_TEXT.fullmatch(low) and "_" in low:
            return f"numbers are written without underscores: {instance.replace('_', '')}"
        try:
            float(instance)
        except ValueError:
            pass
        else:
            if "integer" in expected or "number" in expected:
                return "remove the quotes to write a number"
    if isinstance(instance, float) and "integer" in expected and instance.is_integer():
        return f"write {int(instance)} (no decimal point)"
    return None


def _selected_branch(branches: list[dict], instance: Any) -> Optional[int]:
    """The branch of an alternatives schema (:func:`odespec.components.alternatives`) that the
    value's JSON type selects; None: no branch takes the value's type. A string that reads as a
    number selects no branch of names: ``steps: 1_000`` is a mis-written integer, not a misspelt
    ``auto``."""
    kind = json_type(instance)
    numeric = kind == "string" and _NUMBER_TEXT.fullmatch(instance.strip()) is not None
    for i, b in enumerate(branches):
        if kind in branch_types(b) and not (numeric and "type" not in b):
            return i
    return None


def _form_words(b: dict) -> str:
    """A branch of an alternatives schema in words: 'a solver method name', "'auto'", 'a mapping'."""
    if b.get(NAMES_KEY):
        return f"a mapping {{{b[NAMES_KEY]}: options}}" if b.get("type") == "object" else f"a {b[NAMES_KEY]} name"
    if "const" in b:
        return describe(b["const"])
    if "enum" in b:
        return " or ".join(describe(v) for v in b["enum"])
    types = b["type"] if isinstance(b["type"], list) else [b["type"]]
    return " or ".join(_type_words(t) for t in types)


class _Formatter:
    def __init__(self, doc: LoadedDocument):
        self.doc = doc

    def issue(self, path: tuple, message: str, hint: Optional[str] = None, *, key: bool = False) -> SpecIssue:
        mark = self.doc.key_mark(path) if key else self.doc.mark(path)
        return SpecIssue(self.doc.filename, mark.line, mark.column, format_path(path), message, hint)

    def convert(self, error: Any) -> Iterator[SpecIssue]:
        path = tuple(error.absolute_path)
        handler = getattr(self, "on_" + error.validator, None)
        if handler is not None:
            yield from handler(error, path)
        else:  # pragma: no cover - every keyword the schema uses has a handler (tested)
            yield self.issue(path, error.message)

    # one handler per JSON-Schema keyword -------------------------------------------------------
    def on_type(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        expected = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        words = " or ".join(_type_words(t) for t in expected)
        hint = _type_hint(expected, e.instance) or e.schema.get("description")
        if path == ():
            hint = "a spec is a mapping of keys to values that starts with `odespec: 1`"
        yield self.issue(path, f"expected {words}, got {describe(e.instance)}", hint)

    def on_enum(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        kind = e.schema.get(NAMES_KEY)
        options = e.validator_value
        if kind:
            if kind == "layer":
                from odespec.layers import registry

                if e.instance in registry.names() and e.instance not in options and registry.get(e.instance).bare_allowed():
                    # a layer written alone that this list does not take: the dynamics' rule
                    yield from self._not_in_dynamics(e.instance, path)
                    return
                if e.instance in registry.names() or e.instance == "ode":
                    yield self.issue(path, *self._needs_options(e.instance))
                    return
            if kind == FIXED_STEP_NAMES and isinstance(e.instance, str) and e.instance in tableaus.spec_method_names():
                yield self.issue(path, f"{e.instance!r} is adaptive; an exported graph is fixed-step",
                                 f"use one of: {', '.join(options)}")
                return
            if not isinstance(e.instance, str):
                yield self.issue(path, f"expected a {kind} name, got {describe(e.instance)}", f"one of: {_choices(options)}")
                return
            yield from self._unknown_name(kind, e.instance, options, path)
            return
        guess = suggestion(e.instance, [str(o) for o in options]) if isinstance(e.instance, str) else None
        hint = guess or e.schema.get("description")
        yield self.issue(path, f"{describe(e.instance)} is not one of: {_choices(describe(o) for o in options)}", hint)

    def _unknown_name(self, kind: str, name: str, known: list, path: tuple, *, key: bool = False) -> Iterator[SpecIssue]:
        """An unknown name of a registry (``kind``: layer, data source, ...), written as a value
        or (``key``) as the key of a one-key mapping at ``path``."""
        where = path + (name,) if key else path
        hint = (_method_hint(name) if kind == "solver method" else None) \
            or suggestion(name, known) or f"known {kind}s: {_choices(known)}"
        yield self.issue(where, f"unknown {kind} {name!r}", hint, key=key)

    def _not_in_dynamics(self, name: str, where: tuple, *, key: bool = False) -> Iterator[SpecIssue]:
        """A layer type that may not be in dynamics (:attr:`~odespec.layers.LayerType.not_in_dynamics`,
        a rule the schema keeps: the dynamics' list does not take the name), written there."""
        from odespec.layers import registry

        yield self.issue(where, f"layer {name!r} is not allowed inside an ODE block's dynamics",
                         registry.get(name).not_in_dynamics, key=key)

    def on_oneOf(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        """Alternatives: the errors of the form the value's type selects, or, a value of none of
        the forms' types, one message naming them all."""
        branches = e.validator_value
        chosen = _selected_branch(branches, e.instance)
        if chosen is None:
            forms = " or ".join(_form_words(b) for b in branches)
            types = [b["type"] for b in branches if isinstance(b.get("type"), str)]
            hint = _type_hint(types, e.instance) or e.schema.get("description")
            yield self.issue(path, f"expected {forms}, got {describe(e.instance)}", hint)
            return
        for sub in e.context:
            if sub.relative_schema_path[0] == chosen:
                yield from self.convert(sub)

    @staticmethod
    def _needs_options(name: str) -> tuple[str, str]:
        if name == "ode":
            return ("an ODE block needs its settings", "write `- ode: {dynamics: {layers: [...]}}`")
        from odespec.layers import registry

        t = registry.get(name)
        need = ", ".join(t.required)
        if t.shorthand:
            return (f"layer {name!r} needs options ({need})", f"write `- {name}: VALUE` (short for {{{t.shorthand}: VALUE}})")
        return (f"layer {name!r} needs options ({need})", f"write `- {name}: {{{need}: ...}}`")

    def on_const(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        hint = e.schema.get("description")
        if path == ("odespec",):
            hint = f"this version of odespec reads spec format {e.validator_value}; start the file with `odespec: {e.validator_value}`"
        yield self.issue(path, f"expected {describe(e.validator_value)}, got {describe(e.instance)}", hint)

    def on_required(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        props = e.schema.get("properties", {})
        for name in e.validator_value:
            if isinstance(e.instance, dict) and name not in e.instance:
                desc = props.get(name, {}).get("description")
                yield self.issue(path, f"missing required key {name!r}", desc)

    def on_additionalProperties(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        allowed = list(e.schema.get("properties", {}))
        kind = e.schema.get(NAMES_KEY)
        for key in e.instance:
            if key in allowed:
                continue
            if kind:  # a mapping {name: options}: the key is a name of that registry
                yield from self._unknown_name_key(kind, key, sorted(allowed), path)
                continue
            hint = suggestion(key, allowed) or f"allowed keys: {_choices(allowed)}"
            yield self.issue(path + (key,), f"unknown key {key!r}", hint, key=True)

    def _unknown_name_key(self, kind: str, key: str, known: list[str], path: tuple) -> Iterator[SpecIssue]:
        """A key of a ``{name: options}`` mapping at ``path`` that the mapping does not take."""
        if kind == "layer":
            from odespec.layers import registry

            if key == "ode":
                yield self.issue(path + (key,), "an ODE block cannot be nested inside dynamics",
                                 "put ODE blocks one after another in the model list", key=True)
                return
            if key in registry.names():  # registered, yet not taken by this list: the dynamics' rule
                yield from self._not_in_dynamics(key, path + (key,), key=True)
                return
        yield from self._unknown_name(kind, key, known, path, key=True)

    def on_maxProperties(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        keys = ", ".join(repr(k) for k in e.instance)
        yield self.issue(
            path,
            f"a layer is a mapping with one key, {{name: options}}; this one has {len(e.instance)}: {keys}",
            "indent the options under the layer name, or start each layer with its own '-'",
        )

    def on_minProperties(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield self.issue(path, "an empty mapping is not a layer", "write the layer's name, e.g. `- relu` or `- linear: 64`")

    def on_minItems(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        n = e.validator_value
        yield self.issue(path, f"needs at least {n} item{'s' if n != 1 else ''}, got {len(e.instance)}", e.schema.get("description"))

    def on_maxItems(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        n = e.validator_value
        yield self.issue(path, f"at most {n} items allowed, got {len(e.instance)}", e.schema.get("description"))

    def _bound(self, e: Any, path: tuple, op: str) -> Iterator[SpecIssue]:
        yield self.issue(path, f"{describe(e.instance)} is not {op} {e.validator_value!r}", e.schema.get("description"))

    def on_minimum(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield from self._bound(e, path, ">=")

    def on_maximum(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield from self._bound(e, path, "<=")

    def on_exclusiveMinimum(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield from self._bound(e, path, ">")

    def on_exclusiveMaximum(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield from self._bound(e, path, "<")

    def on_pattern(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield self.issue(path, f"{describe(e.instance)} is not allowed here", e.schema.get("description"))

    def on_maxLength(self, e: Any, path: tuple) -> Iterator[SpecIssue]:
        yield self.issue(path, f"text longer than {e.validator_value} characters", e.schema.get("description"))


def schema_issues(doc: LoadedDocument, errors: Iterable[Any]) -> list[SpecIssue]:
    """SpecIssues for jsonschema errors, deduplicated, in document order.

    A "missing required key 'model'" is dropped when the same mapping has an unknown key
    'modle' whose hint already says "did you mean 'model'?": one typo, one message.
    """
    fmt = _Formatter(doc)
    seen: set[tuple] = set()
    out: list[SpecIssue] = []
    for error in errors:
        for issue in fmt.convert(error):
            key = (issue.line, issue.column, issue.path, issue.message)
            if key not in seen:
                seen.add(key)
                out.append(issue)
    misspelt = {
        (i.path.rpartition(".")[0] if "." in i.path else "", h)
        for i in out
        if i.message.startswith("unknown key ") and i.hint
        for h in re.findall(r"'([^']+)'", i.hint.partition("did you mean")[2])
    }
    # a value of the wrong type breaks every other rule about it too (`seed: .inf` is not an
    # integer, and so not <= the maximum either): the type is the one mistake to report
    mistyped = {i.path for i in out if i.message.startswith("expected ")}
    return [
        i for i in out
        if not (i.message.startswith("missing required key ")
                and (i.path, i.message[len("missing required key "):].strip("'")) in misspelt)
        and not (i.path in mistyped and not i.message.startswith("expected "))
    ]
