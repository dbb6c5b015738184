"""Third-party data sources register through the ``odespec.data`` entry-point group, as layers
do through ``odespec.layers``: the schema used for validation grows with their options, a
misspelt name gets a did-you-mean, a duplicate name is refused, and ``odespec train`` loads them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from odespec.train import data as sources
from odespec.train.data import DataSource, UnknownDataSourceError

PLUGIN = '''
from odespec.train.data import DataShapes, DataSource, LoadedData


class Sine(DataSource):
    name = "sine"
    description = "y = sin(freq * x0) + x1 at random points of the square [-1, 1]^2."
    properties = {
        "count": {"type": "integer", "minimum": 2, "maximum": 1000, "description": "Samples.", "default": 16},
        "freq": {"type": "number", "description": "Frequency.", "default": 1.0},
    }

    def shapes(self, options):
        return DataShapes(input=(2,), target=(1,))

    def load(self, options, *, seed, base_dir, need):
        import numpy as np

        x = np.random.default_rng([seed, 0]).uniform(-1, 1, (options["count"], 2))
        y = np.sin(options["freq"] * x[:, :1]) + x[:, 1:]
        return LoadedData(x, y)


class Ring(DataSource):
    name = "ring"
    description = "Needs a radius."
    required = ("radius",)
    shorthand = "radius"
    properties = {"radius": {"type": "number", "exclusiveMinimum": 0, "description": "The radius."}}


def register_more(register):
    register(Ring)
'''

CHECK = '''
import json, sys
import odespec
from odespec.errors import SpecError
from odespec.spec import parse_spec
from odespec.train import data as sources

HEAD = "odespec: 1\\nname: p\\ninput: {shape: [2]}\\nmodel: [{linear: 4}, tanh, {linear: 1}]\\n"
spec = parse_spec(HEAD + "train: {data: {sine: {count: 8}}, iterations: 2, batch_size: 4}\\n")
print(json.dumps(dict(spec.train.data.options)))
print(spec.train.loss.kind)
for train in ("{data: sin}", "{data: {sine: {cnt: 8}}}", "{data: {sine: {count: 1}}}", "{data: ring}",
              "{data: {ring: -1}}"):
    try:
        parse_spec(HEAD + "train: " + train + "\\n", "bad.yaml")
        print("valid")
    except SpecError as e:
        print(" || ".join(f"{i.message} | {i.hint}" for i in e.issues))
print(parse_spec(HEAD + "train: {data: {ring: 2}}\\n").train.data.options["radius"])
print(sources.plugin_names())
try:
    sources.get("sinus")
except KeyError as e:
    print(e.args[0])
spec_file = sys.argv[1]
result = odespec.train.train(spec_file, sys.argv[2], progress=False)
print(result.iterations, sorted(result.evaluation))
'''

DUPLICATE = '''
from odespec.train.generators import Circles


class MyCircles(Circles):
    pass
'''


def _install(tmp_path: Path, module: str, source: str, entry_points: str) -> dict[str, str]:
    """A plugin module and a dist-info that declares its entry points, on PYTHONPATH."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))


def test_entry_point_data_source_is_validated_suggested_and_trained(tmp_path: Path):
    env = _install(tmp_path, "odespec_data_demo", PLUGIN,
                   "[odespec.data]\nsine = odespec_data_demo:Sine\nmore = odespec_data_demo:register_more\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("odespec: 1\nname: p\ninput: {shape: [2]}\nmodel: [{linear: 4}, tanh, {linear: 1}]\n"
                    "train: {data: {sine: {count: 8, freq: 2}}, iterations: 2, batch_size: 4}\n")
    out = subprocess.run([sys.executable, "-c", CHECK, str(spec), str(tmp_path / "run")], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == '{"count": 8, "freq": 1.0}'  # the plugin's defaults filled in
    assert lines[1] == "mse"  # values as targets: the default loss
    assert lines[2] == "unknown data source 'sin' | did you mean 'sine'?"
    assert lines[3] == "unknown key 'cnt' | did you mean 'count'?"  # the plugin's options schema
    assert lines[4] == "1 is not >= 2 | Samples."
    assert lines[5] == "data source 'ring' needs options (radius) | write data: {ring: VALUE} (short for " \
                       "{ring: {radius: VALUE}})"
    assert lines[6] == "-1 is not > 0 | The radius."  # the short form's schema
    assert lines[7] == "2"  # the short form
    assert lines[8] == "['ring', 'sine']"
    assert lines[9] == "unknown data source 'sinus'; did you mean 'sine'?"
    assert lines[10] == "2 ['eval_loss']"


def test_an_entry_point_that_reuses_a_name_is_refused(tmp_path: Path):
    env = _install(tmp_path, "odespec_data_dup", DUPLICATE, "[odespec.data]\ncircles = odespec_data_dup:MyCircles\n")
    code = "from odespec.train import data\ndata.names()\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "ValueError: a data source named 'circles' is already registered (Circles)" in out.stderr


def test_register_refuses_duplicates_and_non_sources():
    class Again(DataSource):
        name = "circles"
        description = "A second source of that name."

    before = sources.names()
    with pytest.raises(ValueError, match="a data source named 'circles' is already registered"):
        sources.register(Again)
    with pytest.raises(TypeError, match="is not a DataSource subclass"):
        sources.register(dict)  # type: ignore[type-var]
    assert sources.names() == before and type(sources.get("circles")).__name__ == "Circles"


def test_unknown_source_is_a_key_error_with_a_suggestion():
    with pytest.raises(UnknownDataSourceError) as e:
        sources.get("spiral")
    assert isinstance(e.value, KeyError) and e.value.suggestion == "spirals"
    assert e.value.args[0] == "unknown data source 'spiral'; did you mean 'spirals'?"
    with pytest.raises(KeyError, match=r"^\"unknown data source 'zzz'\"$"):
        sources.get("zzz")
    assert sources.plugin_names() == []  # nothing but the built-ins in this environment
