"""Load a YAML spec into plain Python data, remembering where every node was written.

This is the compiler's first stage, so it is strict and cheap: it imports no torch, refuses input
over :data:`MAX_BYTES`, and reports every problem as a :class:`~odespec.errors.SpecError` with a
line and column; no ``yaml.YAMLError``, ``RecursionError`` or ``UnicodeDecodeError`` escapes.

PyYAML is used only for its event stream (its pure-Python parser, so messages and columns do not
depend on whether libyaml is installed); nodes and data are built here, because PyYAML's loaders

* implement YAML 1.1, where ``1e-3`` is a *string* and ``on``/``no`` are booleans. Specs use the
  **YAML 1.2 core schema** (:func:`_resolve_plain`): ``null``/``Null``/``NULL``/``~``/empty are
  None; only ``true``/``false`` (also ``True``, ``TRUE`` ...) are booleans, so ``on``, ``yes``,
  ``n`` stay strings and the schema complains where it wants a bool rather than converting them
  silently; integers are ``[-+]?[0-9]+``, ``0o17``, ``0x1F`` -- so ``0755`` is the *decimal* 755
  (1.2 has no leading-zero octal) and ``1_000`` is *not* a number (1.2 core has no digit
  separators: it stays the string ``"1_000"`` and the schema reports "not an integer"); floats
  include ``1e-3``, ``1E5``, ``.5``, ``+2.0``, ``.inf``, ``-.inf``, ``.nan``. Timestamps are not
  converted; quoted and block scalars are always strings. Mapping keys are always the string of
  their source text (``on:`` is the key ``"on"``, ``1:`` the key ``"1"``).
* compose recursively (a deep ``[[[[...`` raises RecursionError), silently keep the last of
  duplicate keys, and expand aliases without bound (billion laughs). Composing from events with
  an explicit stack stops at :data:`MAX_DEPTH`, and every node knows its alias-expanded size
  before any data is built, so a bomb is refused in microseconds.

Positions inside an alias's expansion point at the anchored text; the alias itself is placed
where it is written. A trailing bare ``---`` (an empty second document) is tolerated.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Union

import yaml

from odespec.errors import SpecError, SpecIssue

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Mark", "Path", "LoadedDocument",
           "load_text", "load_file", "format_path"]

MAX_BYTES = 1_048_576  #: larger inputs are refused before parsing
MAX_DEPTH = 64  #: most collections nested inside one another (the root collection is level 1)
MAX_NODES = 100_000  #: most nodes (keys included) the data may have once aliases are expanded

Path = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Mark:
    """1-based line and column (counted in characters) where a node starts in the source."""

    line: int
    column: int


@dataclass(frozen=True)
class LoadedDocument:
    """A parsed spec: plain ``data`` plus the source position of every path in it."""

    data: Any
    filename: str
    sha256: str
    positions: Mapping[Path, Mark]
    key_positions: Mapping[Path, Mark]

    def mark(self, path: Path) -> Mark:
        """Where ``path``'s value starts, else where its nearest existing ancestor starts.

        Never raises, so a validator can point at the mapping that *lacks* a required key.
        """
        for end in range(len(path), -1, -1):
            found = self.positions.get(tuple(path[:end]))
            if found is not None:
                return found
        return Mark(0, 0)

    def key_mark(self, path: Path) -> Mark:
        """Where the key of the mapping entry ``path`` is written, else :meth:`mark`."""
        return self.key_positions.get(tuple(path)) or self.mark(path)


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def format_path(path: Path) -> str:
    """Render a path as ``model[3].ode.solver``; keys that are not identifiers become ``["a b"]``."""
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif _IDENT.fullmatch(part):
            out.append(f".{part}" if out else part)
        else:
            out.append('["' + part.replace("\\", "\\\\").replace('"', '\\"') + '"]')
    return "".join(out)


# --- YAML 1.2 core schema --------------------------------------------------------------------------
# ASCII classes and fullmatch on purpose: int()/float() alone would accept "1_0", " 1" and "١".
_NULL = {"", "~", "null", "Null", "NULL"}
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_SPECIAL = {sign + s: float(sign + "inf") for sign in ("", "+", "-") for s in (".inf", ".Inf", ".INF")}
_SPECIAL.update({s: float("nan") for s in (".nan", ".NaN", ".NAN")})
_NOT_PARSED = object()


def _int(text: str) -> Any:
    """The core-schema integer ``text`` denotes, else ``_NOT_PARSED``. ValueError past 4300 digits."""
    if not _INT.fullmatch(text):
        return _NOT_PARSED
    return int(text[2:], 8 if text[1] == "o" else 16) if text[1:2] in ("o", "x") else int(text, 10)


def _float(text: str) -> Any:
    """The core-schema float ``text`` denotes (an int too, as ``!!float 1`` needs), else ``_NOT_PARSED``."""
    if _FLOAT.fullmatch(text):
        return float(text)
    if text in _SPECIAL:
        return _SPECIAL[text]
    value = _int(text)
    return value if value is _NOT_PARSED else float(value)


def _resolve_plain(text: str) -> Any:
    """Resolve an untagged plain scalar by the YAML 1.2 core schema; anything else is a string."""
    if text in _NULL:
        return None
    if text in _BOOL:
        return _BOOL[text]
    value = _int(text)
    if value is _NOT_PARSED:
        value = _float(text)
    return text if value is _NOT_PARSED else value


_CORE = "tag:yaml.org,2002:"
_MAP, _SEQ = _CORE + "map", _CORE + "seq"
_SCALAR_TAGS = {  # explicit core tags on scalars: how to convert the text
    _CORE + "str": lambda t: t,
    _CORE + "int": _int,
    _CORE + "float": _float,
    _CORE + "bool": lambda t: _BOOL.get(t, _NOT_PARSED),
    _CORE + "null": lambda t: None if t in _NULL else _NOT_PARSED,
}
_NO_TAGS = "odespec specs use plain YAML; tags are not supported"


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


# --- errors and positions ----------------------------------------------------------------------------
class _Fail(Exception):
    """Internal: one fatal problem, as SpecIssue fields after ``file``."""

    def __init__(self, line: int, column: int, message: str, hint: Optional[str], path: Path = ()):
        super().__init__(message)
        self.fields = (line, column, format_path(path), message, hint)


def _fail_at(mark: Any, message: str, hint: Optional[str], path: Path = ()) -> _Fail:
    """A _Fail at a 0-based PyYAML mark."""
    return _Fail(mark.line + 1, mark.column + 1, message, hint, path)


# PyYAML's reader counts these as line breaks; count the same way so our lines agree with its.
_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
# Exactly what PyYAML's reader refuses; it would only report a character offset, not a line.
_NON_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def _line_col(text: str, index: int) -> tuple[int, int]:
    line, start = 1, 0
    for m in _BREAK.finditer(text, 0, index):
        line, start = line + 1, m.end()
    return line, index - start + 1


def _decode(raw: bytes) -> str:
    """UTF-8 (a BOM is dropped) to text, or a _Fail at the first bad byte."""
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # everything before the first bad byte is valid
        line, col = _line_col(before, len(before))
        raise _Fail(line, col, f"the file is not valid UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, "
                    f"column {col}", "save the file as UTF-8") from None


_PARSE_HINTS = (  # (substring of PyYAML's problem text, hint)
    ("'\\t'", "indent with spaces, not tabs"),
    ("mapping values are not allowed", "quote values that contain ': ', and check the indentation"),
    ("could not find expected ':'", "write mapping entries as `key: value`; check quotes and indentation"),
    ("expected <block end>", "check the indentation: the entries of one block must line up"),
    ("end of stream", "a quoted string or a [...] / {...} collection is not closed"),
    ("expected ',' or", "a [...] / {...} collection is not closed, or lacks a comma"),
    ("expected '<document start>'", "a spec is one document: remove what follows the `...` line"),
)


def _parse_failure(exc: yaml.YAMLError) -> _Fail:
    problem = getattr(exc, "problem", None) or str(exc)
    pmark, cmark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    message = f"could not parse YAML: {problem}"
    context = getattr(exc, "context", None)
    if context and cmark and (not pmark or (cmark.line, cmark.column) != (pmark.line, pmark.column)):
        message += f" ({context} started at line {cmark.line + 1}, column {cmark.column + 1})"
    hint = next((h for key, h in _PARSE_HINTS if key in problem), "check the YAML syntax here")
    mark = pmark or cmark
    return _fail_at(mark, message, hint) if mark else _Fail(0, 0, message, hint)


# --- composing a node graph from events (an explicit stack: no recursion) ----------------------------
class _Node:
    """``kind``: "s"calar, "q" (sequence), "m"apping (children flattened as ``[k, v, k, v, ...]``) or
    "a"lias (``target``). ``size`` counts nodes once aliases are expanded, saturated at
    MAX_NODES + 1 so that a bomb's size stays a small int."""

    __slots__ = ("kind", "mark", "tag", "value", "style", "children", "target", "size", "open")

    def __init__(self, kind: str, mark: Any, tag: Optional[str] = None):
        self.kind, self.mark, self.tag = kind, mark, tag
        self.value: str = ""
        self.style: Optional[str] = None
        self.children: list[_Node] = []
        self.target: Optional[_Node] = None
        self.size, self.open = 1, kind in "qm"


