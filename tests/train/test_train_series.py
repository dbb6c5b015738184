"""Irregular series in training (issue #13): the npz series arrays and the oscillators
generator, batches that carry times, masks and query times, masked losses, and the loop passing
them to the model and the loss. The spec language for series models is another part of the
issue, so the end-to-end runs train a hand-built module with ``ODENet``'s keyword signature on a
spec whose ``series`` (and data) are set directly."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import nn

from odespec.compile.model import ModelOutput
from odespec.spec import load_spec
from odespec.spec.model import DataSpec, LayerSpec, Location, LossSpec, SeriesSpec, Spec
from odespec.train import DataError
from odespec.train import data as sources
from odespec.train.batches import Batches
from odespec.train.check import check_train
from odespec.train.data import Need
from odespec.train.generators import oscillator_states, oscillators
from odespec.train.losses import counted_samples, make_loss

SERIES = SeriesSpec(times=True, mask=True, query=12)


def need(series: Optional[SeriesSpec] = SERIES, out: tuple[int, ...] = (12, 2), start: Optional[float] = 0.0,
         labels: bool = False) -> Need:
    return Need((12, 2), out, labels, series, start)


def load(name: str, options: Any, n: Need, *, seed: int = 0, base: Path = Path(".")):
    src = sources.get(name)
    return src.load(src.normalize(options), seed=seed, base_dir=base, need=n)


# -- the oscillators generator ---------------------------------------------------------------------
def test_oscillator_velocity_is_the_derivative_of_position():
    t = np.linspace(0, 5, 2001)[None, :]
    s = oscillator_states(t, np.array([1.7]), np.array([0.15]), np.array([1.2]), np.array([0.4]))[0]
    np.testing.assert_allclose(np.gradient(s[:, 0], t[0], edge_order=2), s[:, 1], atol=1e-4)


def test_oscillators_are_irregular_padded_masked_and_seeded():
    a = oscillators(300, points=20, min_points=8, missing=0.3, seed=[3, 0])
    times, mask = a["times"], a["mask"]
    lengths = mask.any(axis=2).sum(axis=1)  # observed slots; padding is never observed
    assert times.shape == (300, 20) and mask.shape == (300, 20, 2) and a["x"].shape == (300, 20, 2)
    assert (np.diff(times, axis=1) >= 0).all() and times.min() >= 0 and times.max() <= 10
    assert len({tuple(r) for r in times.round(6)}) == 300  # every series has times of its own
    real = a["y_clean_mask"][..., 0].astype(bool)
    counts = real.sum(axis=1)
    assert counts.min() >= 8 and counts.max() == 20 and len(set(counts)) > 5  # variable lengths, padded
    for i in np.flatnonzero(counts < 20)[:5]:  # padding repeats the last real time, masked
        assert (times[i, counts[i]:] == times[i, counts[i] - 1]).all() and not mask[i, counts[i]:].any()
    assert (lengths >= 1).all()
    assert 0.6 < mask[real].mean() < 0.8  # missing: 0.3 of the real values
    assert np.isnan(a["x"][mask == 0]).all() and np.isfinite(a["x"][mask == 1]).all()
    assert "query_times" not in a and "y" not in a  # interpolation: the outputs are at the observation times
    b = oscillators(300, points=20, min_points=8, missing=0.3, seed=[3, 0])
    np.testing.assert_array_equal(a["times"], b["times"])
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(oscillators(300, points=20, seed=[4, 0])["times"], times[:, :20])


def test_oscillators_noise_is_on_the_observations_and_the_truth_is_noiseless():
    noisy = oscillators(50, points=10, noise_std=0.1, seed=1)
    clean = oscillators(50, points=10, noise_std=0.0, seed=1)
    np.testing.assert_array_equal(noisy["y_clean"], clean["y_clean"])
    m = noisy["mask"] == 1
    np.testing.assert_array_equal(clean["x"][m], clean["y_clean"][m])
    assert 0.07 < np.std(noisy["x"][m] - noisy["y_clean"][m]) < 0.13


def test_oscillators_extrapolation_observes_the_first_half_and_asks_for_the_second():
    a = oscillators(100, points=10, query_points=15, task="extrapolation", stop=8.0, seed=2)
    assert a["times"].max() <= 4.0 and a["query_times"].min() >= 4.0 and a["query_times"].max() <= 8.0
    assert a["query_times"].shape == (100, 15) and a["y"].shape == (100, 15, 2) and a["y_mask"].shape == (100, 15, 2)
    assert (np.diff(a["query_times"], axis=1) >= 0).all()
    assert np.isnan(a["y"][a["y_mask"] == 0]).all() and 0.6 < a["y_mask"].mean() < 0.8


def test_oscillators_source_trains_on_observations_and_evaluates_against_the_truth():
    options = {"count": 40, "eval_count": 10, "points": 12, "min_points": 6}
    d = load("oscillators", options, need())
    assert d.x.shape == (40, 12, 2) and d.y.shape == (40, 12, 2) and d.x_eval.shape == (10, 12, 2)
    assert np.isfinite(d.x).all() and np.isfinite(d.y).all()  # NaN never leaves the loader
    assert set(d.series) == {"times", "mask", "query_times", "y_mask"}
    np.testing.assert_array_equal(d.series["y_mask"], d.series["mask"])  # reconstruct what was observed
    np.testing.assert_array_equal(d.series["query_times"], d.series["times"])
    truth = oscillators(10, points=12, min_points=6, seed=[0, 1])
    real = truth["y_clean_mask"] == 1
    np.testing.assert_array_equal(d.y_eval[real], truth["y_clean"][real])  # noiseless, missing values included
    assert (d.y_eval[~real] == 0).all()  # padding
    np.testing.assert_array_equal(d.series_eval["y_mask"], truth["y_clean_mask"])
    assert d.series_eval["y_mask"].mean() > d.series_eval["mask"].mean()
    # a model that reads only times gets only times (and the targets' mask)
    assert set(load("oscillators", options, need(SeriesSpec(times=True))).series) == {"times", "y_mask"}
    src = sources.get("oscillators")
    o = src.normalize({"task": "extrapolation", "points": 12, "query_points": 7})
    shapes = src.shapes(o)
    assert (shapes.input, shapes.target, shapes.series, shapes.query) == ((12, 2), (7, 2), True, 7)
    assert src.noise_std(o) == 0.05


# -- the npz source ------------------------------------------------------------------------------------
def _file(tmp: Path, name: str = "s.npz", **drop_or_set: Any) -> Path:
    a = oscillators(20, points=12, min_points=6, seed=5)
    arrays = {"x": a["x"], "times": a["times"], "mask": a["mask"]}
    arrays.update({k: v for k, v in drop_or_set.items() if v is not None})
    for k, v in drop_or_set.items():
        if v is None:
            arrays.pop(k)
    np.savez(tmp / name, **arrays)
    return tmp / name


def test_npz_series_file_is_read_by_the_contract(tmp_path: Path):
    _file(tmp_path)
    d = load("npz", {"path": "s.npz", "eval_path": "s.npz"}, need(), base=tmp_path)
    assert set(d.series) == set(d.series_eval) == {"times", "mask", "query_times", "y_mask"}
    assert np.isfinite(d.x).all()
    plain = load("npz", "s.npz", need(SeriesSpec(mask=True, query=None), start=None), base=tmp_path)
    assert set(plain.series) == {"mask", "y_mask"} and plain.series_eval is None


def test_npz_series_errors_name_the_file_and_array(tmp_path: Path):
    _file(tmp_path, times=None)
    with pytest.raises(DataError, match=r"s\.npz has no array 'times', which the model reads"):
        load("npz", "s.npz", need(), base=tmp_path)
    bad = oscillators(20, points=12, seed=5)["times"]
    bad[7, [3, 4]] = bad[7, [4, 3]] if bad[7, 3] != bad[7, 4] else (0, -1)
    _file(tmp_path, times=bad)
    with pytest.raises(DataError, match=r"s\.npz, array 'times': sample 7 goes back in time at index 4"):
        load("npz", "s.npz", need(), base=tmp_path)
    # a plain model is told how to read the series
    _file(tmp_path)
    with pytest.raises(DataError, match="holds irregular-series arrays .*'times', 'mask'.* reads no times") as e:
        load("npz", "s.npz", Need((12, 2), (12, 2), False), base=tmp_path)
    assert "times: true" in str(e.value)


# -- validation ----------------------------------------------------------------------------------------
def _validate(tmp: Path, data: Any, series: Optional[SeriesSpec], *, out: int = 12, loss: Optional[str] = None,
              batch_size: int = 8) -> list[str]:
    spec = tmp / "m.yaml"
    spec.write_text(f"odespec: 1\nname: m\ninput: {{shape: [{out}, 2]}}\nmodel:\n  - linear: 2\n")
    items = load_spec(spec).model
    errors: list[str] = []

    def error(path: Any, message: str, hint: Optional[str] = None, *, key: bool = False) -> None:
        errors.append(message + (f" | {hint}" if hint else ""))

    raw = {"data": data, "batch_size": batch_size, **({"loss": loss} if loss else {})}
    check_train(raw, items, (12, 2), error, lambda p: Location("m.yaml", 1, 1, "train"), tmp, series=series)
    return errors


def test_validate_checks_a_series_file_from_its_headers(tmp_path: Path):
    _file(tmp_path)
    assert _validate(tmp_path, {"npz": "s.npz"}, SERIES) == []
    (e,) = _validate(tmp_path, {"npz": "s.npz"}, SeriesSpec(times=True, mask=True, query=9), out=9)
    assert "has no array 'query_times', so the outputs are at the 12 observation times" in e
    (e,) = _validate(tmp_path, {"npz": "s.npz"}, None)
    assert "holds irregular-series arrays" in e and "times: true" in e
    (e,) = _validate(tmp_path, {"npz": "s.npz"}, SERIES, batch_size=32)
    assert "batch_size 32 is larger than the 20 training samples" in e
    _file(tmp_path, times=None)
    (e,) = _validate(tmp_path, {"npz": "s.npz"}, SERIES)
    assert "s.npz has no array 'times'" in e


def test_validate_matches_series_sources_and_models(tmp_path: Path):
    (e,) = _validate(tmp_path, {"circles": {}}, SERIES)
    assert "the model reads irregular series (times, mask, query_times); data source 'circles' gives none" in e
    (e,) = _validate(tmp_path, {"oscillators": {"points": 12}}, None)
    assert "are irregular series" in e and "write input: {shape: [12, 2], times: true, mask: true, query: 12}" in e
    assert _validate(tmp_path, {"oscillators": {"points": 12}}, SERIES) == []
    assert _validate(tmp_path, {"oscillators": {"points": 12}}, SeriesSpec(times=True, mask=True)) == []
    (e,) = _validate(tmp_path, {"oscillators": {"points": 12, "task": "extrapolation", "query_points": 7}}, SERIES)
    assert "outputs at 7 query times per sample; the model reads 12" in e and "write query: 7" in e
    (e,) = _validate(tmp_path, {"oscillators": {"points": 12, "min_points": 13}}, SERIES)
    assert "min_points 13 is more than points 12" in e


# -- batches --------------------------------------------------------------------------------------------
def test_batches_carry_the_series_rows_in_the_models_dtype():
    d = load("oscillators", {"count": 30, "eval_count": 0, "points": 12}, need())
    b = Batches(d, 8, seed=1, device=torch.device("cpu"), dtype=torch.float32, labels=False)
    batch = b.batch(5)
    rows = torch.from_numpy(b.indices(5))
    assert set(batch.inputs) == {"times", "mask", "query_times"}
    for name, t in batch.inputs.items():
        assert t.dtype == torch.float32
        torch.testing.assert_close(t, torch.from_numpy(d.series[name][rows.numpy()]).float())
    torch.testing.assert_close(batch.y_mask, torch.from_numpy(d.series["y_mask"][rows.numpy()]).float())
    torch.testing.assert_close(batch.x, torch.from_numpy(d.x[rows.numpy()]).float())
    shard = b.batch(5, (2, 6))
    assert torch.equal(shard.inputs["times"], batch.inputs["times"][2:6]) and torch.equal(shard.y_mask,
                                                                                          batch.y_mask[2:6])
    chunks = list(b.eval_chunks(chunk=7))  # no evaluation set: the training series, in order
    assert torch.equal(torch.cat([c.inputs["query_times"] for c in chunks]), torch.from_numpy(d.series["query_times"]).float())
    assert torch.equal(torch.cat([c.y_mask for c in chunks]), torch.from_numpy(d.series["y_mask"]).float())


def test_plain_batches_have_no_series():
    d = load("circles", {"count": 20, "eval_count": 0}, Need((2,), (2,), True))
    batch = Batches(d, 4, seed=0, device=torch.device("cpu"), dtype=torch.float32, labels=True).batch(0)
    assert batch.inputs == {} and batch.y_mask is None


# -- masked losses -----------------------------------------------------------------------------------------
def _masked_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, 2, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 5, 2, generator=g) > 0.4).double()
    mask[3] = 0  # a sample with nothing observed does not count
    y = torch.where(mask > 0, y, torch.full_like(y, float("nan")))
    return pred, y, mask


@pytest.mark.parametrize("kind,err", [("mse", lambda d: d * d), ("l1", lambda d: d.abs())])
def test_masked_mse_l1_are_per_sample_means_over_observed_entries(kind: str, err: Any):
    pred, y, mask = _masked_case()
    loss, metrics = make_loss(LossSpec(kind), nn.Identity())(ModelOutput(pred), y, mask)
    per_sample = []
    for i in range(3):
        m = mask[i] > 0
        per_sample.append(err(pred[i][m] - y[i][m]).mean())
    torch.testing.assert_close(loss, torch.stack(per_sample).mean())
    assert metrics["observed"] == pytest.approx(mask.mean().item())
    loss.backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[mask == 0] == 0).all()
    assert counted_samples(kind, 4, mask) == 3 and counted_samples("elbo", 4, mask) == 4


def test_masked_losses_with_every_entry_observed_are_the_plain_ones():
    pred, y, _ = _masked_case()
    y = torch.nan_to_num(y)
    for kind in ("mse", "l1"):
        fn = make_loss(LossSpec(kind), nn.Identity())
        torch.testing.assert_close(fn(ModelOutput(pred), y, torch.ones_like(y))[0], fn(ModelOutput(pred), y, None)[0])
    nothing, _ = make_loss(LossSpec("mse"), nn.Identity())(ModelOutput(pred), y, torch.zeros_like(y))
    assert nothing.item() == 0.0


def test_masked_elbo_sums_observed_entries_and_keeps_the_kl():
    from types import SimpleNamespace

    from odespec.layers.torch_modules import GaussianSample

    pred, y, mask = _masked_case()
    # q(z0) = N(0, exp(0.5)) in 3 dimensions
    q: Any = SimpleNamespace(mean=torch.zeros(4, 3, dtype=torch.float64), logvar=torch.full((4, 3), 0.5, dtype=torch.float64))
    model = nn.Sequential(GaussianSample())
    loss, metrics = make_loss(LossSpec("elbo", 0.3), model)(ModelOutput(pred, q), y, mask)
    kl = 0.5 * 3 * (math.exp(0.5) - 1 - 0.5)
    want = []
    for i in range(4):
        m = mask[i] > 0
        d = pred[i][m] - y[i][m]
        want.append(0.5 * (d * d).sum() / 0.09 + int(m.sum()) * 0.5 * (math.log(2 * math.pi) + 2 * math.log(0.3)) + kl)
    torch.testing.assert_close(loss, torch.stack(want).mean())
    assert metrics["observed"] == pytest.approx(mask.mean().item())
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_cross_entropy_refuses_a_mask():
    from odespec.train.errors import TrainError

    with pytest.raises(TrainError, match="cross_entropy takes one class label per sample, without a mask"):
        make_loss(LossSpec("cross_entropy"), nn.Identity())(ModelOutput(torch.zeros(2, 3)), torch.zeros(2).long(),
                                                           torch.ones(2))


# -- the loop, end to end, with a module of ODENet's keyword signature ------------------------------------
class SeriesStub(nn.Module):
    """Encodes the observed values with their times (masked mean), decodes at each query time.
    Refuses to run without the series inputs, or with a NaN in its input."""

    ode_blocks: tuple = ()
    solved: tuple = ()
    nfe_forward = 0

    def __init__(self, features: int = 2, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(2 * features + 1, hidden)
        self.dec = nn.Sequential(nn.Linear(hidden + 1, hidden), nn.Tanh(), nn.Linear(hidden, features))
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def forward_with_posterior(self, x: torch.Tensor, times: Optional[torch.Tensor] = None,
                               mask: Optional[torch.Tensor] = None,
                               query_times: Optional[torch.Tensor] = None) -> ModelOutput:
        assert times is not None and mask is not None and query_times is not None, "series inputs not passed"
        assert torch.isfinite(x).all(), "a NaN reached the model"
        self.calls.append({"x": tuple(x.shape), "times": tuple(times.shape), "query_times": tuple(query_times.shape)})
        h = torch.tanh(self.enc(torch.cat([x * mask, mask, times[..., None]], dim=-1)))
        seen = mask.amax(dim=-1, keepdim=True)
        pooled = (h * seen).sum(1) / seen.sum(1).clamp(min=1)
        k = query_times.shape[1]
        return ModelOutput(self.dec(torch.cat([pooled[:, None].expand(-1, k, -1), query_times[..., None]], dim=-1)))

    def forward(self, x: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_with_posterior(x, **inputs).output


def _series_spec(tmp: Path, options: dict, *, iterations: int, query: int, extra: str = "") -> Spec:
    points = options["points"]
    path = tmp / "spec.yaml"
    path.write_text(f"odespec: 1\nname: series-stub\ninput: {{shape: [{points}, 2]}}\nmodel:\n  - linear: 2\n"
                    f"train:\n  data: {{npz: later.npz}}\n  iterations: {iterations}\n  batch_size: 16\n"
                    f"  lr: 0.01\n  eval_every: 4\n  checkpoint_every: 4\n{extra}")
    spec = load_spec(path)
    assert spec.train is not None
    # what the spec language (another part of #13) will write as input: {times, mask, query}
    last = spec.model[-1]
    assert isinstance(last, LayerSpec)
    model = (dataclasses.replace(last, out_shape=(query, 2)),)
    src = sources.get("oscillators")
    data = DataSpec("oscillators", src.normalize(options), spec.train.data.loc)
    return dataclasses.replace(spec, model=model, series=SeriesSpec(times=True, mask=True, query=query),
                               train=dataclasses.replace(spec.train, data=data))


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> list[SeriesStub]:
    import odespec.train.loop as loop

    made: list[SeriesStub] = []

    def compile_spec(spec: Spec, device: str = "cpu") -> SeriesStub:
        made.append(SeriesStub())
        return made[-1]

    monkeypatch.setattr(loop, "compile_spec", compile_spec)
    return made


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task,query", [("interpolation", 12), ("extrapolation", 9)])
def test_training_feeds_the_series_to_the_model_and_the_masks_to_the_loss(tmp_path: Path, stub: list[SeriesStub],
                                                                         task: str, query: int):
    from odespec.train import train

    options = {"count": 64, "eval_count": 24, "points": 12, "min_points": 5, "task": task, "query_points": query,
               "missing": 0.3}
    result = train(_series_spec(tmp_path, options, iterations=40, query=query), tmp_path / "run", progress=False)
    calls = stub[0].calls
    assert calls[0] == {"x": (16, 12, 2), "times": (16, 12), "query_times": (16, query)}
    assert {"x": (24, 12, 2), "times": (24, 12), "query_times": (24, query)} in calls  # evaluation
    recs = _records(tmp_path / "run")
    # training targets: the observed values only (interpolation: padding is unobserved too)
    assert all(0.35 < r["observed"] < 0.85 for r in recs)
    # evaluation targets: every real slot, the missing values included (only padding is out)
    assert result.evaluation["eval_observed"] > max(r["observed"] for r in recs)
    assert (result.evaluation["eval_observed"] == 1.0) == (task == "extrapolation")
    first = np.mean([r["loss"] for r in recs[:5]])
    last = np.mean([r["loss"] for r in recs[-5:]])
    assert all(math.isfinite(r["loss"]) for r in recs) and last < first


def test_a_series_run_resumes_exactly(tmp_path: Path, stub: list[SeriesStub], monkeypatch: pytest.MonkeyPatch):
    import odespec.train.loop as loop
    from odespec.train import resume, train
    from safetensors.torch import load_file

    options = {"count": 40, "eval_count": 8, "points": 12, "min_points": 5}
    whole = _series_spec(tmp_path, options, iterations=8, query=12)
    train(whole, tmp_path / "whole", progress=False)
    half = _series_spec(tmp_path, options, iterations=4, query=12)
    train(half, tmp_path / "half", progress=False)
    monkeypatch.setattr(loop, "load_spec", lambda *a, **k: half)  # the run's spec copy, as patched
    resume(tmp_path / "half", iterations=8, progress=False)
    a, b = load_file(tmp_path / "whole" / "model.last.safetensors"), load_file(tmp_path / "half" / "model.last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _records(tmp_path / "whole")] == [r["loss"] for r in _records(tmp_path / "half")]
