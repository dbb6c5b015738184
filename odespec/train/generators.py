"""Built-in data generators for the paper's experiments: ``ode_demo`` (torchdiffeq's
examples/ode_demo.py), ``spirals`` (examples/latent_ode.py) and ``circles`` (the augmented
neural ODE paper's concentric-circles task); and ``oscillators``, irregularly sampled series
with missing values (issue #13), which go through the data contract's series rules as an
``npz`` file's would (:func:`odespec.train.files.fit_series`). Vectorised numpy, no solver: the
oscillators' states are closed-form.

Generation uses numpy's generator seeded from ``train.seed`` (never the global RNG), so the same
seed gives the same arrays on every machine. numpy and torch are imported inside functions.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from odespec.spec.model import ModelItem, Shape
from odespec.train.data import DataShapes, DataSource, LoadedData, Need, Problem, register, same_times, trajectory_block

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["ode_demo_trajectory", "ode_demo_windows", "spirals", "spiral_truth", "circles", "oscillators",
           "oscillator_states"]

#: torchdiffeq's ode_demo system: dy/dt = y**3 @ A, y(0) = (2, 0)
ODE_DEMO_A = ((-0.1, 2.0), (-2.0, -0.1))
ODE_DEMO_Y0 = (2.0, 0.0)


def _int(description: str, default: int, minimum: int = 1, maximum: int = 10_000_000) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description, "default": default}


def _num(description: str, default: float, **bounds: Any) -> dict:
    return {"type": "number", "description": description, "default": default, **bounds}


def _times_hint(times: Sequence[float]) -> str:
    return f"write t: {{start: 0, stop: {times[-1]!r}, num: {len(times)}}} in that ODE block"


def _check_times(source: str, items: Sequence[ModelItem], want: Sequence[float], what: str) -> list[Problem]:
    """The model's (first) trajectory ODE block must output at exactly the data's times."""
    found = trajectory_block(items)
    if found is None:
        return [Problem(f"{source} targets are trajectories at {len(want)} times; the model needs an ODE "
                        "block with output: trajectory", "add output: trajectory to the ODE block")]
    i, block = found
    if same_times(block.t, want):
        return []
    spacing = want[1] - want[0]
    return [Problem(f"the {source} data are {what}: {len(want)} times {spacing:.6g} apart from 0 (up to "
                    f"{want[-1]:.6g}); this block's t has {len(block.t)} times from {block.t[0]:g} to {block.t[-1]:g}",
                    _times_hint(want) + f", or change train.data.{source}",
                    ("model", i, "ode", "t"))]


# -- ode_demo ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def _truth(points: int, stop: float) -> "np.ndarray":
    import numpy as np
    import torch

    from odespec.solvers import odeint

    a = torch.tensor(ODE_DEMO_A, dtype=torch.float64)
    t = torch.linspace(0.0, stop, points, dtype=torch.float64)
    y0 = torch.tensor([ODE_DEMO_Y0], dtype=torch.float64)
    # float64 and tolerances far below the model's (1e-7): the data must not carry solver error
    with torch.no_grad():
        ys = odeint(lambda _t, y: (y**3) @ a, y0, t, rtol=1e-10, atol=1e-12, method="dopri5")
    out = ys[:, 0].numpy().copy()
    out.setflags(write=False)  # cached: nobody may change it
    return np.asarray(out)


def ode_demo_trajectory(points: int = 1000, stop: float = 25.0) -> "np.ndarray":
    """The true trajectory of torchdiffeq's ode_demo at ``points`` times on [0, stop], shape
    (points, 2), float64."""
    return _truth(points, float(stop)).copy()


def ode_demo_windows(points: int = 1000, stop: float = 25.0, batch_time: int = 10) -> tuple["np.ndarray", "np.ndarray"]:
    """Every window of ``batch_time`` consecutive states: inputs y(t_i), shape (n, 2), and targets
    y(t_i .. t_{i+batch_time-1}), shape (n, batch_time, 2), n = points - batch_time (as
    torchdiffeq's ``get_batch`` draws its starts from ``arange(data_size - batch_time)``)."""
    import numpy as np

    y = _truth(points, float(stop))
    starts = np.arange(points - batch_time)
    windows = np.stack([y[starts + k] for k in range(batch_time)], axis=1)
    return y[starts].copy(), windows


@register
class OdeDemo(DataSource):
    name = "ode_demo"
    description = ("torchdiffeq's ode_demo: dy/dt = y**3 A, A = [[-0.1, 2], [-2, -0.1]], y0 = (2, 0), solved "
                   "accurately at `points` times on [0, stop]; samples are windows of `batch_time` steps "
                   "(input y(t_i), target the window's trajectory), drawn at random.")
    properties = {
        "points": _int("Number of times on [0, stop] the true trajectory is known at.", 1000, minimum=3),
        "stop": _num("End of the time span.", 25.0, exclusiveMinimum=0, maximum=1e6),
        "batch_time": _int("Length of each window (the ODE block's t must be its relative times).", 10, minimum=2),
    }

    def times(self, options: Mapping[str, Any]) -> list[float]:
        """A window's times relative to its start: those the ODE block must output at."""
        dt = options["stop"] / (options["points"] - 1)
        return [k * dt for k in range(options["batch_time"])]

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(2,), target=(options["batch_time"], 2))

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        if options["batch_time"] >= options["points"]:
            return [Problem(f"batch_time {options['batch_time']} leaves no window among {options['points']} points",
                            "use more points or a shorter batch_time")]
        return _check_times("ode_demo", items, self.times(options), "windows of the true trajectory")

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        x, y = ode_demo_windows(options["points"], options["stop"], options["batch_time"])
        # evaluation: every window, a fixed set (torchdiffeq evaluates the whole trajectory)
        return LoadedData(x, y, x, y)