def _compose(text: str) -> Optional[_Node]:
    """Compose the one document of ``text``; None when the stream has no document at all."""
    loader = yaml.SafeLoader(text)  # only its scanner and parser run
    root: Optional[_Node] = None
    stack: list[_Node] = []
    anchors: dict[str, _Node] = {}
    documents, count, extra = 0, 0, None
    try:
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, yaml.DocumentStartEvent):
                documents += 1
                extra = ev.start_mark if documents > 1 else None
                continue
            if not isinstance(ev, (yaml.NodeEvent, yaml.CollectionEndEvent)):
                continue
            if extra is not None:
                if (isinstance(ev, yaml.ScalarEvent) and ev.value == "" and ev.style is None
                        and ev.tag is None and ev.anchor is None):
                    continue  # an empty document (a trailing bare `---`) is harmless
                raise _fail_at(extra, "a second YAML document starts here; a spec is one document",
                               "remove the `---` and everything after it, or move it to another file")
            if isinstance(ev, yaml.CollectionEndEvent):
                node = stack.pop()
                node.open = False  # from now on an alias may refer to it
                node.size = min(1 + sum(c.size for c in node.children), MAX_NODES + 1)
                continue
            if isinstance(ev, yaml.AliasEvent):
                target = anchors.get(ev.anchor) if ev.anchor is not None else None
                if target is None:
                    raise _fail_at(ev.start_mark, f"undefined alias '*{ev.anchor}'",
                                   f"define the anchor (&{ev.anchor}) before this alias")
                if target.open:
                    raise _fail_at(ev.start_mark, f"the alias '*{ev.anchor}' is inside the node it refers "
                                   "to (recursive alias)", "an alias cannot refer to one of its ancestors")
                node = _Node("a", ev.start_mark)
                node.target, node.size = target, target.size
            else:
                if ev.anchor in anchors:
                    first = anchors[ev.anchor].mark
                    raise _fail_at(ev.start_mark, f"duplicate anchor '&{ev.anchor}'", "first defined at line "
                                   f"{first.line + 1}, column {first.column + 1}; give each anchor its own name")
                if isinstance(ev, yaml.ScalarEvent):
                    node = _Node("s", ev.start_mark, ev.tag)
                    node.value, node.style = ev.value, ev.style
                else:
                    assert isinstance(ev, yaml.CollectionStartEvent)  # the node events left
                    node = _Node("q" if isinstance(ev, yaml.SequenceStartEvent) else "m", ev.start_mark, ev.tag)
                if ev.anchor is not None:
                    anchors[ev.anchor] = node
            # Attach at the start event, so that a collection precedes its children.
            if stack:
                stack[-1].children.append(node)
            else:
                root = node
            # Every written node is in the data at least once, so this bounds the parse time of a
            # big flat file (pure Python: ~25 µs a node) far below what MAX_BYTES alone would.
            count += 1
            if count > MAX_NODES or (node.open and len(stack) >= MAX_DEPTH):
                path = tuple(_child_part(f, len(f.children) - 1) for f in stack)
                if count > MAX_NODES:
                    raise _fail_at(ev.start_mark, f"the document has more than {MAX_NODES} nodes",
                                   "split the spec into smaller files", path)
                raise _fail_at(ev.start_mark, f"nesting is deeper than {MAX_DEPTH} levels",
                               "flatten the structure", path)
            if node.open:
                stack.append(node)
    except yaml.YAMLError as exc:
        raise _parse_failure(exc) from None
    finally:
        loader.dispose()
    return root


