"""Output errors and the deployment error: each report field has one meaning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import odespec
from odespec.errors import ExportError
from odespec.export.inputs import InputSet
from odespec.export.metrics import OutputError, deployment_skipped, model_outputs, output_error

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


def test_output_error_is_max_abs_and_max_abs_over_the_largest_magnitude():
    want = [np.array([[100.0, 0.001]]), np.array([[-50.0, 0.0]])]
    got = [np.array([[100.01, 0.002]]), np.array([[-50.0, 0.0]])]
    err = output_error(got, want)
    assert isinstance(err, OutputError)
    assert err.max_abs == pytest.approx(0.01)
    # the largest error as a fraction of the largest magnitude (100), not element-wise (0.001 / 0.001 = 1)
    assert err.max_scaled == pytest.approx(1e-4)
    assert output_error([np.zeros((1, 2))], [np.zeros((1, 2))]) == (0.0, 0.0)
    assert output_error([np.ones((1, 2))], [np.zeros((1, 2))]) == (1.0, math.inf)
    assert output_error([np.array([[np.nan, 0.0]])], [np.zeros((1, 2))]) == (math.inf, math.inf)
    with pytest.raises(ExportError, match="internal error: output shape"):
        output_error([np.zeros((1, 3))], [np.zeros((1, 2))])


def test_model_outputs_run_in_eval_mode_without_gradients_and_restore_the_mode():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((self.training, torch.is_grad_enabled()))
            return x.float() * 2

    m = Probe().train()
    outs = model_outputs(m, InputSet((torch.ones(2, 3), torch.ones(1, 3)), "ones"))
    assert [o.dtype for o in outs] == [np.float64, np.float64] and float(outs[0][0, 0]) == 2.0
    assert seen == [(False, False), (False, False)] and m.training


def test_the_deployment_error_names_its_relative_measure_apart_from_paritys(tmp_path: Path):
    r = odespec.export_onnx(odespec.build(DEMO), tmp_path / "d.onnx", steps=4)
    dep, parity = r.deployment_error, r.parity
    assert "max_rel_error" not in dep and dep["max_scaled_error"] > 0  # parity's is element-wise
    assert "max_rel_error" in parity and "max_scaled_error" not in parity
    meta = {p.key: p.value for p in onnx.load(str(r.path)).metadata_props}
    stored = json.loads(meta["deployment_error"])
    assert stored["max_scaled_error"] == dep["max_scaled_error"] and "max_rel_error" not in stored
    assert set(stored) == {"max_abs_error", "max_scaled_error", "reference", "inputs"}


def test_a_skipped_deployment_error_says_why_in_one_line():
    model = odespec.build(DEMO)
    entry = deployment_skipped(model, InputSet((), "some inputs"), ExportError("it failed", "a hint"))
    assert entry == {"reference": ["dopri5 rtol=1e-07 atol=1e-09"], "inputs": "some inputs", "skipped": "it failed"}