# -- spirals ------------------------------------------------------------------------------------------
def spirals(count: int, *, points: int = 1000, observed: int = 100, stop: float = 6 * math.pi,
            noise_std: float = 0.3, a: float = 0.0, b: float = 0.3, seed: Any = 0) -> tuple["np.ndarray", "np.ndarray"]:
    """torchdiffeq's ``generate_spiral2d``: ``count`` noisy observations of clockwise and
    counter-clockwise spirals, each ``observed`` consecutive points of a ``points``-point spiral
    on [0, stop] starting at a random index. Returns (samples (count, observed, 2), the
    observation times (observed,)), float64."""
    import numpy as np

    orig_ts, curves = _spiral_curves(points, stop, a, b)
    out = np.empty((count, observed, 2))
    for i, (t0, which, noise) in enumerate(_spiral_draws(count, points, observed, seed)):
        out[i] = curves[which][t0:t0 + observed] + noise * noise_std
    return out, orig_ts[:observed].copy()


def spiral_truth(count: int, *, points: int = 1000, observed: int = 100, stop: float = 6 * math.pi,
                 a: float = 0.0, b: float = 0.3, seed: Any = 0) -> list["np.ndarray"]:
    """The noise-free spirals behind :func:`spirals` with the same arguments: for each sample,
    the clean curve from its first observation to the end of the spiral (at least ``observed +
    1`` points), float64. What a latent ODE's extrapolation is compared with."""
    _, curves = _spiral_curves(points, stop, a, b)
    return [curves[which][t0:].copy() for t0, which, _ in _spiral_draws(count, points, observed, seed)]


def _spiral_curves(points: int, stop: float, a: float,
                   b: float) -> tuple["np.ndarray", tuple["np.ndarray", "np.ndarray"]]:
    """The times and the two whole spirals: (clockwise, counter-clockwise), each (points, 2)."""
    import numpy as np

    orig_ts = np.linspace(0.0, stop, num=points)
    zs_cw = stop + 1.0 - orig_ts
    rs_cw = a + b * 50.0 / zs_cw
    cw = np.stack((rs_cw * np.cos(zs_cw) - 5.0, rs_cw * np.sin(zs_cw)), axis=1)
    rs_cc = a + b * orig_ts
    cc = np.stack((rs_cc * np.cos(orig_ts) + 5.0, rs_cc * np.sin(orig_ts)), axis=1)
    return orig_ts, (cw, cc)


