"""ONNX export of models that read irregular series (issue #13): the graph takes ``input``,
``times``, ``mask``, ``query_times``; every sample is solved on its own grid in the graph (the
per-sample change of time variable), so a batch gives what each sample gives alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import odespec
from odespec.cli import cli
from odespec.errors import ExportError, InputFileError
from odespec.export.calibrate import nfe_per_forward
from odespec.export.inputs import SEEDED_SPAN, call_model, seeded_input_set, seeded_series, series_inputs
from odespec.export.inspect import inspect_onnx, render_inspect
from odespec.export.latency import export_latencies
from odespec.export.onnx_export import ExportSettings
from odespec.export.run import load_series_inputs, open_model_inputs, run_onnx
from odespec.export.session import ort_session
from odespec.export.unroll import fixed_step_model
from odespec.layers.series_modules import ODERNN
from odespec.spec import parse_spec

T, F, Q = 6, 2, 5

#: the latent ODE of Rubanova et al. in small: ODE-RNN encoder (reverse, masked) -> q(z0) ->
#: latent ODE at each sample's query times (from start 0.5) -> decoder
LATENT = f"""
odespec: 1
name: series-latent
seed: 3
input: {{shape: [{T}, {F}], times: true, mask: true, query: {Q}}}
model:
  - ode_rnn: {{hidden: 6, start: -1}}
  - linear: 8
  - gaussian
  - ode:
      t: query
      start: 0.5
      output: trajectory
      dynamics: {{layers: [{{linear: 8}}, tanh, {{linear: 4}}]}}
      solver: {{method: dopri5, rtol: 1e-6, atol: 1e-8}}
  - linear: {F}
export:
  onnx: {{method: rk4, steps: 2}}
"""

#: a forward ODE-RNN without a mask, into a t: query block whose dynamics read t (time: concat)
TIMED = f"""
odespec: 1
name: series-timed
seed: 1
input: {{shape: [{T}, {F}], times: true, query: {Q}}}
model:
  - ode_rnn: {{hidden: 5, reverse: false, solver: {{method: euler, steps: 3}}}}
  - ode:
      t: query
      output: final
      augment: 1
      dynamics: {{time: concat, layers: [{{linear: 8}}, tanh, {{linear: 6}}]}}
      solver: {{method: rk4, steps: 4}}
  - linear: 3
export:
  onnx: {{method: midpoint, steps: 3}}
"""

#: the baselines: a GRU fed the time gaps, then an RNN decoder over the query-time gaps
BASELINE = f"""
odespec: 1
name: series-baseline
seed: 2
input: {{shape: [{T}, {F}], times: true, mask: true, query: {Q}}}
model:
  - gru: {{hidden: 7, time_gaps: true, reverse: true}}
  - rnn_decoder: {{cell: gru}}
  - linear: {F}
"""

SPECS = {"latent": LATENT, "timed": TIMED, "baseline": BASELINE}


def model_of(name: str) -> odespec.compile.model.ODENet:
    return odespec.build(parse_spec(SPECS[name], f"{name}.yaml"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[object, odespec.ExportResult]]:
    d = tmp_path_factory.mktemp("series")
    out = {}
    for name in SPECS:
        model = model_of(name)
        out[name] = (model, odespec.export_onnx(model, d / f"{name}.onnx", latency=False))
    return out


def grid(n: int, seed: int, *, lo: float = 0.0, span: float = 4.0, query_lo: float = 0.5,
         names: tuple[str, ...] = ("times", "mask", "query_times")) -> dict[str, np.ndarray]:
    """``n`` samples with their own grids: sorted times on [lo, lo + span] (the last two slots of
    sample 0 padded: its last time repeated, mask 0), ~30 % masked, query times after query_lo."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(lo, lo + span, (n, T)), axis=1)
    mask = (rng.random((n, T, F)) > 0.3).astype(np.float32)
    mask[:, 0] = 1
    times[0, -2:] = times[0, -3]
    mask[0, -2:] = 0
    query = np.sort(rng.uniform(query_lo, query_lo + 1.5 * span, (n, Q)), axis=1)
    x = rng.standard_normal((n, T, F)).astype(np.float32)
    arrays = {"input": x, "times": times.astype(np.float32), "mask": mask, "query_times": query.astype(np.float32)}
    return {k: v for k, v in arrays.items() if k == "input" or k in names}


