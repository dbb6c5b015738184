"""The shipped schema is the one the registries generate, follows the house rules, and is found
by an installed, non-editable wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest

from odespec.components import branch_types
from odespec.spec.schema import NAMES_KEY, SCHEMA_FILENAME, build_schema, schema_text, shipped_schema_path

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_schema_matches_the_registries():
    checked_in = (ROOT / "schemas" / SCHEMA_FILENAME).read_text(encoding="utf-8")
    assert checked_in == schema_text(build_schema()), (
        "schemas/odespec.schema.json is stale: run `python -m odespec.spec.schema > schemas/odespec.schema.json`"
    )


def test_schema_is_valid_draft_2020_12():
    schema = build_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(schema)


def _objects(node, path=""):
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}/{i}")


def _nodes(node, path=""):
    """Every schema node (a dict) with its JSON pointer."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _nodes(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _nodes(v, f"{path}/{i}")


def test_every_object_is_closed_and_every_property_documented():
    schema = build_schema()
    count = 0
    for path, obj in _objects(schema):
        count += 1
        assert obj.get("additionalProperties") is False, path
        required = set(obj.get("required", []))
        for name, prop in obj.get("properties", {}).items():
            if "$ref" in prop:
                continue
            # every property, a layer or data-source name included: editors show it on completion
            assert prop.get("description"), f"{path}/properties/{name} has no description"
            if NAMES_KEY in obj:
                continue  # a {name: options} mapping: each value is a component's own schema
            # without a default, the description (its own or its object's) says what happens
            # when the property is left out
            said = "default" in prop["description"].lower() or "default" in obj.get("description", "").lower()
            assert name in required or "default" in prop or said, f"{path}/properties/{name} has no default"
    assert count > 20


def test_defaults_and_examples_are_values_of_their_schema():
    """Editors insert a property's default (else its first example) when they complete its key:
    each one is valid, none is null."""
    schema = build_schema()
    root = jsonschema.Draft202012Validator(schema)
    checked = 0
    for path, node in _nodes(schema):
        for value in ([node["default"]] if "default" in node else []) + node.get("examples", [])[:1]:
            assert value is not None, f"{path} defaults to null"
            assert root.evolve(schema=node).is_valid(value), f"{path}: {value!r} is not a valid value"
            checked += 1
    assert checked > 100


def _inserted(prop: dict):
    """The value yaml-language-server 1.25 inserts after `key: ` when it completes a key of this
    schema (getInsertTextForProperty), or None where it inserts a placeholder or nothing."""
    for given in ("default", "const"):
        if given in prop:
            return prop[given]
    if len(prop.get("enum", ())) == 1:
        return prop["enum"][0]
    if prop.get("examples"):
        return prop["examples"][0]
    if prop.get("type") in ("integer", "number"):
        return 0
    items = prop.get("items")
    if prop.get("type") == "array" and isinstance(items, dict):
        return [items["default"]] if "default" in items else [0] if items.get("type") in ("integer", "number") else None
    return None


def test_completing_a_key_inserts_a_valid_value():
    schema = build_schema()
    root = jsonschema.Draft202012Validator(schema)
    checked = 0
    for path, obj in _nodes(schema):
        if NAMES_KEY in obj:
            continue  # names complete as snippets or bare names (tests/spec/test_editor.py)
        for name, prop in obj.get("properties", {}).items() if isinstance(obj.get("properties"), dict) else ():
            value = _inserted(prop)
            if value is not None:
                assert root.evolve(schema=prop).is_valid(value), f"{path}/properties/{name}: inserts {value!r}"
                checked += 1
    assert checked > 100


def test_alternatives_are_one_of_by_json_type():
    """One form of writing alternatives (odespec.components.alternatives): oneOf branches of
    disjoint JSON types, names without a type; no if/then/else (editors complete no branch of
    it), anyOf or propertyNames (a second error on a misspelt name)."""
    schema = build_schema()
    alternatives = 0
    for path, node in _nodes(schema):
        assert not {"if", "then", "else", "anyOf", "propertyNames"} & node.keys(), path
        if "oneOf" in node:
            alternatives += 1
            seen: set = set()
            for branch in node["oneOf"]:
                types = branch_types(branch)
                assert not types & seen, path
                seen |= types
                assert not ({"enum", "const"} & branch.keys() and "type" in branch), path
    assert alternatives > 20


def test_id_is_a_name_not_an_address():
    """Nothing serves the schema on the web; an https $id invites a fetch that fails."""
    assert build_schema()["$id"].startswith("urn:")


def test_a_layer_type_kept_out_of_dynamics_is_not_in_the_dynamics_list():
    from odespec.layers import registry

    defs = build_schema()["$defs"]
    outside = {t.name for t in registry.all_types() if t.not_in_dynamics}
    assert outside >= {"batchnorm", "dropout"}
    dynamics = set(defs["dynamics_layer"]["oneOf"][0]["properties"]) | set(defs["dynamics_layer"]["oneOf"][1]["enum"])
    assert not outside & dynamics
    assert outside <= set(defs["layer"]["oneOf"][0]["properties"])
    residual = defs["dynamics_layer"]["oneOf"][0]["properties"]["residual"]
    assert '"#/$defs/dynamics_layer"' in json.dumps(residual) and '"#/$defs/layer"' not in json.dumps(residual)


def test_shipped_schema_path_in_a_checkout():
    assert shipped_schema_path().name == SCHEMA_FILENAME


@pytest.mark.slow
def test_installed_wheel_finds_its_schema(tmp_path: Path):
    """Build a wheel, install it (no deps, not editable) into a fresh folder, import it from
    there and ask it for its schema."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = wheel_dir.glob("odespec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"odespec/_schemas/{SCHEMA_FILENAME}" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import json, odespec, odespec.spec.schema as s; "
        "p = s.shipped_schema_path(); "
        "print(json.dumps({'pkg': odespec.__file__, 'schema': str(p), 'title': s.active_schema()['title']}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["pkg"].startswith(str(site))
    assert info["schema"].startswith(str(site))
    assert info["title"] == "odespec model spec"
    # the path the README tells a pip user to put in the modeline
    out = subprocess.run([sys.executable, "-m", "odespec", "schema", "--path"], cwd=tmp_path,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == info["schema"]