def _spiral_draws(count: int, points: int, observed: int, seed: Any) -> Any:
    """Per sample, in generation order: (start index, 0 = clockwise / 1 = counter-clockwise,
    standard normal noise (observed, 2)). The draws' order is the generator's contract."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(count):
        # the start is never too near either end, as in torchdiffeq
        t0 = int(rng.integers(observed, points - observed))
        which = 1 if rng.random() > 0.5 else 0
        yield t0, which, rng.standard_normal((observed, 2))


@register
class Spirals(DataSource):
    name = "spirals"
    description = ("torchdiffeq's latent_ode spirals: noisy clockwise and counter-clockwise 2-D spirals, "
                   "`observed` consecutive points of `points` on [0, stop]; input and target are the same "
                   "observations (the latent ODE reconstructs them).")
    properties = {
        "count": _int("Training spirals.", 1000),
        "eval_count": _int("Evaluation spirals, drawn separately (0: evaluate on the training spirals).", 100, minimum=0),
        "points": _int("Points of each whole spiral.", 1000, minimum=3),
        "observed": _int("Consecutive points observed per sample (the model's input length).", 100, minimum=2),
        "stop": _num("End of the spirals' time span (default 6 pi).", 6 * math.pi, exclusiveMinimum=0, maximum=1e6),
        "noise_std": _num("Standard deviation of the observation noise.", 0.3, minimum=0, maximum=1e3),
        "a": _num("Spiral radius offset a (r = a + b z).", 0.0, minimum=-1e3, maximum=1e3),
        "b": _num("Spiral radius growth b (r = a + b z).", 0.3, minimum=-1e3, maximum=1e3),
    }

    def times(self, options: Mapping[str, Any]) -> list[float]:
        """The observation times: the first ``observed`` of ``points`` evenly spaced on [0, stop]."""
        dt = options["stop"] / (options["points"] - 1)
        return [k * dt for k in range(options["observed"])]

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(options["observed"], 2), target=(options["observed"], 2))

    def noise_std(self, options: Mapping[str, Any]) -> float:
        return float(options["noise_std"])

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        if options["points"] - 2 * options["observed"] < 1:
            return [Problem(f"observed {options['observed']} needs more than {2 * options['observed']} points "
                            f"(got {options['points']}): the window never starts near either end",
                            "use more points or fewer observed")]
        return _check_times("spirals", items, self.times(options), "observations")

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        kw = {k: options[k] for k in ("points", "observed", "stop", "noise_std", "a", "b")}
        x, _ = spirals(options["count"], seed=[seed, 0], **kw)
        if options["eval_count"] == 0:
            return LoadedData(x, x)
        xe, _ = spirals(options["eval_count"], seed=[seed, 1], **kw)
        return LoadedData(x, x, xe, xe)


# -- circles ------------------------------------------------------------------------------------------
def circles(count: int, *, r1: float = 0.5, r2: float = 1.0, r3: float = 1.5, seed: Any = 0) -> tuple["np.ndarray", "np.ndarray"]:
    """Concentric classes in the plane (Dupont et al., 2019): half the points uniform in the disk
    |x| <= r1 (class 0), half uniform in the annulus r2 <= |x| <= r3 (class 1). No homeomorphism
    of the plane followed by a linear map separates them, so a plain ODE-Net cannot; one with
    an augmented dimension can. Returns (points (count, 2) float64, labels (count,) int64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inner = count // 2
    u = rng.random(count)
    # radii uniform in area: sqrt of a uniform variable between the squared bounds
    r = np.concatenate([r1 * np.sqrt(u[:inner]), np.sqrt(r2**2 + u[inner:] * (r3**2 - r2**2))])
    phi = rng.random(count) * 2 * math.pi
    x = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    y = np.concatenate([np.zeros(inner, dtype=np.int64), np.ones(count - inner, dtype=np.int64)])
    return x, y


@register
class Circles(DataSource):
    name = "circles"
    description = ("Concentric circles: points in the disk |x| <= r1 (class 0) and in the annulus "
                   "r2 <= |x| <= r3 (class 1). A plain ODE-Net cannot separate them; an augmented one can.")
    properties = {
        "count": _int("Training points (half in each class).", 1000, minimum=2),
        "eval_count": _int("Evaluation points, drawn separately (0: evaluate on the training points).", 1000, minimum=0),
        "r1": _num("Radius of the inner disk (class 0).", 0.5, exclusiveMinimum=0, maximum=1e3),
        "r2": _num("Inner radius of the annulus (class 1).", 1.0, exclusiveMinimum=0, maximum=1e3),
        "r3": _num("Outer radius of the annulus (class 1).", 1.5, exclusiveMinimum=0, maximum=1e3),
    }

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(2,), classes=2)

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        if not options["r1"] < options["r2"] < options["r3"]:
            return [Problem(f"the radii must grow: r1 < r2 < r3, got {options['r1']:g}, {options['r2']:g}, "
                            f"{options['r3']:g}", "for example r1: 0.5, r2: 1.0, r3: 1.5")]
        return []

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        radii = {k: options[k] for k in ("r1", "r2", "r3")}
        x, y = circles(options["count"], seed=[seed, 0], **radii)
        if options["eval_count"] == 0:
            return LoadedData(x, y)
        xe, ye = circles(options["eval_count"], seed=[seed, 1], **radii)
        return LoadedData(x, y, xe, ye)



