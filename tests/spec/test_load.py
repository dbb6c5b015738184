"""Tests of odespec.spec.load: the YAML 1.2 core-schema loader with positions and limits."""

from __future__ import annotations

import ast
import hashlib
import math
from pathlib import Path as FsPath
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import odespec.spec.load as load_mod
from odespec.errors import SpecError, SpecIssue
from odespec.spec.load import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    LoadedDocument,
    Mark,
    format_path,
    load_file,
    load_text,
)


def issues_of(source: bytes | str, filename: str = "spec.yaml") -> tuple[SpecIssue, ...]:
    with pytest.raises(SpecError) as info:
        load_text(source, filename)
    return info.value.issues


def issue_of(source: bytes | str) -> SpecIssue:
    found = issues_of(source)
    assert len(found) == 1, found
    return found[0]


def value_of(scalar: str) -> Any:
    return load_text(f"v: {scalar}\n").data["v"]


# --- 1. YAML 1.2 core-schema scalars ------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1e-3", 0.001), ("-1e-3", -0.001), ("1E5", 100000.0), (".5", 0.5), ("+2.0", 2.0),
    ("1.", 1.0), ("-0.0", -0.0), ("6.02e+23", 6.02e23), (".inf", math.inf), (".Inf", math.inf),
    ("+.inf", math.inf), ("-.inf", -math.inf), ("-.INF", -math.inf),
])
def test_floats_follow_yaml_1_2(text: str, expected: float) -> None:
    value = value_of(text)
    assert type(value) is float and value == expected


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN"])
def test_nan(text: str) -> None:
    value = value_of(text)
    assert type(value) is float and math.isnan(value)


@pytest.mark.parametrize("text, expected", [
    ("0", 0), ("42", 42), ("-7", -7), ("+3", 3), ("0o17", 15), ("0x1F", 31), ("0xff", 255),
    ("0755", 755),  # YAML 1.2 core: a leading zero is still decimal
    ("123456789012345678901234567890", 123456789012345678901234567890),
])
def test_ints(text: str, expected: int) -> None:
    value = value_of(text)
    assert type(value) is int and value == expected


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False),
])
def test_bools(text: str, expected: bool) -> None:
    assert value_of(text) is expected


@pytest.mark.parametrize("text", ["null", "Null", "NULL", "~", ""])
def test_nulls(text: str) -> None:
    assert value_of(text) is None


@pytest.mark.parametrize("text", [
    # YAML 1.1 booleans stay strings, so nothing is silently converted
    "on", "off", "On", "OFF", "yes", "no", "Yes", "NO", "y", "n", "Y", "N",
    # not numbers in 1.2 core
    "1_000", "0b101", "0X1F", "0O17", "-0x1F", "1e", "e5", "1.2.3", "-.nan", "+.nan", ".Nan", "inf", "nan",
    "0x", "١٢",  # non-ASCII digits are not numbers
    # no timestamp conversion
    "2001-12-14", "2001-12-14t21:59:43.10-05:00", "12:30:00",
    "hello world", "tRue", "nULL",
])
def test_other_plain_scalars_stay_strings(text: str) -> None:
    assert value_of(text) == text


@pytest.mark.parametrize("text, expected", [
    ("'1e-3'", "1e-3"), ('"true"', "true"), ("'null'", "null"), ("''", ""), ('"12"', "12"),
    ("|\n  1.5\n", "1.5\n"), (">-\n  true\n", "true"),
])
def test_quoted_and_block_scalars_are_strings(text: str, expected: str) -> None:
    assert value_of(text) == expected


def test_huge_integer_is_a_spec_error_not_a_valueerror() -> None:
    issue = issue_of("v: " + "9" * 5000)
    assert "5000 digits" in issue.message and (issue.line, issue.column) == (1, 4)


# --- 2. mapping keys ---------------------------------------------------------------------------------

def test_keys_are_their_source_text() -> None:
    doc = load_text("on: 1\n1: 2\nnull: 3\n1e3: 4\n'quoted key': 5\ntrue: 6\n")
    assert list(doc.data) == ["on", "1", "null", "1e3", "quoted key", "true"]
    assert all(type(k) is str for k in doc.data)