def names_of(model) -> tuple[str, ...]:
    return tuple(model.spec.series.input_names)


# -- the graph ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(SPECS))
def test_graph_takes_the_series_inputs_with_a_dynamic_batch_and_passes_parity(exported, name):
    model, result = exported[name]
    sess, inputs = open_model_inputs(result.path)
    assert [i.name for i in inputs] == list(names_of(model))
    shapes = {"input": ["batch", T, F], "times": ["batch", T], "mask": ["batch", T, F], "query_times": ["batch", Q]}
    assert [list(i.shape) for i in inputs] == [shapes[i.name] for i in inputs]
    assert result.parity["ok"] and result.parity["batch_sizes"] == [1, 7, 256]
    assert "per-sample times" in result.deployment_error["inputs"]
    assert np.isfinite(result.deployment_error["max_abs_error"])


@pytest.mark.parametrize("name", list(SPECS))
def test_two_samples_with_different_grids_in_one_batch_give_what_each_gives_alone(exported, name):
    """The acceptance check, in onnxruntime and in PyTorch, at times never seen before (a range
    the seeded inputs never reach)."""
    model, result = exported[name]
    sess = ort_session(result.path)
    names = names_of(model)[1:]
    a = grid(1, 0, lo=40.0, span=3.0, query_lo=41.0, names=names)
    b = grid(1, 1, lo=40.5, span=9.0, query_lo=42.0, names=names)
    both = {k: np.concatenate([a[k], b[k]]) for k in a}
    (y_both,) = sess.run(None, both)
    (y_a,) = sess.run(None, a)
    (y_b,) = sess.run(None, b)
    # float32 round-off: the same operations, on rows of different batches
    np.testing.assert_allclose(y_both, np.concatenate([y_a, y_b]), rtol=1e-5, atol=1e-6)
    twin = fixed_step_model(model, result.method, result.steps).eval()
    with torch.no_grad():
        pt = {k: torch.from_numpy(v) for k, v in both.items()}
        want = call_model(twin, pt).numpy()
        alone = [call_model(twin, {k: v[i:i + 1] for k, v in pt.items()}).numpy() for i in range(2)]
    np.testing.assert_allclose(want, np.concatenate(alone), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_both, want, rtol=1e-4, atol=1e-4)


def test_each_sample_gets_steps_per_interval_of_its_own_length(exported):
    """Doubling a sample's time scale changes its output; the other sample's does not move: the
    step size is computed per sample in the graph, not from a grid shared by the batch."""
    model, result = exported["timed"]
    sess = ort_session(result.path)
    g = grid(2, 5, names=names_of(model)[1:])
    (y0,) = sess.run(None, g)
    g2 = dict(g)
    g2["times"] = g["times"].copy()
    g2["query_times"] = g["query_times"].copy()
    g2["times"][1] *= 2
    g2["query_times"][1] *= 2
    (y1,) = sess.run(None, g2)
    np.testing.assert_array_equal(y0[0], y1[0])
    assert np.abs(y0[1] - y1[1]).max() > 1e-3


def test_the_fixed_step_twin_keeps_a_fixed_step_ode_rnn_as_trained_and_shares_its_weights():
    model = model_of("latent")
    twin = fixed_step_model(model, "midpoint", 5)
    (rnn,) = [m for m in twin if isinstance(m, ODERNN)]
    (orig,) = [m for m in model if isinstance(m, ODERNN)]
    # the encoder's own rk4 x 1 per gap: the map it was trained as, exactly exportable
    assert rnn.solver.method == "rk4" and rnn.solver.steps == 1 and rnn is not orig
    assert rnn.cell is orig.cell and rnn.dynamics is orig.dynamics
    # T gaps of 1 rk4 step (4 stages) in the encoder, Q intervals of 5 midpoint steps in the latent ODE
    assert nfe_per_forward(model, "midpoint", 5) == T * 4 + Q * 10