# -- oscillators (irregular series) -------------------------------------------------------------------
def _padded_times(rng: "np.random.Generator", count: int, slots: int, lengths: "np.ndarray", low: float,
                  high: float) -> "np.ndarray":
    """Per sample, ``lengths[i]`` sorted times uniform on [low, high], padded to ``slots`` by
    repeating the last one: (count, slots)."""
    import numpy as np

    t = rng.uniform(low, high, size=(count, slots))
    real = np.arange(slots)[None, :] < lengths[:, None]
    # padding slots sort last, then take the last real time
    t = np.sort(np.where(real, t, np.inf), axis=1)
    last = t[np.arange(count), lengths - 1]
    return np.where(real, t, last[:, None])


def oscillator_states(times: "np.ndarray", omega: "np.ndarray", gamma: "np.ndarray", amplitude: "np.ndarray",
                      phase: "np.ndarray") -> "np.ndarray":
    """Position and velocity of damped oscillators x = A exp(-gamma t) cos(omega t + phase) at
    ``times`` (count, K), one oscillator per row (parameters (count,)): (count, K, 2)."""
    import numpy as np

    w, g, a, p = (v[:, None] for v in (omega, gamma, amplitude, phase))
    decay = a * np.exp(-g * times)
    angle = w * times + p
    position = decay * np.cos(angle)
    velocity = -decay * (g * np.cos(angle) + w * np.sin(angle))
    return np.stack([position, velocity], axis=-1)


def oscillators(count: int, *, points: int = 30, min_points: Optional[int] = None, query_points: Optional[int] = None,
                missing: float = 0.3,
                noise_std: float = 0.05, task: str = "interpolation", stop: float = 10.0, min_omega: float = 1.0,
                max_omega: float = 2.0, max_damping: float = 0.2, seed: Any = 0) -> dict[str, "np.ndarray"]:
    """``count`` damped oscillators, each observed at times of its own (see the ``oscillators``
    source's description). Returns the arrays of a series file, float64: ``x`` (count, points,
    2) noisy observations with NaN where masked, ``times``, ``mask``; for extrapolation
    ``query_times`` (count, query_points); targets ``y`` (noisy observations at the query times,
    NaN where masked) with ``y_mask``, or none for interpolation (the targets are x); and
    ``y_clean``/``y_clean_mask``: the noiseless values at every real query slot (all but
    padding), what evaluation compares with. ``min_points`` and ``query_points`` default to
    ``points``."""
    import numpy as np

    least = points if min_points is None else min_points
    asked = points if query_points is None else query_points

    rng = np.random.default_rng(seed)
    # the draws' order is the generator's contract: parameters, lengths, times, masks, noise
    omega = rng.uniform(min_omega, max_omega, count)
    gamma = rng.uniform(0.0, max_damping, count)
    amplitude = rng.uniform(0.5, 1.5, count)
    phase = rng.uniform(0.0, 2 * math.pi, count)
    lengths = rng.integers(least, points + 1, size=count)
    extrapolate = task == "extrapolation"
    observe_until = stop / 2 if extrapolate else stop
    times = _padded_times(rng, count, points, lengths, 0.0, observe_until)
    real = (np.arange(points)[None, :] < lengths[:, None])[..., None]
    mask = (rng.random((count, points, 2)) >= missing) & real
    # every series keeps at least one observed value (its first slot is always real)
    mask[~mask.any(axis=(1, 2)), 0, :] = True
    clean = oscillator_states(times, omega, gamma, amplitude, phase)
    x = np.where(mask, clean + noise_std * rng.standard_normal(clean.shape), np.nan)
    out = {"x": x, "times": times, "mask": mask.astype(np.float64)}
    if not extrapolate:
        out["y_clean"], out["y_clean_mask"] = clean, np.broadcast_to(real, clean.shape).astype(np.float64)
        return out
    query = _padded_times(rng, count, asked, np.full(count, asked), observe_until, stop)
    y_mask = rng.random((count, asked, 2)) >= missing
    truth = oscillator_states(query, omega, gamma, amplitude, phase)
    y = np.where(y_mask, truth + noise_std * rng.standard_normal(truth.shape), np.nan)
    out.update(query_times=query, y=y, y_mask=y_mask.astype(np.float64), y_clean=truth,
               y_clean_mask=np.ones(truth.shape))
    return out