def test_mapping_preserves_insertion_order() -> None:
    assert list(load_text("z: 1\na: 2\nm: 3\n").data) == ["z", "a", "m"]


@pytest.mark.parametrize("source", ["? [a, b]\n: 1\n", "? {a: 1}\n: 1\n", "x:\n  [1]: 2\n"])
def test_non_scalar_key_is_an_error(source: str) -> None:
    issue = issue_of(source)
    assert "a mapping key must be a string" in issue.message


def test_duplicate_key_is_reported_at_second_occurrence() -> None:
    issue = issue_of("odespec: 1\nmodel:\n  x: 1\n  y: 2\n  x: 3\n")
    assert issue.message == "duplicate key 'x'"
    assert issue.hint == "first defined at line 3, column 3; remove one of them"
    assert (issue.line, issue.column, issue.path) == (5, 3, "model.x")
    assert issue.file == "spec.yaml"


def test_duplicate_keys_compare_source_text() -> None:
    issue = issue_of("1: a\n'1': b\n")
    assert issue.message == "duplicate key '1'"


def test_all_duplicates_are_reported() -> None:
    found = issues_of("a: 1\na: 2\nb: 1\nb: 2\n")
    assert [(i.line, i.message) for i in found] == [(2, "duplicate key 'a'"), (4, "duplicate key 'b'")]


# --- 3. one document; empty files ------------------------------------------------------------------

@pytest.mark.parametrize("source, line", [
    ("odespec: 1\n---\nodespec: 2\n", 2),
    ("---\na: 1\n--- b\n", 3),
])
def test_second_document_is_an_error(source: str, line: int) -> None:
    issue = issue_of(source)
    assert "second YAML document" in issue.message
    assert (issue.line, issue.column) == (line, 1)


def test_content_after_document_end_marker_is_an_error() -> None:
    issue = issue_of("odespec: 1\n...\nodespec: 2\n")  # PyYAML wants `---` after `...`
    assert (issue.line, issue.column) == (3, 1)
    assert issue.hint == "a spec is one document: remove what follows the `...` line"


def test_explicit_single_document_and_trailing_empty_document_are_fine() -> None:
    assert load_text("---\na: 1\n...\n").data == {"a": 1}
    assert load_text("a: 1\n---\n").data == {"a": 1}


@pytest.mark.parametrize("source", [b"", "", "   \n\n  ", "# only a comment\n# another\n", "---\n", "\ufeff"])
def test_empty_file(source: bytes | str) -> None:
    issue = issue_of(source)
    assert (issue.line, issue.column, issue.path) == (0, 0, "")
    assert issue.message == "the file is empty"
    assert issue.hint == "a spec starts with `odespec: 1`"


def test_explicit_null_document_is_not_empty() -> None:
    assert load_text("null\n").data is None  # the schema, not the loader, says a spec is a mapping


# --- 4. tags and merge keys --------------------------------------------------------------------------

@pytest.mark.parametrize("source, tag", [
    ("!!python/object/apply:os.system ['echo hi']\n", "!!python/object/apply:os.system"),
    ("a: !!python/name:os.system\n", "!!python/name:os.system"),
    ("a: !!binary aGVsbG8=\n", "!!binary"),
    ("a: !!set {x, y}\n", "!!set"),
    ("a: !!omap [a: 1]\n", "!!omap"),
    ("a: !!timestamp 2001-01-01\n", "!!timestamp"),
    ("a: !custom 1\n", "!custom"),
    ("a: ! 1\n", "!"),
    ("!thing {a: 1}\n", "!thing"),
    ("!!binary k: 1\n", "!!binary"),
])
def test_unsupported_tags(source: str, tag: str) -> None:
    issue = issue_of(source)
    assert issue.message == f"the tag {tag} is not allowed"
    assert issue.hint == "odespec specs use plain YAML; tags are not supported"