def test_an_adaptive_ode_rnn_takes_the_export_method_and_steps(tmp_path: Path):
    text = LATENT.replace("ode_rnn: {hidden: 6, start: -1}",
                          "ode_rnn: {hidden: 6, start: -1, solver: {method: dopri5, rtol: 1e-6, atol: 1e-8}}")
    model = odespec.build(parse_spec(text, "adaptive.yaml"))
    (rnn,) = [m for m in fixed_step_model(model, "midpoint", 5) if isinstance(m, ODERNN)]
    assert rnn.solver.method == "midpoint" and rnn.solver.steps == 5
    assert nfe_per_forward(model, "midpoint", 5) == T * 10 + Q * 10
    res = odespec.export_onnx(model, tmp_path / "m.onnx", method="midpoint", steps=5, latency=False)
    assert res.parity["ok"] and res.nfe_per_forward == T * 10 + Q * 10


def test_loop_layout_is_refused_for_per_sample_solves(tmp_path: Path):
    with pytest.raises(ExportError, match="loop layout is not available") as e:
        odespec.export_onnx(model_of("latent"), tmp_path / "m.onnx", loop=True)
    assert "unrolled" in e.value.hint
    assert not (tmp_path / "m.onnx").exists()


def test_steps_auto_calibrates_a_series_model(tmp_path: Path):
    model = model_of("latent")
    res = odespec.export_onnx(model, tmp_path / "m.onnx", method="rk4", steps="auto", match_tol=1e-3, latency=False)
    assert res.calibration is not None and res.steps >= 1
    assert res.calibration["error"] <= 1e-3 and res.calibration["steps"] == res.steps
    assert res.deployment_error["max_abs_error"] <= 1e-3 + 1e-4


def test_latency_feeds_every_input():
    ms = export_latencies(model_of("latent"), {"rk4": ExportSettings(method="rk4", steps=1),
                                               "euler": ExportSettings(method="euler", steps=2)})
    assert set(ms) == {"rk4", "euler"} and all(v > 0 for v in ms.values())


# -- seeded inputs -----------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9))
def test_seeded_grids_follow_the_data_contract(seed: int, n: int):
    series = series_inputs(model_of("latent"))
    assert series is not None and series.times_start == -1.0 and series.query_start == 0.5
    (g,) = seeded_series(series, [n], dtype=torch.float64, seed=seed)
    times, mask, query = g["times"], g["mask"], g["query_times"]
    assert times.shape == (n, T) and mask.shape == (n, T, F) and query.shape == (n, Q)
    assert bool((times[:, 1:] >= times[:, :-1]).all()) and bool((query[:, 1:] >= query[:, :-1]).all())
    assert bool((times >= -1.0).all()) and bool((times <= -1.0 + SEEDED_SPAN).all()) and bool((query >= 0.5).all())
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and bool((mask[:, 0] == 1).all())
    # a padded slot repeats the last time and is masked
    tie = times[:, 1:] == times[:, :-1]
    assert bool((mask[:, 1:][tie] == 0).all())


def test_seeded_input_set_of_a_plain_model_is_unchanged():
    plain = seeded_input_set((3,), dtype=torch.float32, seed=4)
    assert plain.series == () and [list(f) for f in plain.feeds()] == [["input"]] * 3


# -- odespec run, --calibration-data, inspect --------------------------------------------------------

def save(path: Path, arrays: dict[str, np.ndarray], *, input_as_x: bool = False) -> Path:
    named = {("x" if input_as_x and k == "input" else k): v for k, v in arrays.items()}
    np.savez(path, **named)
    return path


@pytest.mark.parametrize("input_as_x", [False, True])
def test_run_feeds_an_npz_with_an_array_per_input(exported, tmp_path: Path, input_as_x: bool):
    _, result = exported["latent"]
    g = grid(3, 2)
    want = ort_session(result.path).run(None, g)[0]
    # a masked value may be NaN: it is fed as 0, which the model never reads
    g_nan = dict(g)
    g_nan["input"] = np.where(g["mask"] == 0, np.nan, g["input"])
    out = run_onnx(result.path, save(tmp_path / "d.npz", g_nan, input_as_x=input_as_x))
    np.testing.assert_array_equal(out.arrays[0], want)
    assert [d["name"] for d in out.to_dict(with_data=False)["inputs"]] == ["input", "times", "mask", "query_times"]
    r = CliRunner().invoke(cli, ["run", str(result.path), "-i", str(tmp_path / "d.npz"), "-o", str(tmp_path / "y.npy")])
    assert r.exit_code == 0, r.output
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def _broken(g: dict[str, np.ndarray], how: str) -> dict[str, np.ndarray]:
    g = {k: v.copy() for k, v in g.items()}
    if how == "missing":
        del g["mask"]
    elif how == "shape":
        g["times"] = g["times"][:, :-1]
    elif how == "count":
        g["query_times"] = g["query_times"][:2]
    elif how == "backwards":
        g["times"][1, 3] = g["times"][1, 2] - 1
    elif how == "nan_observed":
        g["input"][2, 1, 0] = np.nan
        g["mask"][2, 1, 0] = 1
    elif how == "mask_values":
        g["mask"][0, 0, 0] = 0.5
    elif how == "query_before_start":
        g["query_times"][1, 0] = 0.0  # the block starts at 0.5
    elif how == "times_before_start":
        g["times"][0, 0] = -2.0  # the ODE-RNN starts at -1
    elif how == "inf_times":
        g["times"][0, -1] = np.inf
    return g


