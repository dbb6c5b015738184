"""Hostile specs through the command line: shipped specs mutated (keys deleted, types swapped,
extreme numbers, NaN and infinity, wrong shapes, truncated text) go through ``validate``,
``build`` and ``train --iterations 1``. Whatever the mutation, the answer is an exit code of 0,
1 or 2 with a message: never a traceback, never an "internal error", and nothing half-written
(a failed command leaves no model file and no temporary file behind).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odespec.cli import cli
from odespec.spec.load import load_text

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {p.stem: load_text(p.read_bytes()).data for p in sorted((ROOT / "specs").glob("*.yaml"))}
#: small enough to build and train in a few seconds
FAST = ["ode_demo", "circles_node", "circles_resnet", "circles_anode"]

EXTREMES = [math.nan, math.inf, -math.inf, 0, -1, 10**30, 1e-300, 1e300, -0.5, 2**31, "", "x" * 300, None, True,
            [], {}, [1, 2, 3], {"a": 1}, "1e-3", "auto", 1.5]


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value (mappings' values and list items) in ``node``."""
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, path + (i,))
    return out


def _parent(data: Any, path: tuple) -> Any:
    for p in path[:-1]:
        data = data[p]
    return data


def _scaled(value: Any, k: int) -> Any:
    """A number moved by orders of magnitude, keeping its type (often still a valid spec: the
    values that reach build and training)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return max(1, value * 10**k) if k >= 0 else max(1, value // 10 ** (-k))
    return value * 10.0**k


@st.composite
def mutated_spec(draw: Any, names: list[str], structural: bool = True) -> tuple[str, str]:
    """(spec name, text) of a shipped spec with one to three mutations; ``structural``: also
    delete keys, swap types and cut the text (else only move numbers, which keeps most specs
    valid and so reaches build and training)."""
    name = draw(st.sampled_from(names))
    data = copy.deepcopy(SHIPPED[name])
    kinds = ["delete", "replace", "replace", "wrap", "scale", "scale"] if structural else ["scale"]
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        paths = [p for p in _paths(data) if p != ("odespec",) and kind != "scale" or
                 isinstance(_parent(data, p)[p[-1]], (int, float))]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(data, path)
        if kind == "delete":
            del parent[path[-1]]
        elif kind == "replace":
            parent[path[-1]] = draw(st.sampled_from(EXTREMES))
        elif kind == "scale":
            parent[path[-1]] = _scaled(parent[path[-1]], draw(st.integers(-6, 6)))
        else:
            parent[path[-1]] = [parent[path[-1]]]
    if not structural:
        return name, yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter: cut the file short
        text = text[: draw(st.integers(0, len(text)))]
    return name, text


def _run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"odespec {' '.join(args)} raised {result.exception!r}") from result.exception
    return result.exit_code, (result.stdout or "") + (result.stderr or "")


def _no_internal_error(code: int, output: str) -> None:
    assert code in (0, 1, 2), (code, output)
    assert "Traceback" not in output and "internal error" not in output, output
    assert code == 0 or output.strip(), "a failure must say why"


def _nothing_half_written(out: Path, code: int, model_glob: str) -> None:
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in files if p.name.startswith(".") or p.suffix in (".tmp", ".part")], files
    if code != 0:
        assert not list(out.glob(model_glob)) if out.exists() else True, files


_SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow])


@settings(max_examples=150, **_SETTINGS)
@given(case=mutated_spec(list(SHIPPED)))
def test_validate_never_fails_internally(case: tuple[str, str], tmp_path: Path):
    name, text = case
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(text, encoding="utf-8")
    code, output = _run(["validate", str(spec)])
    _no_internal_error(code, output)


@settings(max_examples=12, **_SETTINGS)
@given(case=st.one_of(mutated_spec(FAST), mutated_spec(FAST, structural=False)))
def test_build_never_fails_internally_nor_half_writes(case: tuple[str, str], tmp_path_factory: Any):
    tmp = tmp_path_factory.mktemp("build")
    name, text = case
    spec = tmp / f"{name}.yaml"
    spec.write_text(text, encoding="utf-8")
    out = tmp / "out"
    code, output = _run(["build", str(spec), "-o", str(out)])
    _no_internal_error(code, output)
    _nothing_half_written(out, code, "*.onnx")


@pytest.mark.slow
@settings(max_examples=8, **_SETTINGS)
@given(case=mutated_spec(["ode_demo_train", "circles_node", "circles_anode"], structural=False))
def test_one_training_iteration_never_fails_internally(case: tuple[str, str], tmp_path_factory: Any):
    tmp = tmp_path_factory.mktemp("train")
    name, text = case
    spec = tmp / f"{name}.yaml"
    spec.write_text(text, encoding="utf-8")
    out = tmp / "run"
    code, output = _run(["train", str(spec), "-o", str(out), "--iterations", "1"])
    _no_internal_error(code, output)
    _nothing_half_written(out, code, "model*.safetensors")


# ------------------------------------------------------------------ hostile data files

_DATA_SPEC = """\
odespec: 1
name: fuzz-data
input: {shape: [2]}
model:
  - ode:
      t: [0, 1]
      dynamics: {layers: [{linear: 8}, tanh, {linear: 2}]}
      solver: {method: rk4, steps: 2}
  - linear: 3
train:
  data: {npz: data.npz}
  iterations: 1
  batch_size: 4
"""


@st.composite
def hostile_arrays(draw: Any) -> dict[str, Any]:
    """x and y of a 3-class problem with 2 features, then one thing made wrong."""
    import numpy as np

    n = draw(st.integers(4, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    arrays: dict[str, Any] = {"x": rng.normal(size=(n, 2)), "y": rng.integers(0, 3, size=n)}
    which = draw(st.sampled_from(["x", "y"]))
    how = draw(st.sampled_from(["nan", "inf", "shape", "dtype", "labels", "missing", "rows", "empty", "none"]))
    a = arrays[which]
    if how in ("nan", "inf"):
        a = a.astype(float)
        a.flat[draw(st.integers(0, a.size - 1))] = np.nan if how == "nan" else np.inf
    elif how == "shape":
        a = rng.normal(size=draw(st.sampled_from([(n, 3), (n, 2, 2), (n,), (n, 1, 5)])))
    elif how == "dtype":
        a = a.astype(draw(st.sampled_from(["U4", "complex64", "datetime64[s]"])))
    elif how == "labels":
        a = draw(st.sampled_from([np.full(n, 7), np.full(n, -1), rng.normal(size=n), rng.random((n, 3))]))
    elif how == "rows":
        a = a[: max(1, n // 2)]
    elif how == "empty":
        a = a[:0]
    if how == "missing":
        del arrays[which]
    else:
        arrays[which] = a
    return arrays


@settings(max_examples=25, **_SETTINGS)
@given(arrays=hostile_arrays(), cut=st.one_of(st.none(), st.floats(0.0, 0.95)))
def test_hostile_data_files_get_a_message_in_validate_and_train(arrays: dict, cut: Any, tmp_path_factory: Any):
    import io

    import numpy as np

    tmp = tmp_path_factory.mktemp("data")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    if cut is not None:  # a truncated file
        raw = raw[: int(len(raw) * cut)]
    (tmp / "data.npz").write_bytes(raw)
    spec = tmp / "fuzz.yaml"
    spec.write_text(_DATA_SPEC, encoding="utf-8")
    code, output = _run(["validate", str(spec)])
    _no_internal_error(code, output)
    out = tmp / "run"
    code, output = _run(["train", str(spec), "-o", str(out)])
    _no_internal_error(code, output)
    _nothing_half_written(out, code, "model*.safetensors")