@pytest.mark.parametrize("text, expected", [
    ("!!str 123", "123"), ("!!str true", "true"), ("!!str", ""), ("!!float 1", 1.0), ("!!float 0x10", 16.0),
    ("!!float '2.5'", 2.5), ("!!int 0o17", 15), ("!!int '7'", 7), ("!!bool false", False), ("!!null ~", None),
    ("!!null", None), ("!!seq [1]", [1]), ("!!map {a: 1}", {"a": 1}),
])
def test_core_tags(text: str, expected: Any) -> None:
    value = value_of(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text, message", [
    ("!!int 1.5", "'1.5' is not a valid !!int"),
    ("!!float abc", "'abc' is not a valid !!float"),
    ("!!bool yes", "'yes' is not a valid !!bool"),
    ("!!null 0", "'0' is not a valid !!null"),
    ("!!map 1", "the tag !!map does not fit a scalar"),
    ("!!seq {a: 1}", "the tag !!seq does not fit a mapping"),
    ("!!str [1]", "the tag !!str does not fit a sequence"),
])
def test_core_tags_that_do_not_fit(text: str, message: str) -> None:
    issue = issue_of(f"v: {text}\n")
    assert issue.message == message and (issue.line, issue.column, issue.path) == (1, 4, "v")


def test_merge_keys_are_refused() -> None:
    issue = issue_of("base: &b {x: 1}\nlayer:\n  <<: *b\n  y: 2\n")
    assert issue.message == "merge keys (<<) are not supported"
    assert "alias" in (issue.hint or "")
    assert (issue.line, issue.column, issue.path) == (3, 3, "layer")


def test_quoted_merge_key_is_just_a_string() -> None:
    assert load_text("'<<': 1\n").data == {"<<": 1}


# --- 5. aliases and anchors ----------------------------------------------------------------------

def test_aliases_copy_values() -> None:
    doc = load_text("solver: &s {rtol: 1e-6, atol: 1e-8}\nother: *s\nlist: [&one 1, *one]\n")
    assert doc.data["other"] == {"rtol": 1e-6, "atol": 1e-8}
    assert doc.data["other"] is not doc.data["solver"]  # copies: later mutation cannot leak
    assert doc.data["list"] == [1, 1]
    assert doc.positions[("other",)] == Mark(2, 8)  # the alias is where it is written
    assert doc.positions[("other", "rtol")] == Mark(1, 19)  # its content is where that is written