def _deref(node: _Node) -> _Node:
    return node.target if node.target is not None else node


def _child_part(node: _Node, index: int) -> Union[str, int]:
    """The path element of ``node.children[index]`` (a mapping's key and value share one)."""
    if node.kind == "q":
        return index
    key = _deref(node.children[index - index % 2])
    return key.value if key.kind == "s" else "?"


def _too_many(root: _Node) -> _Fail:
    """Where the alias-expanded node count crosses MAX_NODES: walk down into the child that
    overflows the remaining budget, and blame the outermost alias on the way (the user's text)."""
    remaining, node, alias = MAX_NODES, root, None
    path: tuple[Union[str, int], ...] = ()
    while True:
        if node.target is not None:
            alias, node = alias or node.mark, node.target
            continue
        remaining -= 1
        if remaining < 0 or node.kind == "s":
            break
        for i, child in enumerate(node.children):
            if child.size > remaining:
                path, node = path + (_child_part(node, i),), child
                break
            remaining -= child.size
    return _fail_at(alias or node.mark, f"the document expands to more than {MAX_NODES} nodes (alias bomb?)",
                    "each alias (*name) copies the whole anchored value; use fewer or smaller aliases", path)


# --- building plain data -------------------------------------------------------------------------------
class _Builder:
    """Turns the node graph into plain data and positions; collects the problems that do not stop it."""

    def __init__(self) -> None:
        self.positions: dict[Path, Mark] = {}
        self.key_positions: dict[Path, Mark] = {}
        self.issues: dict[tuple, tuple] = {}  # keyed by place and message: aliases revisit nodes

    def issue(self, mark: Any, message: str, hint: Optional[str], path: Path) -> None:
        fields = (mark.line + 1, mark.column + 1, format_path(path), message, hint)
        self.issues.setdefault((mark.line, mark.column, message), fields)

    def build(self, node: _Node, path: Path, level: int, via: Any) -> Any:
        """``level``: collections around ``node``; ``via``: the mark of the innermost alias passed."""
        self.positions[path] = Mark(node.mark.line + 1, node.mark.column + 1)
        if node.target is not None:
            via, node = node.mark, node.target
        if node.kind == "s":
            return self.scalar(node, path)
        if level >= MAX_DEPTH:  # only reachable through aliases: the composer caps written depth
            raise _fail_at(via or node.mark, f"nesting is deeper than {MAX_DEPTH} levels",
                           "flatten the structure", path)
        if node.tag is not None and node.tag != (_SEQ if node.kind == "q" else _MAP):
            self.bad_tag(node, "a sequence" if node.kind == "q" else "a mapping", path)
        if node.kind == "q":
            return [self.build(c, path + (i,), level + 1, via) for i, c in enumerate(node.children)]
        result: dict[str, Any] = {}
        first: dict[str, Any] = {}
        for i in range(0, len(node.children), 2):
            at, key = node.children[i].mark, _deref(node.children[i])
            if key.kind != "s":
                kind = "sequence" if key.kind == "q" else "mapping"
                self.issue(at, f"a mapping key must be a string, not a {kind}", "write the key as plain text", path)
                continue
            entry = path + (key.value,)
            if key.tag is not None:
                self.scalar(key, entry)  # only to check the tag: a key is its source text
            if key.value == "<<" and key.style is None:
                self.issue(at, "merge keys (<<) are not supported",
                           "write the keys out in full, or use an alias (*name) for the whole value", path)
            elif key.value in first:
                line, col = first[key.value].line + 1, first[key.value].column + 1
                self.issue(at, f"duplicate key '{key.value}'",
                           f"first defined at line {line}, column {col}; remove one of them", entry)
            else:
                first[key.value] = at
                self.key_positions[entry] = Mark(at.line + 1, at.column + 1)
                result[key.value] = self.build(node.children[i + 1], entry, level + 1, via)
        return result

    def bad_tag(self, node: _Node, kind: str, path: Path) -> None:
        name = _tag_name(node.tag or "")
        if node.tag in _SCALAR_TAGS or node.tag in (_MAP, _SEQ):
            self.issue(node.mark, f"the tag {name} does not fit {kind}", "remove the tag", path)
        else:
            self.issue(node.mark, f"the tag {name} is not allowed", _NO_TAGS, path)

    def scalar(self, node: _Node, path: Path) -> Any:
        if node.tag is None and node.style is not None:
            return node.value  # quoted or block: always a string
        convert = _resolve_plain if node.tag is None else _SCALAR_TAGS.get(node.tag)
        if convert is None:
            self.bad_tag(node, "a scalar", path)
            return node.value
        try:
            value = convert(node.value)
        except ValueError:  # int() refuses more than 4300 digits
            self.issue(node.mark, f"the number has {len(node.value)} digits; that is too long",
                       "write it as a float, or quote it", path)
            return node.value
        if value is _NOT_PARSED:
            self.issue(node.mark, f"'{node.value}' is not a valid {_tag_name(node.tag or '')}",
                       "remove the tag, or write a value of that type", path)
            return node.value
        return value


