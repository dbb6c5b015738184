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

from odespec.spec.schema import SCHEMA_FILENAME, build_schema, schema_text, shipped_schema_path

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
        # `if: {type: object}` is a test on the value's type, not an object schema
        if node.get("type") == "object" and not path.endswith("/if"):
            yield path, node
        for k, v in node.items():
            yield from _objects(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _objects(v, f"{path}/{i}")


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
            if path.endswith("/else") and "propertyNames" in obj:
                continue  # the layer-name mapping: each value is a layer's own schema
            assert prop.get("description"), f"{path}/properties/{name} has no description"
            assert name in required or "default" in prop, f"{path}/properties/{name} has no default"
    assert count > 20


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
