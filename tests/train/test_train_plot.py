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

from train_helpers import circles_spec, demo_spec, latent_spec, write

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, text in (("demo", demo_spec(6)), ("latent", latent_spec(4)), ("circles", circles_spec(4))):
        tmp = tmp_path_factory.mktemp(f"plot-{name}")
        train(write(tmp, text), tmp / "run", progress=False)
        out[name] = tmp / "run"
    return out


EXPECTED = {"demo": ["loss.png", "nfe.png", "trajectories.png", "vector_field.png"],
            "latent": ["loss.png", "nfe.png", "latent.png"],
            "circles": ["loss.png", "nfe.png", "regions.png"]}


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
