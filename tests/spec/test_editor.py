"""The editor says what `odespec validate` says: yaml-language-server, the server the README's
modeline is written for, driven over its stdio protocol (initialize, didOpen, publishDiagnostics,
completion, hover) with the schema odespec ships.

* every shipped spec (through its own modeline) and every example of the README opens without a
  diagnostic, through the modeline `odespec schema --path` gives and through a copy written with
  `odespec schema -o`;
* each mistake below is one diagnostic, where `odespec validate` reports it;
* method, gradient and layer names complete in every form the README writes (the short forms
  `solver: NAME` and `gradient: NAME`, block and flow lists), each item with its description,
  none inserting null or a value the schema refuses.

Skipped, with the reason, where node and npm or the pinned server cannot be had
(tests/spec/yaml_language_server.py installs it from tests/spec/editor/package-lock.json).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml_language_server as yls
from click.testing import CliRunner

from odespec.cli import cli
from odespec.errors import SpecError
from odespec.layers import registry
from odespec.solvers import tableaus
from odespec.solvers.config import declared_gradients
from odespec.spec import parse_spec
from odespec.spec.load import load_text
from odespec.spec.schema import active_schema

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEAD = "odespec: 1\nname: demo\ninput: {shape: [2]}\n"
CURSOR = "|"


@pytest.fixture(scope="module")
def server():
    found = yls.install()
    if isinstance(found, str):
        pytest.skip(found)
    lsp = yls.LanguageServer(found, ROOT)
    yield lsp
    lsp.shutdown()


@pytest.fixture(scope="module")
def modeline() -> str:
    """The README's way: the path `odespec schema --path` prints."""
    r = CliRunner().invoke(cli, ["schema", "--path"])
    assert r.exit_code == 0, r.output
    return f"# yaml-language-server: $schema={r.stdout.strip()}\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("editor")


def _open(server, folder: Path, name: str, text: str) -> tuple[str, list[dict]]:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return server.open(path)


def _schema_in_effect(server, uri: str, text: str) -> None:
    """Hover shows the schema's description of `odespec:` (no diagnostics could also mean no schema)."""
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("odespec:")))
    assert "Spec format version" in server.hover(uri, line, 2)


# -- documents that are valid ------------------------------------------------------------------