@register
class Oscillators(DataSource):
    name = "oscillators"
    description = ("Irregularly sampled damped oscillators x = A exp(-gamma t) cos(omega t + phase), features "
                   "position and velocity: each series is observed at `points` random times of its own on [0, "
                   "stop] (interpolation) or [0, stop/2] (extrapolation; its outputs are then at `query_points` "
                   "random times of its own on [stop/2, stop]), a `missing` fraction of values masked (NaN in "
                   "x), Gaussian noise of `noise_std`. Training targets are the noisy observations, masked the "
                   "same way (what real data give); evaluation targets are the noiseless values at every real "
                   "slot, missing ones included, so the evaluation measures the error against the truth.")
    series_arrays = True
    properties = {
        "count": _int("Training series.", 1000),
        "eval_count": _int("Evaluation series, drawn separately (0: evaluate on the training series).", 200,
                           minimum=0),
        "points": _int("Observation slots per series: the model's input length T (input.shape [T, 2]).", 30,
                       minimum=2),
        "min_points": _int("Fewest observations of a series (0, the default: points, every series full). Each "
                           "series has a length drawn uniformly in [min_points, points] and is padded to `points` "
                           "by repeating its last time, with mask 0.", 0, minimum=0),
        "query_points": _int("Extrapolation: output times per series, T' (input.query); 0, the default: points. "
                             "Interpolation outputs at the observation times.", 0, minimum=0),
        "task": {"enum": ["interpolation", "extrapolation"], "default": "interpolation",
                 "description": "interpolation: outputs at the observation times (reconstruction; query = "
                                "times); extrapolation: observations on [0, stop/2], outputs on [stop/2, stop]."},
        "missing": _num("Fraction of values masked out, each value independently (every series keeps at least "
                        "one).", 0.3, minimum=0, maximum=0.95),
        "noise_std": _num("Standard deviation of the observation noise.", 0.05, minimum=0, maximum=1e3),
        "stop": _num("End of the time span.", 10.0, exclusiveMinimum=0, maximum=1e6),
        "min_omega": _num("Smallest angular frequency omega (uniform in [min_omega, max_omega]).", 1.0,
                          exclusiveMinimum=0, maximum=1e3),
        "max_omega": _num("Largest angular frequency omega.", 2.0, exclusiveMinimum=0, maximum=1e3),
        "max_damping": _num("Damping rate gamma is uniform in [0, max_damping]; amplitude A in [0.5, 1.5], "
                            "phase in [0, 2 pi).", 0.2, minimum=0, maximum=1e3),
    }

    @staticmethod
    def _counts(options: Mapping[str, Any]) -> tuple[int, int, Optional[int]]:
        """(points, min_points, query_points or None for interpolation), defaults filled in."""
        points = options["points"]
        query = options["query_points"] or points if options["task"] == "extrapolation" else None
        return points, options["min_points"] or points, query

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        points, _, query = self._counts(options)
        return DataShapes(input=(points, 2), target=(query or points, 2), series=True, query=query)

    def noise_std(self, options: Mapping[str, Any]) -> Optional[float]:
        return float(options["noise_std"]) or None

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        points, least, _ = self._counts(options)
        if least > points:
            return [Problem(f"min_points {least} is more than points {points}", "use min_points <= points")]
        if options["min_omega"] > options["max_omega"]:
            return [Problem(f"min_omega {options['min_omega']:g} is above max_omega {options['max_omega']:g}",
                            "swap them")]
        return []

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        from odespec.data_contract import ArrayInfo
        from odespec.train.files import fit_series

        points, least, query = self._counts(options)
        kw = {k: options[k] for k in ("missing", "noise_std", "task", "stop", "min_omega", "max_omega",
                                      "max_damping")}

        def split(n: int, stream: int, truth: bool) -> tuple["np.ndarray", "np.ndarray", dict[str, "np.ndarray"]]:
            arrays = oscillators(n, points=points, min_points=least, query_points=query or points,
                                 seed=[seed, stream], **kw)
            clean, clean_mask = arrays.pop("y_clean"), arrays.pop("y_clean_mask")
            if truth:  # evaluation: the noiseless values at every real slot
                arrays.update(y=clean, y_mask=clean_mask)
            where = f"the oscillators data ({'evaluation' if stream else 'training'})"
            return fit_series({k: ArrayInfo.of(v, f"{where}, array {k!r}") for k, v in arrays.items()}, where, need)

        x, y, series = split(options["count"], 0, truth=False)
        if options["eval_count"] == 0:
            return LoadedData(x, y, series=series)
        xe, ye, series_eval = split(options["eval_count"], 1, truth=True)
        return LoadedData(x, y, xe, ye, series=series, series_eval=series_eval)