# --- entry points ----------------------------------------------------------------------------------------
def load_text(source: Union[bytes, str], filename: str = "<string>") -> LoadedDocument:
    """Parse one spec document from UTF-8 ``bytes`` (or already-decoded ``str``).

    Raises :class:`SpecError` for every problem: size, encoding, control characters, YAML syntax,
    a second document, an empty file, tags, merge keys, duplicate or non-scalar keys, nesting deeper
    than :data:`MAX_DEPTH`, more than :data:`MAX_NODES` nodes once aliases are expanded.
    """
    raw = source.encode("utf-8", "surrogatepass") if isinstance(source, str) else bytes(source)
    try:
        if len(raw) > MAX_BYTES:
            raise _Fail(0, 0, f"the file is {len(raw)} bytes; the limit is {MAX_BYTES}",
                        "a spec is a small text file; is this the right file?")
        text = _decode(raw) if isinstance(source, bytes) else source.removeprefix("\ufeff")
        bad = _NON_PRINTABLE.search(text)
        if bad:
            line, col = _line_col(text, bad.start())
            raise _Fail(line, col, f"the file contains the control character U+{ord(bad.group()):04X} at "
                        f"line {line}, column {col}", "is this a binary file? a spec must be UTF-8 text"
                        if bad.group() == "\0" else "remove it: only printable text, tabs and line breaks")
        root = _compose(text)
        if root is None or (root.kind == "s" and root.tag is None and root.style is None and root.value == ""):
            raise _Fail(0, 0, "the file is empty", "a spec starts with `odespec: 1`")
        if root.size > MAX_NODES:
            raise _too_many(root)
        builder = _Builder()
        data = builder.build(root, (), 0, None)
    except _Fail as fail:
        raise SpecError([SpecIssue(filename, *fail.fields)]) from None
    if builder.issues:
        raise SpecError(SpecIssue(filename, *fields) for fields in builder.issues.values())
    return LoadedDocument(data, filename, hashlib.sha256(raw).hexdigest(),
                          MappingProxyType(builder.positions), MappingProxyType(builder.key_positions))


def load_file(path: Union[str, "os.PathLike[str]"]) -> LoadedDocument:
    """Read ``path`` as bytes and :func:`load_text` it; an unreadable file is a SpecError too."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # never read all of a huge file just to refuse it
            size = max(len(raw), os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        reason = {FileNotFoundError: "no such file", IsADirectoryError: "it is a directory",
                  PermissionError: "permission denied"}.get(type(exc), exc.strerror or str(exc))
        raise SpecError([SpecIssue(filename, 0, 0, "", f"cannot read the file: {reason}",
                                   "check the path and the file's permissions")]) from None
    if size > MAX_BYTES:
        raise SpecError([SpecIssue(filename, 0, 0, "", f"the file is {size} bytes; the limit is {MAX_BYTES}",
                                   "a spec is a small text file; is this the right file?")])
    return load_text(raw, filename)