def _readme_examples() -> list[tuple[str, str, bool]]:
    """The README's YAML examples as whole specs (name, text, whether the README wrote a whole
    spec): fragments (an ODE block, `export:`, `train:`) under a minimal spec, `layers: [...]`
    (the README's "your layers") as one layer. A fragment lists every key, not always a
    combination that `validate` accepts (match_tol beside a step count)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    out = []
    for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", readme, re.S)):
        body = "\n".join(x for x in block.splitlines() if not x.startswith("# yaml-language-server")) + "\n"
        if not body.strip():
            continue
        body = body.replace("[...]", "[tanh]")
        if body.startswith("odespec:"):
            spec = body
        elif body.startswith("- "):
            spec = HEAD + "model:\n" + "".join("  " + x + "\n" for x in body.splitlines())
        elif body.startswith("model:"):
            spec = HEAD + body
        else:
            spec = HEAD + "model: [tanh]\n" + body
        out.append((f"readme_{i}.yaml", spec, body.startswith("odespec:")))
    assert len(out) >= 7
    return out


def test_shipped_specs_through_their_own_modeline_have_no_diagnostics(server):
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# yaml-language-server: $schema=../schemas/odespec.schema.json\n"), path.name
        uri, diagnostics = server.open(path)
        assert diagnostics == [], (path.name, diagnostics)
        _schema_in_effect(server, uri, text)
        server.close(uri)


def test_readme_examples_have_no_diagnostics(server, modeline, folder):
    for name, spec, whole in _readme_examples():
        if whole:
            parse_spec(spec, name)  # valid for odespec validate too
        uri, diagnostics = _open(server, folder, name, modeline + spec)
        assert diagnostics == [], (name, spec, diagnostics)
        _schema_in_effect(server, uri, modeline + spec)


def test_a_copy_written_with_schema_o_works_beside_the_spec(server, folder):
    sub = folder / "project"
    sub.mkdir()
    assert CliRunner().invoke(cli, ["schema", "-o", str(sub / "odespec.schema.json")]).exit_code == 0
    modeline = "# yaml-language-server: $schema=odespec.schema.json\n"
    good = modeline + HEAD + "model: [{linear: 2}, tanh]\n"
    uri, diagnostics = _open(server, sub, "good.yaml", good)
    assert diagnostics == []
    _schema_in_effect(server, uri, good)
    _, diagnostics = _open(server, sub, "bad.yaml", modeline + HEAD + "model: [{lineer: 2}]\n")
    assert len(diagnostics) == 1


# -- mistakes: one diagnostic each, where validate puts it --------------------------------------

def _ode(body: str) -> str:
    return HEAD + "model:\n  - ode:\n" + "".join("      " + x + "\n" for x in body.splitlines())


MISTAKES = {
    "misspelt layer in a flow list": _ode("dynamics: {layers: [{lineer: 2}]}"),
    "misspelt layer in a block list": _ode("dynamics:\n  layers:\n    - lineer: 2"),
    "misspelt bare layer": _ode("dynamics: {layers: [tahn, {linear: 2}]}"),
    "layer without its options": HEAD + "model:\n  - linear\n",
    "batchnorm in dynamics": _ode("dynamics: {layers: [batchnorm, {linear: 2}]}"),
    "batchnorm with options in dynamics": _ode("dynamics: {layers: [{batchnorm: {eps: 0.1}}, {linear: 2}]}"),
    "dropout in dynamics": _ode("dynamics: {layers: [{linear: 2}, {dropout: 0.1}]}"),
    "batchnorm in a residual block in dynamics": _ode("dynamics: {layers: [{residual: [batchnorm, {linear: 2}]}]}"),
    "ODE block in dynamics": _ode("dynamics:\n  layers:\n    - ode: {dynamics: {layers: [tanh]}}"),
    "misspelt method, short form": _ode("dynamics: {layers: [tanh]}\nsolver: dopri"),
    "misspelt method, object form": _ode("dynamics: {layers: [tanh]}\nsolver: {method: dopri}"),
    "misspelt gradient, short form": _ode("dynamics: {layers: [tanh]}\ngradient: adjont"),
    "misspelt solver option": _ode("dynamics: {layers: [tanh]}\nsolver: {method: rk4, stepz: 3}"),
    "zero steps": _ode("dynamics: {layers: [tanh]}\nsolver: {method: rk4, steps: 0}"),
    "quoted number": _ode("dynamics: {layers: [tanh]}\nsolver: {method: dopri5, rtol: '1e-3'}"),
    "one time": _ode("t: [0]\ndynamics: {layers: [tanh]}"),
    "zero features": HEAD + "model:\n  - linear: 0\n",
    "misspelt top-level key": HEAD + "model: [tanh]\nsolvr: rk4\n",
    "misspelt padding word": "odespec: 1\nname: demo\ninput: {shape: [1, 4, 4]}\nmodel:\n  - conv2d: {channels: 2, padding: sme}\n",
    "steps with underscores": HEAD + "model: [tanh]\nexport:\n  onnx: {steps: 1_000}\n",
    "adaptive method for the export": HEAD + "model: [tanh]\nexport:\n  onnx: {method: dopri5, steps: 8}\n",
    "misspelt data source": HEAD + "model: [tanh]\ntrain:\n  data: {circle: {count: 500}}\n",
    "misspelt optimizer": HEAD + "model: [tanh]\ntrain:\n  data: circles\n  optimizer: adm\n",
    "layer with two keys": HEAD + "model:\n  - linear: 50\n    relu:\n",
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_is_one_diagnostic_where_validate_reports_it(server, modeline, folder, name):
    text = modeline + MISTAKES[name]
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "mistake.yaml")
    (issue,) = caught.value.issues
    _, diagnostics = _open(server, folder, re.sub(r"\W+", "_", name) + ".yaml", text)
    assert len(diagnostics) == 1, diagnostics
    start, end = diagnostics[0]["range"]["start"], diagnostics[0]["range"]["end"]
    assert start["line"] == issue.line - 1, (issue, start)
    assert (start["line"], start["character"]) <= (issue.line - 1, issue.column - 1) <= (end["line"], end["character"])


# -- completion --------------------------------------------------------------------------------

def _dynamics_layers() -> set[str]:
    return {t.name for t in registry.all_types() if not t.not_in_dynamics}


def _positions() -> dict[str, tuple[str, set[str], set[str]]]:
    """name -> (document with the cursor, names that must be offered, names that must not)."""
    methods, gradients = set(tableaus.spec_method_names()), {d.name for d in declared_gradients()}
    adaptive = {m for m in methods if tableaus.is_adaptive(m)}
    every_layer = set(registry.names())
    kept_out = every_layer - _dynamics_layers()
    return {
        "solver: NAME": (_ode("dynamics: {layers: [tanh]}\nsolver: |"), methods, set()),
        "solver: {method: NAME}": (_ode("dynamics: {layers: [tanh]}\nsolver: {method: |}"), methods, set()),
        "gradient: NAME": (_ode("dynamics: {layers: [tanh]}\ngradient: |"), gradients, set()),
        "gradient method in a block mapping": (_ode("dynamics: {layers: [tanh]}\ngradient:\n  method: |"),
                                               gradients, set()),
        "dynamics, block list": (_ode("dynamics:\n  layers:\n    - linear: 2\n    - |"), _dynamics_layers(), kept_out),
        "dynamics, flow list": (_ode("dynamics:\n  layers: [{linear: 50}, |]"), _dynamics_layers(), kept_out),
        "dynamics, flow list, typed prefix": (_ode("dynamics:\n  layers: [{linear: 2}, t|]"), {"tanh"}, kept_out),
        "model, block list": (HEAD + "model:\n  - linear: 2\n  - |\n", every_layer | {"ode"}, set()),
        "model, flow list": (HEAD + "model: [{linear: 2}, |]\n", every_layer | {"ode"}, set()),
        "export method": (HEAD + "model: [tanh]\nexport:\n  onnx: {method: |}\n", methods - adaptive, adaptive),
    }


def _cursor(text: str) -> tuple[str, int, int]:
    at = text.index(CURSOR)
    before = text[:at]
    return text.replace(CURSOR, "", 1), before.count("\n"), len(before.rsplit("\n", 1)[-1])


def _documentation(item: dict) -> str:
    doc = item.get("documentation") or ""
    return doc.get("value", "") if isinstance(doc, dict) else doc


def _apply(text: str, item: dict, line: int, character: int) -> tuple[str, bool]:
    """The document after inserting ``item``, its snippet placeholders filled with their
    defaults, and whether it leaves text for the user to type: an empty placeholder, or a key
    whose value comes next (``linear: ``, the server drops a final ``$1``)."""
    edit = item.get("textEdit") or {"newText": item.get("insertText", item["label"]),
                                     "range": {"start": {"line": line, "character": character},
                                               "end": {"line": line, "character": character}}}
    snippet = edit["newText"]
    empty = re.search(r"\$\d+|\$\{\d+\}", snippet) is not None or snippet.endswith(": ")
    filled = re.sub(r"\$\{\d+:([^}]*)\}", r"\1", snippet)
    filled = re.sub(r"\$\{\d+\|([^,|]*)[^}]*\}", r"\1", filled)
    filled = re.sub(r"\$\{?\d+\}?", "", filled)
    lines = text.split("\n")
    start, end = edit["range"]["start"], edit["range"]["end"]
    assert start["line"] == end["line"] == line
    row = lines[line]
    lines[line] = row[:start["character"]] + filled + row[end["character"]:]
    return "\n".join(lines), empty


@pytest.mark.parametrize("name", list(_positions()))
def test_names_complete_with_descriptions_and_insert_valid_text(server, modeline, folder, name):
    document, offered, kept_out = _positions()[name]
    text, line, character = _cursor(modeline + document)
    uri, _ = _open(server, folder, re.sub(r"\W+", "_", name) + ".yaml", text)
    items = server.complete(uri, line, character)
    labels = {i["label"] for i in items}
    assert offered <= labels, offered - labels
    assert not kept_out & labels, kept_out & labels
    validator = jsonschema.Draft202012Validator(active_schema())
    for item in items:
        assert _documentation(item).strip(), f"{item['label']!r} has no description"
        after, empty = _apply(text, item, line, character)
        inserted = (item.get("textEdit") or {}).get("newText", item.get("insertText", ""))
        assert "null" not in inserted, (item["label"], inserted)
        if not empty:
            data: Any = load_text(after, "completed.yaml").data
            assert validator.is_valid(data), (item["label"], after, [e.message for e in validator.iter_errors(data)])


def test_hover_shows_the_descriptions(server, modeline, folder):
    text = modeline + _ode("dynamics: {layers: [{linear: {features: 2}}, tanh]}\nsolver: dopri5\ngradient: adjoint")
    uri, diagnostics = _open(server, folder, "hover.yaml", text)
    assert diagnostics == []
    lines = text.splitlines()

    def hover(word: str) -> str:
        row = next(i for i, x in enumerate(lines) if word in x)
        return re.sub(r"\\(.)", r"\1", server.hover(uri, row, lines[row].index(word) + 1))  # markdown escapes

    assert registry.get("linear").description in hover("linear")
    assert registry.get("tanh").description in hover("tanh")
    assert "dopri5: adaptive" in hover("dopri5")
    assert "adjoint: continuous adjoint" in hover("adjoint")