def billion_laughs(levels: int = 9, width: int = 10) -> str:
    lines = ['lol0: &lol0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("width", [9, 10])
def test_billion_laughs_is_refused_quickly(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import odespec.spec.load as load

    def no_expansion(*args: object, **kwargs: object) -> None:
        raise AssertionError("the alias bomb's data was built")

    # refused from the node graph's sizes, before any data is expanded (that is what keeps it
    # quick; benchmarks/validate_time.py measures the time itself)
    monkeypatch.setattr(load._Builder, "build", no_expansion)
    source = billion_laughs(9, width)
    issue = issue_of(source)
    assert issue.message == f"the document expands to more than {MAX_NODES} nodes (alias bomb?)"
    line = source.splitlines()[issue.line - 1]
    assert line[issue.column - 1] == "*"  # blamed on an alias


def test_expansion_just_under_the_limit_is_accepted() -> None:
    # 4 levels of 10: about 11,000 nodes, well under the limit
    doc = load_text(billion_laughs(4, 10))
    assert len(doc.data["lol4"]) == 10 and doc.data["lol4"][9][9][9][9] == "lol"


def test_recursive_alias_is_an_error() -> None:
    issue = issue_of("a: &x\n  b: *x\n")
    assert "recursive alias" in issue.message and (issue.line, issue.column) == (2, 6)
    assert "recursive alias" in issue_of("&x [1, [2, *x]]\n").message


def test_undefined_alias_and_duplicate_anchor() -> None:
    issue = issue_of("a: *nope\n")
    assert issue.message == "undefined alias '*nope'" and (issue.line, issue.column) == (1, 4)
    issue = issue_of("a: &x 1\nb: &x 2\n")
    assert issue.message == "duplicate anchor '&x'" and issue.hint.startswith("first defined at line 1, column 4")


def test_depth_through_aliases_is_bounded() -> None:
    deep = "[" * 40 + "]" * 40
    issue = issue_of(f"a: &a {deep}\nb: [{', '.join(['*a'] * 2)}]\nc: &c {deep}\nd: {'[' * 30}*c{']' * 30}\n")
    assert issue.message == f"nesting is deeper than {MAX_DEPTH} levels"
    assert (issue.line, issue.column) == (4, 34)  # at the alias *c


# --- 6. limits -----------------------------------------------------------------------------------

def test_too_many_bytes_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    import odespec.spec.load as load

    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the YAML parser ran on an oversized source")

    monkeypatch.setattr(load, "_compose", no_parsing)
    source = b"a: [" + b"[" * (5_000_000 - 4)  # would be a syntax error if parsed
    issue = issue_of(source)
    assert issue.message == "the file is 5000000 bytes; the limit is 1048576"
    assert (issue.line, issue.column) == (0, 0)


def test_exactly_max_bytes_is_allowed() -> None:
    source = b"a: " + b"x" * (MAX_BYTES - 4) + b"\n"
    assert len(source) == MAX_BYTES
    assert len(load_text(source).data["a"]) == MAX_BYTES - 4


def test_load_file_refuses_large_file(tmp_path: FsPath) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 5_000_000)
    with pytest.raises(SpecError) as info:
        load_file(path)
    assert info.value.issues[0].message == "the file is 5000000 bytes; the limit is 1048576"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_max_depth_is_allowed_and_one_more_is_not() -> None:
    data = load_text(nested(MAX_DEPTH)).data
    for _ in range(MAX_DEPTH - 1):
        data = data[0]
    assert data == []
    issue = issue_of(nested(MAX_DEPTH + 1))
    assert issue.message == f"nesting is deeper than {MAX_DEPTH} levels"
    assert (issue.line, issue.column, issue.path) == (1, MAX_DEPTH + 1, "[0]" * MAX_DEPTH)
    issue = issue_of("a:\n  b: " + nested(MAX_DEPTH))
    assert (issue.line, issue.column) == (2, 6 + MAX_DEPTH - 2) and issue.path == "a.b" + "[0]" * (MAX_DEPTH - 2)


@pytest.mark.parametrize("source", [
    "[" * 10_000, nested(10_000), "{a: " * 10_000, "- " * 10_000 + "x\n",
    "".join(" " * i + f"k{i}:\n" for i in range(300)),
])
def test_very_deep_input_is_a_clean_spec_error(source: str) -> None:
    issue = issue_of(source)  # not RecursionError
    assert issue.message == f"nesting is deeper than {MAX_DEPTH} levels"


def test_too_many_written_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_mod, "MAX_NODES", 1000)  # the real limit takes seconds to reach
    issue = issue_of("items:\n" + "".join(f"  - {i}\n" for i in range(2000)))
    assert issue.message == "the document has more than 1000 nodes"
    assert (issue.line, issue.path) == (999, "items[997]")  # root, key, list, items[0..996]: 1000
    load_text("items:\n" + "".join(f"  - {i}\n" for i in range(997)))


# --- 7. encoding and characters ------------------------------------------------------------------

def test_utf8_bom_is_stripped_and_columns_ignore_it() -> None:
    doc = load_text(b"\xef\xbb\xbfa: 1\n")
    assert doc.data == {"a": 1} and doc.key_positions[("a",)] == Mark(1, 1)
    assert load_text("\ufeffa: 1\n").data == {"a": 1}


def test_invalid_utf8_points_at_the_first_bad_byte() -> None:
    issue = issue_of(b"a: 1\nb: 2\nc: \xc3\xa9\xff\n")
    assert issue.message == "the file is not valid UTF-8: byte 0xff at line 3, column 5"
    assert issue.hint == "save the file as UTF-8"
    assert (issue.line, issue.column) == (3, 5)  # 'é' is one column


def test_latin1_file_is_refused() -> None:
    issue = issue_of("name: caf\u00e9\n".encode("latin-1"))
    assert issue.message.startswith("the file is not valid UTF-8: byte 0xe9 at line 1, column 10")


@pytest.mark.parametrize("source, char, where", [
    (b"a: 1\nb: x\x00y\n", "U+0000", (2, 5)),
    ("a: \x07\n", "U+0007", (1, 4)),
    ("a: 1\n\x1b[31m: 2\n", "U+001B", (2, 1)),
    ("a: \ud800\n", "U+D800", (1, 4)),  # a lone surrogate in str input
])
def test_control_characters(source: bytes | str, char: str, where: tuple[int, int]) -> None:
    issue = issue_of(source)
    assert issue.message.startswith(f"the file contains the control character {char} at line {where[0]}")
    assert (issue.line, issue.column) == where


