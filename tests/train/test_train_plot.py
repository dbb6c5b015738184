"""``odespec plot``: PNG files for each kind of model (skipped without matplotlib), and a clear
error naming the install command when matplotlib is missing."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from odespec.cli import cli
from odespec.train.loop import train
from odespec.train.plot import INSTALL_HINT, PlotUnavailable, plot_run
from odespec.train.plot.curves import XAxis, other_metrics, read_metrics, smooth, x_axis

from train_helpers import circles_spec, demo_spec, latent_spec, series_spec, write

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, text in (("demo", demo_spec(6)), ("latent", latent_spec(4)), ("circles", circles_spec(4)),
                       ("series", series_spec(4))):
        tmp = tmp_path_factory.mktemp(f"plot-{name}")
        train(write(tmp, text), tmp / "run", progress=False)
        out[name] = tmp / "run"
    return out


EXPECTED = {"demo": ["loss.png", "nfe.png", "metrics.png", "trajectories.png", "vector_field.png"],
            "latent": ["loss.png", "nfe.png", "metrics.png", "latent.png"],
            "circles": ["loss.png", "nfe.png", "accuracy.png", "metrics.png", "regions.png"],
            "series": ["loss.png", "nfe.png", "metrics.png", "series.png"]}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_plots_are_written(name: str, runs: dict[str, Path], tmp_path: Path):
    pytest.importorskip("matplotlib")
    files = plot_run(runs[name], tmp_path / "plots")
    assert [f.name for f in files] == EXPECTED[name]
    for f in files:
        assert f.parent == tmp_path / "plots" and f.read_bytes()[:8] == PNG
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]  # no temp files left


def test_plot_command(runs: dict[str, Path]):
    pytest.importorskip("matplotlib")
    r = CliRunner().invoke(cli, ["plot", str(runs["circles"]), "--format", "json"])
    assert r.exit_code == 0, r.output
    files = json.loads(r.stdout)["files"]
    assert [Path(f).name for f in files] == EXPECTED["circles"]
    assert all(Path(f).parent == runs["circles"] / "plots" for f in files)


def test_plot_of_a_stopped_run_uses_the_latest_checkpoint(runs: dict[str, Path], tmp_path: Path):
    pytest.importorskip("matplotlib")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["circles"], run)
    (run / "model.safetensors").unlink()
    assert [f.name for f in plot_run(run)] == EXPECTED["circles"]


def test_missing_matplotlib_names_the_install_command(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kw: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PlotUnavailable) as e:
        plot_run(runs["demo"])
    assert INSTALL_HINT in str(e.value) and INSTALL_HINT == "pip install 'odespec[plot]'"
    r = CliRunner().invoke(cli, ["plot", str(runs["demo"])])
    assert r.exit_code == 2 and "pip install 'odespec[plot]'" in r.stderr and "Traceback" not in r.output


def test_plot_of_a_directory_that_is_no_run(tmp_path: Path):
    pytest.importorskip("matplotlib")
    r = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert r.exit_code == 2 and "is not a training run" in r.stderr


# -- the curves: accuracy and every other metric, epochs, smoothing --------------------------------------
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The figures plot_run renders, by file name."""
    import odespec.train.plot.curves as curves

    figures: dict[str, Any] = {}
    save = curves.save_png

    def keep(fig: Any, path: Path, *a: Any, **kw: Any) -> Path:
        figures[path.name] = fig
        return save(fig, path, *a, **kw)

    monkeypatch.setattr(curves, "save_png", keep)
    return figures


