"""The series layers' torch side: the whole compiled series model (ODE-RNN encoder, time-gap
GRU, RNN decoder, ODE block with t: query; fixed-step solvers everywhere) traces with
``torch.onnx.export`` with a dynamic batch, and onnxruntime computes what PyTorch does on random
per-sample grids it never saw while tracing."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

import odespec
from odespec.spec import parse_spec

T, F, Q = 5, 2, 4

SPECS = {
    "latent_ode": f"""
odespec: 1
name: latent
input: {{shape: [{T}, {F}], times: true, mask: true, query: {Q}}}
model:
  - ode_rnn: {{hidden: 6, solver: {{method: rk4, steps: 2}}}}
  - linear: 6
  - gaussian
  - ode:
      t: query
      start: -0.25
      output: trajectory
      dynamics: {{time: concat, layers: [{{linear: 8}}, tanh, {{linear: 3}}]}}
      solver: {{method: midpoint, steps: 2}}
  - linear: {F}
""",
    "baselines": f"""
odespec: 1
name: baselines
input: {{shape: [{T}, {F}], times: true, mask: true, query: {Q}}}
model:
  - gru: {{hidden: 6, time_gaps: true, reverse: true}}
  - rnn_decoder: {{cell: rnn}}
  - linear: {F}
""",
}


def inputs(batch: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 3, (batch, T)), axis=1)
    mask = (rng.uniform(size=(batch, T, F)) > 0.3).astype(np.float32)
    query = np.sort(rng.uniform(-0.25, 4, (batch, Q)), axis=1)
    return [rng.normal(size=(batch, T, F)).astype(np.float32), times.astype(np.float32), mask,
            query.astype(np.float32)]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_a_compiled_series_model_exports_with_torch_onnx_and_runs_in_onnxruntime(name):
    model = odespec.build(parse_spec(SPECS[name], f"{name}.yaml")).eval()
    names = list(model.spec.series.input_names)
    buf = io.BytesIO()
    example = tuple(torch.from_numpy(a) for a in inputs(2, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the solver's Python-side checks
        torch.onnx.export(model, example, buf, dynamo=False, opset_version=17, input_names=names,
                          output_names=["output"], dynamic_axes={n: {0: "batch"} for n in names + ["output"]})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == names
    for batch, seed in ((1, 1), (7, 2)):
        arrays = inputs(batch, seed)
        with torch.no_grad():
            want = model(*(torch.from_numpy(a) for a in arrays)).numpy()
        got = sess.run(None, dict(zip(names, arrays, strict=True)))[0]
        assert got.shape == want.shape == (batch, Q, F)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
        # two grids in one onnxruntime batch: each sample gets what it gets alone
        alone = sess.run(None, {n: a[:1] for n, a in zip(names, arrays, strict=True)})[0]
        np.testing.assert_allclose(got[:1], alone, rtol=1e-5, atol=1e-6)
