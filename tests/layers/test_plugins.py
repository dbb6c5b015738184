"""Third-party layers register through the ``odespec.layers`` entry-point group, and the schema
used for validation grows with them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
from odespec.layers import LayerType


class Scale(LayerType):
    name = "scale"
    description = "Multiply by a constant factor."
    properties = {"factor": {"type": "number", "description": "The factor.", "default": 2.0}}
    shorthand = "factor"

    def build(self, options, shape, ctx):
        import torch

        class _Scale(torch.nn.Module):
            def forward(self, x):
                return x * options["factor"]

        return _Scale()
'''

CHECK = '''
import torch, odespec
from odespec.errors import SpecError
from odespec.spec import parse_spec

spec = parse_spec("odespec: 1\\nname: p\\ninput: {shape: [2]}\\nmodel: [{scale: 3}, relu]\\n")
model = odespec.build(spec)
x = torch.tensor([[1.0, -1.0]])
print(model(x).tolist())
try:
    parse_spec("odespec: 1\\nname: p\\ninput: {shape: [2]}\\nmodel: [{scal: 3}]\\n", "bad.yaml")
except SpecError as e:
    print(e.issues[0].message, "|", e.issues[0].hint)
'''


def test_entry_point_layer_is_validated_built_and_suggested(tmp_path: Path):
    (tmp_path / "odespec_plugin_demo.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "odespec_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: odespec-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[odespec.layers]\nscale = odespec_plugin_demo:Scale\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[[3.0, 0.0]]"
    assert lines[1] == "unknown layer 'scal' | did you mean 'scale'?"