def test_str_input_is_already_decoded() -> None:
    doc = load_text("name: café ✓\n")
    assert doc.data == {"name": "café ✓"}
    assert doc.sha256 == hashlib.sha256("name: café ✓\n".encode()).hexdigest()


def test_sha256_is_of_the_raw_bytes() -> None:
    raw = b"\xef\xbb\xbfodespec: 1\r\n"
    assert load_text(raw).sha256 == hashlib.sha256(raw).hexdigest()


def test_crlf_line_endings() -> None:
    doc = load_text(b"a: 1\r\nb:\r\n  - x\r\n")
    assert doc.data == {"a": 1, "b": ["x"]}
    assert doc.positions[("b", 0)] == Mark(3, 5)


# --- YAML syntax errors ----------------------------------------------------------------------------

def test_tab_indentation() -> None:
    issue = issue_of("model:\n\tode: 1\n")
    assert issue.message == "could not parse YAML: found character '\\t' that cannot start any token"
    assert issue.hint == "indent with spaces, not tabs"
    assert (issue.line, issue.column) == (2, 1)


@pytest.mark.parametrize("source, where, fragment", [
    ("a: [1, 2\n", (2, 1), "expected ',' or ']'"),
    ("a: b: c\n", (1, 5), "mapping values are not allowed here"),
    ("a: 'unclosed\n", (2, 1), "found unexpected end of stream"),
    ("a:\n  b: 1\n c: 2\n", (3, 2), "expected <block end>"),
    ("a: @x\n", (1, 4), "cannot start any token"),
])
def test_syntax_errors_have_positions(source: str, where: tuple[int, int], fragment: str) -> None:
    issue = issue_of(source)
    assert issue.message.startswith("could not parse YAML: ") and fragment in issue.message
    assert (issue.line, issue.column) == where and issue.hint


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.lists(st.sampled_from(list("[]{}:,-?&*!|>'\"#%@` \n\t\ra0.~")), max_size=80).map("".join)))
def test_garbage_gives_only_spec_errors(source: bytes | str) -> None:
    try:
        doc = load_text(source)
    except SpecError as exc:
        assert all(isinstance(i, SpecIssue) and i.message for i in exc.issues)
    else:
        assert () in doc.positions


# --- 8. positions and paths ----------------------------------------------------------------------

SPEC = """\
odespec: 1
model:
  - type: linear
    features: 16
  - type: ode
    ode:
      solver: {name: dopri5, rtol: 1e-3}
"""


def test_positions_of_items_and_keys() -> None:
    doc = load_text(SPEC, "net.yaml")
    assert doc.filename == "net.yaml"
    assert doc.positions[()] == Mark(1, 1)
    assert doc.key_positions[("model",)] == Mark(2, 1)
    assert doc.positions[("model",)] == Mark(3, 3)
    assert doc.positions[("model", 0)] == Mark(3, 5)
    assert doc.positions[("model", 1)] == Mark(5, 5)
    assert doc.key_positions[("model", 1, "ode", "solver", "rtol")] == Mark(7, 30)
    assert doc.positions[("model", 1, "ode", "solver", "rtol")] == Mark(7, 36)


def test_mark_falls_back_to_nearest_ancestor() -> None:
    doc = load_text(SPEC)
    assert doc.mark(("model", 1, "ode", "solver", "atol")) == Mark(7, 15)  # the solver mapping
    assert doc.mark(("model", 7, "x")) == Mark(3, 3)
    assert doc.mark(("nothing",)) == Mark(1, 1)
    assert doc.key_mark(("model", 0, "features")) == Mark(4, 5)
    assert doc.key_mark(("model", 0)) == doc.mark(("model", 0))  # not a key: the value's mark
    assert doc.key_mark(("model", 0, "missing")) == Mark(3, 5)
    empty = LoadedDocument(None, "x", "", {}, {})
    assert empty.mark(("a",)) == Mark(0, 0) and empty.key_mark(()) == Mark(0, 0)


