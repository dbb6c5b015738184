"""Top-level sections owned by other packages (``train:``) plug into validation through the
registry in :mod:`odespec.spec.sections`: the spec package imports nothing of ``train/``, and a
spec without a ``train:`` section loads nothing of it beyond the section's registration."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from odespec.spec import parse_spec, sections
from odespec.spec.model import TrainSpec
from odespec.spec.schema import build_schema

ROOT = Path(__file__).resolve().parents[2]
SPEC_PACKAGE = ROOT / "odespec" / "spec"


def _imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (in functions too),
    relative imports resolved against the spec package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = "odespec.spec".rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found += [base] + [f"{base}.{a.name}" for a in node.names]
    return found


@pytest.mark.parametrize("path", sorted(SPEC_PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_spec_package_imports_nothing_from_train(path: Path):
    bad = [m for m in _imported_modules(path) if m == "odespec.train" or m.startswith("odespec.train.")]
    assert bad == [], f"{path.name} imports {bad}: spec/ must not import train/ (register a section instead)"


def _loaded_after(code: str) -> dict:
    probe = (code + "\nimport json, sys\nprint(json.dumps({'train': sorted(m for m in sys.modules "
             "if m == 'odespec.train' or m.startswith('odespec.train.')), 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_validating_a_spec_without_train_loads_only_the_train_sections_registration():
    loaded = _loaded_after("from odespec.spec import load_spec\nload_spec('specs/ode_demo.yaml')")
    assert loaded == {"train": ["odespec.train", "odespec.train.errors", "odespec.train.section"], "torch": False}


def test_load_spec_alone_knows_the_train_section():
    # the way in that imports least: the spec package, then a spec with a train section
    loaded = _loaded_after("from odespec.spec import load_spec\n"
                           "s = load_spec('specs/ode_demo_train.yaml')\n"
                           "assert type(s.train).__name__ == 'TrainSpec', s.train")
    assert "odespec.train.check" in loaded["train"] and loaded["torch"] is False


def test_train_is_registered_and_its_fragment_is_the_schemas():
    assert "train" in sections.names()
    schema = build_schema()
    assert schema["properties"]["train"] == {"$ref": "#/$defs/train"}
    assert schema["$defs"]["train"] == sections.get("train").schema()


def test_a_duplicate_section_name_is_refused():
    before = sections.get("train")

    class Other(sections.SectionType):
        name = "train"

    with pytest.raises(ValueError, match="a section named 'train' is already registered"):
        sections.register(Other)
    assert sections.get("train") is before


def test_a_section_without_a_spec_field_is_refused():
    class Deploy(sections.SectionType):
        name = "deploy"

    with pytest.raises(ValueError, match="Spec has no field for a section named 'deploy'"):
        sections.register(Deploy)
    assert "deploy" not in sections.names()
    with pytest.raises(TypeError, match="not a SectionType subclass"):
        sections.register(int)


def test_the_section_check_sees_the_model_and_reports_located_errors():
    head = "odespec: 1\nname: t\ninput: {shape: [2]}\nmodel: [{linear: 3}]\n"
    spec = parse_spec(head + "train: {data: circles}\n")
    assert isinstance(spec.train, TrainSpec) and spec.train.data.source == "circles"
    from odespec.errors import SpecError

    with pytest.raises(SpecError) as e:
        parse_spec(head + "train: {data: circles, loss: mse}\n", "s.yaml")
    # the data against the model: circles' class labels need cross_entropy
    assert [i.path for i in e.value.issues] == ["train.loss"]
    assert e.value.issues[0].line == 5