@pytest.mark.parametrize("how, words", [
    ("missing", "no array 'mask'"),
    ("shape", "array 'times': shape (3, 5); the model's input 'times' takes (batch, 6)"),
    ("count", "different numbers of samples"),
    ("backwards", "array 'times': sample 1 goes back in time at index 3"),
    ("nan_observed", "array 'input': NaN at index (2, 1, 0)"),
    ("mask_values", "array 'mask': 0.5 at index (0, 0, 0) is not 0 or 1"),
    ("query_before_start", "array 'query_times': sample 1 has 0.0 at index 0, before 0.5"),
    ("times_before_start", "array 'times': sample 0 has -2.0 at index 0, before -1.0"),
    ("inf_times", "array 'times': inf at index (0, 5)"),
])
def test_run_refuses_a_bad_array_naming_it(exported, tmp_path: Path, how: str, words: str):
    _, result = exported["latent"]
    path = save(tmp_path / "bad.npz", _broken(grid(3, 2), how))
    with pytest.raises(InputFileError) as e:
        run_onnx(result.path, path)
    assert words in str(e.value) and str(path) in str(e.value)
    r = CliRunner().invoke(cli, ["run", str(result.path), "-i", str(path)])
    assert r.exit_code == 2 and words in r.output and "Traceback" not in r.output


def test_run_of_a_series_model_wants_an_npz(exported, tmp_path: Path):
    _, result = exported["latent"]
    np.save(tmp_path / "x.npy", grid(3, 2)["input"])
    with pytest.raises(InputFileError, match="they are read from one .npz file"):
        run_onnx(result.path, tmp_path / "x.npy")


def test_calibration_data_feeds_every_input_from_the_file(exported, tmp_path: Path):
    model, _ = exported["latent"]
    path = save(tmp_path / "cal.npz", grid(300, 9), input_as_x=True)
    res = odespec.export_onnx(model, tmp_path / "m.onnx", calibration_data=path, latency=False)
    assert res.deployment_error["inputs"] == "cal.npz (300 samples)" and res.deployment_error["samples"] == 300
    with pytest.raises(InputFileError, match="no array 'query_times'"):
        g = grid(4, 9)
        del g["query_times"]
        odespec.export_onnx(model, tmp_path / "m2.onnx", calibration_data=save(tmp_path / "bad.npz", g))


def test_load_series_inputs_casts_and_zeroes_masked_values(exported, tmp_path: Path):
    _, result = exported["latent"]
    g = grid(2, 4)
    g["input"] = np.where(g["mask"] == 0, np.nan, g["input"]).astype(np.float64)
    g["mask"] = g["mask"].astype(bool)
    _, inputs = open_model_inputs(result.path)
    feeds = load_series_inputs(save(tmp_path / "d.npz", g), inputs)
    assert all(v.dtype == np.float32 for v in feeds.values())
    assert np.isfinite(feeds["input"]).all() and (feeds["input"][g["mask"] == 0] == 0).all()


def test_inspect_lists_every_input_with_its_shape(exported):
    _, result = exported["latent"]
    info = inspect_onnx(result.path)
    text = render_inspect(info)
    for line in ("input        float32   (batch, 6, 2)", "times        float32   (batch, 6)",
                 "mask         float32   (batch, 6, 2)", "query_times  float32   (batch, 5)"):
        assert line in text
    assert '"starts": {"times": -1, "query_times": 0.5}' in text
    r = CliRunner().invoke(cli, ["inspect", str(result.path), "--format", "json"])
    assert r.exit_code == 0
    assert "query_times" in r.output