def test_columns_count_characters_not_bytes() -> None:
    doc = load_text("ключ: значение\nb: [é, ✓, 𝔁, x]\n".encode())
    assert doc.positions[("ключ",)] == Mark(1, 7)
    assert doc.positions[("b", 3)] == Mark(2, 14)


def test_errors_carry_formatted_paths() -> None:
    issue = issue_of("model:\n  - ode:\n      'my key': !!int x\n")
    assert issue.path == 'model[0].ode["my key"]'


@pytest.mark.parametrize("path, text", [
    ((), ""), (("model",), "model"), (("model", 3, "ode", "solver"), "model[3].ode.solver"),
    ((0, "a"), "[0].a"), (("my key",), '["my key"]'), (("a", 'q"b', "c"), 'a["q\\"b"].c'),
    (("a", "max-steps", 1), 'a["max-steps"][1]'), (("1a",), '["1a"]'), (("_x",), "_x"),
])
def test_format_path(path: tuple, text: str) -> None:
    assert format_path(path) == text


def test_document_mappings_are_read_only() -> None:
    doc = load_text("a: 1\n")
    with pytest.raises(TypeError):
        doc.positions[("b",)] = Mark(1, 1)  # type: ignore[index]


# --- load_file -----------------------------------------------------------------------------------

def test_load_file_reads_bytes(tmp_path: FsPath) -> None:
    path = tmp_path / "net.yaml"
    path.write_bytes(b"\xef\xbb\xbfodespec: 1\n")
    doc = load_file(path)
    assert doc.data == {"odespec": 1} and doc.filename == str(path)
    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_file(str(path)).filename == str(path)


def test_load_file_errors_use_the_filename(tmp_path: FsPath) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(SpecError) as info:
        load_file(path)
    assert info.value.issues[0].file == str(path)
    assert str(info.value).startswith(f"{path}:2:1: error: a: duplicate key 'a'")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p / "missing.yaml", "no such file"),
    (lambda p: p, "it is a directory"),
])
def test_unreadable_file(tmp_path: FsPath, make: Any, reason: str) -> None:
    with pytest.raises(SpecError) as info:
        load_file(make(tmp_path))
    issue = info.value.issues[0]
    assert issue.message == f"cannot read the file: {reason}" and (issue.line, issue.column) == (0, 0)


# --- 9. round trip through PyYAML's dumper -------------------------------------------------------

def _dumped_unambiguously(text: str) -> bool:
    """PyYAML's dumper quotes a string only if it *YAML 1.1* would read it as something else. A few
    strings are plain in 1.1 but numbers in 1.2 ("1e5", "0o17", "+.5e3"...) and are written unquoted,
    so any 1.2 reader (ours) reads them back as numbers. That is the dumper's 1.1-ness, not a loader
    bug, so such strings are left out here (test_other_plain_scalars_stay_strings covers loading)."""
    resolved_11 = yaml.SafeLoader.resolve(yaml.SafeLoader, yaml.ScalarNode, text, (True, False))
    return resolved_11 != "tag:yaml.org,2002:str" or isinstance(load_mod._resolve_plain(text), str)


_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,11}", fullmatch=True)
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30).filter(_dumped_unambiguously),
)
_data = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(_keys, inner, max_size=5)),
    max_leaves=30,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares types (1 == 1.0 == True in Python) and key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def _paths(data: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for part, value in items:
        yield from _paths(value, path + (part,))


@settings(max_examples=300, deadline=None)
@given(_data)
def test_round_trip_through_safe_dump(data: Any) -> None:
    # allow_unicode=False: the dumper then escapes U+0085/U+2028/U+2029, which it would otherwise
    # write raw although its own (YAML 1.1) scanner, and so ours, reads them as line breaks.
    text = yaml.safe_dump(data, sort_keys=False)
    doc = load_text(text)
    assert _same(doc.data, data), text
    for path in _paths(data):
        assert path in doc.positions, path
        if path and isinstance(path[-1], str):
            assert path in doc.key_positions, path


# --- the module stays light ------------------------------------------------------------------------

def test_module_imports_no_torch() -> None:
    tree = ast.parse(FsPath(load_mod.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "hashlib", "os", "re", "dataclasses", "types", "typing", "yaml", "odespec"}