def lines(ax: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_a_classifier_gets_its_accuracy_curve(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("matplotlib")
    figures = drawn(monkeypatch)
    plot_run(runs["circles"], tmp_path, model_plots=False)
    (ax,) = figures["accuracy.png"].axes
    got = lines(ax)
    recs = read_metrics(runs["circles"] / "metrics.jsonl")
    assert list(got["training accuracy"].get_ydata()) == [r["accuracy"] for r in recs]
    evaluated = [(r["iteration"], r["eval_accuracy"]) for r in recs if "eval_accuracy" in r]
    line = got["evaluation accuracy"]
    assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == evaluated
    kept = json.loads((runs["circles"] / "run.json").read_text())["kept"]
    star = got[f"kept: iteration {kept['iteration']}"]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == (kept["iteration"], kept["value"])
    assert ax.get_xlabel() == "iteration"
    # a model without accuracy gets no accuracy figure
    assert "accuracy.png" not in [f.name for f in plot_run(runs["demo"], tmp_path / "demo", model_plots=False)]


def test_every_other_logged_metric_gets_a_panel(runs: dict[str, Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("matplotlib")
    figures = drawn(monkeypatch)
    plot_run(runs["latent"], tmp_path, model_plots=False)
    panels = {ax.get_ylabel(): ax for ax in figures["metrics.png"].axes}
    assert set(panels) == {"nll", "kl", "lr"}  # the elbo's terms and the learning rate
    recs = read_metrics(runs["latent"] / "metrics.jsonl")
    evals = [r["eval_kl"] for r in recs if "eval_kl" in r]
    assert list(lines(panels["kl"])["evaluation"].get_ydata()) == evals
    assert other_metrics([{"iteration": 1, "loss": 1.0, "grad_norm": 2.0, "eval_foo": 3.0, "seconds": 1.0,
                           "nfe_forward": 4, "nfe_budget_exceeded": True}]) == ["grad_norm", "foo"]


def test_a_run_given_in_epochs_is_plotted_in_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    text = circles_spec().replace("iterations: 12", "epochs: 2")  # 40 samples, batches of 16: 5 iterations
    train(write(tmp_path, text), run, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert x_axis(info) == XAxis("epoch", 16 / 40)
    figures = drawn(monkeypatch)
    plot_run(run, tmp_path / "plots", model_plots=False)
    for name in ("loss.png", "nfe.png", "accuracy.png", "metrics.png"):
        assert {ax.get_xlabel() for ax in figures[name].axes} == {"epoch"}, name
    xs = list(lines(figures["loss.png"].axes[0])["training loss"].get_xdata())
    assert xs == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0])  # the last iteration ends at 2 epochs
    assert x_axis({"length_unit": "iterations", "batch_size": 16, "samples_per_epoch": 40}) == XAxis()
    assert x_axis({}) == XAxis()  # a run written before run.json said


def test_per_batch_values_get_a_smoothed_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("matplotlib")
    import numpy as np

    rng = np.random.default_rng(0)
    recs = [{"iteration": i, "loss": float(np.exp(-i / 100) * (1 + 0.5 * rng.random())), "lr": 0.01,
             "nfe_forward": 8, "nfe_backward": 0} for i in range(1, 501)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "run.json").write_text(json.dumps({"format": "odespec-run/1", "name": "noisy"}))
    figures = drawn(monkeypatch)
    plot_run(tmp_path, tmp_path / "plots", model_plots=False)
    got = lines(figures["loss.png"].axes[0])
    smoothed = got["training loss (smoothed)"]
    raw = next(line for label, line in got.items() if label.startswith("_"))  # the raw values, unlabelled
    assert list(raw.get_ydata()) == [r["loss"] for r in recs] and raw.get_alpha() < 1
    assert smoothed.get_color() == raw.get_color()
    noise = lambda y: float(np.std(np.diff(np.log(y))))  # noqa: E731
    assert noise(smoothed.get_ydata()) < noise(raw.get_ydata()) / 5
    # the learning rate is set, not measured: drawn as it is
    assert "training" in lines(figures["metrics.png"].axes[0])


def test_smooth():
    assert smooth([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]  # too few points to smooth
    ramp = [float(i) for i in range(500)]
    assert smooth(ramp)[5:-5] == pytest.approx(ramp[5:-5])  # centred: no lag
    assert smooth([0.01] * 400) == pytest.approx([0.01] * 400, rel=1e-12)
    spiky = [1.0] * 200
    spiky[100] = 1e4
    assert max(smooth(spiky, log=True)) < max(smooth(spiky)) < 1e4  # a geometric mean rises least
    assert smooth([2.0] * 100, log=True) == pytest.approx([2.0] * 100)
