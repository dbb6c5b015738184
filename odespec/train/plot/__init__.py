"""``odespec plot RUN``: figures of a training run, as PNG files (needs matplotlib, the
``plot`` extra: ``pip install 'odespec[plot]'``).

Always: ``loss.png`` and ``nfe.png`` from ``metrics.jsonl``, ``accuracy.png`` for a classifier and
``metrics.png`` with every other logged metric (:mod:`odespec.train.plot.curves`; the x axis in
epochs for a run given in epochs). Then, by the kind of model:
``trajectories.png`` and ``vector_field.png`` for a 2-D trajectory model (ode_demo: against
the true system), ``latent.png`` for the spirals latent ODE (reconstruction and extrapolation),
``regions.png`` for a classifier of points in the plane, ``series.png`` for a model of irregular
time series (observations, targets and outputs at each series' own times). Importing this package imports neither
torch nor matplotlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from odespec.train.errors import TrainError
from odespec.train.plot.render import INSTALL_HINT, PlotUnavailable, require_matplotlib

__all__ = ["plot_run", "PlotUnavailable", "INSTALL_HINT"]


def plot_run(run_dir: Union[str, "os.PathLike[str]"], out_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
             *, model_plots: bool = True) -> list[Path]:
    """Write the run's figures into ``out_dir`` (default ``RUN/plots``); return their paths.
    ``model_plots=False``: only the curves (no model is loaded)."""
    require_matplotlib()
    from odespec.train.plot.curves import has_accuracy, plot_accuracy, plot_loss, plot_metrics, plot_nfe, read_metrics, \
        x_axis
    from odespec.train.rundir import METRICS_FILE, read_run_info

    run = Path(run_dir)
    info = read_run_info(run)
    out = Path(out_dir) if out_dir is not None else run / "plots"
    metrics = run / METRICS_FILE
    if not metrics.is_file():
        raise TrainError(f"{run} has no {METRICS_FILE} yet", "plot after the first iterations have been logged")
    records = read_metrics(metrics)
    name = info.get("name", run.name)
    axis, kept = x_axis(info), info.get("kept")
    files = [plot_loss(records, out / "loss.png", f"{name}: loss", axis, kept),
             plot_nfe(records, out / "nfe.png", f"{name}: function evaluations", info.get("max_nfe"), axis)]
    if has_accuracy(records):
        files.append(plot_accuracy(records, out / "accuracy.png", f"{name}: accuracy", axis, kept))
    metrics_png = plot_metrics(records, out / "metrics.png", f"{name}: other metrics", axis, _clip(run))
    if metrics_png is not None:
        files.append(metrics_png)
    if model_plots:
        files += _model_plots(run, info, out)
    return files


def _clip(run: Path) -> Optional[float]:
    """The run's train.clip_grad_norm, read from its spec copy (None if unset or unreadable)."""
    import yaml

    from odespec.train.rundir import SPEC_FILE

    try:
        value = yaml.safe_load((run / SPEC_FILE).read_text(encoding="utf-8"))["train"].get("clip_grad_norm")
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _model_plots(run: Path, info: dict, out: Path) -> list[Path]:
    from odespec.train.plot.latent import latent_block_index, plot_latent
    from odespec.train.plot.regions import is_2d_classifier, plot_regions
    from odespec.train.plot.series import is_series_model, plot_series
    from odespec.train.plot.trained import load_trained
    from odespec.train.plot.trajectory import is_trajectory_model, plot_trajectories, plot_vector_field

    trained = load_trained(run, info)
    if is_series_model(trained):
        return [plot_series(trained, out / "series.png")]
    index = latent_block_index(trained)
    if index is not None:
        return [plot_latent(trained, index, out / "latent.png")]
    if is_2d_classifier(trained):
        return [plot_regions(trained, out / "regions.png")]
    if is_trajectory_model(trained):
        return [plot_trajectories(trained, out / "trajectories.png"),
                plot_vector_field(trained, out / "vector_field.png")]
    return []
