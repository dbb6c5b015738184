"""Irregular series models (issue #13): the latent ODE with an ODE-RNN encoder against two
baselines of about its parameter count, on the built-in ``oscillators`` data, for interpolation
and extrapolation, at several seeds: Rubanova et al. (2019)'s comparison, whose claim is that the
ODE models win on irregularly sampled data.

The models are the shipped specs, trained as shipped except for the seeds and ``--iterations``:

* ``latent ODE``: specs/irregular_latent_ode.yaml (ODE-RNN encoder -> q(z0) -> latent ODE at the
  query times -> decoder); for extrapolation specs/irregular_latent_ode_extrap.yaml;
* ``RNN decoder``: specs/irregular_rnn_decoder.yaml (the same encoder; a GRU cell stepped over the
  query-time gaps instead of the ODE);
* ``GRU-Δt``: specs/irregular_gru_dt.yaml (a GRU fed the time gaps as encoder, the RNN decoder;
  no ODE anywhere).

For extrapolation the baselines' data become ``task: extrapolation, query_points: 30`` (their
``input.query`` is 30 either way) and their ``rnn_decoder`` starts at 5, where the observations
end and the forecast begins, as the extrapolating latent ODE's ``start: 5``. Data: 1000 training series (20 to 30 observations each at
random times of their own, padded to 30 slots; 30 % of the values missing; noise 0.05), 200
evaluation series (the run keeps the weights of its best evaluation, every ``eval_every``), and a
separate test set of ``--test-count`` series drawn from another stream of the same generator,
which no run sees. Reported: the test MSE against the noiseless truth at every real slot
(missing values included: the evaluation split's rule), normalised as the masked ``mse`` loss
(per series the mean over its entries, then the mean over series); mean ± std (sample std) over
the seeds; ``seed`` S sets the spec's top-level seed (initial weights) and its ``train.seed``
(the data, batch order and z0 samples) to S. Each run is a full ``odespec.train.train``.

Run from the repository root (``--iterations 300``, 3 seeds: about 10 minutes on 2 busy cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/irregular_models.py [--seeds 0,1,2] [--iterations 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, spec_data, train_quiet, write_variant  # noqa: E402

MODELS = {  # name: (interpolation spec, extrapolation spec or None: the interpolation one switched)
    "latent ODE": ("irregular_latent_ode.yaml", "irregular_latent_ode_extrap.yaml"),
    "RNN decoder": ("irregular_rnn_decoder.yaml", None),
    "GRU-Δt": ("irregular_gru_dt.yaml", None),
}
TASKS = ("interpolation", "extrapolation")


def variant(model: str, task: str, seed: int, iterations: int, out: Path) -> Path:
    """The model's spec for ``task`` with both seeds set to ``seed`` and ``iterations``."""
    interp, extrap = MODELS[model]
    doc = spec_data(SPECS / (extrap if task == "extrapolation" and extrap else interp))

    def edit(d: dict[str, Any]) -> None:
        d["seed"] = seed
        d["train"]["seed"] = seed
        d["train"]["iterations"] = iterations
        options = d["train"]["data"]["oscillators"]
        if task == "extrapolation":
            options.setdefault("task", "extrapolation")
            options.setdefault("query_points", d["input"]["query"])
            for item in d["model"]:  # the forecast starts at stop / 2, as the latent ODE's does
                if isinstance(item, dict) and "rnn_decoder" in item:
                    item["rnn_decoder"]["start"] = options.get("stop", 10.0) / 2

    return write_variant(doc, out / f"{model.replace(' ', '_')}-{task}-{seed}", edit)


def test_set(spec_path: Path, seed: int, count: int) -> dict[str, torch.Tensor]:
    """``count`` series from the spec's generator options on a stream no run draws from (the
    source uses streams 0 and 1), with the noiseless truth as targets."""
    from odespec.spec import load_spec
    from odespec.train.generators import oscillators

    spec = load_spec(spec_path)
    o = dict(spec.train.data.options)
    task = o.get("task", "interpolation")
    points = o.get("points", 30)
    arrays = oscillators(count, points=points, min_points=o.get("min_points") or points,
                         query_points=o.get("query_points") or points, missing=o.get("missing", 0.3),
                         noise_std=o.get("noise_std", 0.05), task=task, stop=o.get("stop", 10.0),
                         seed=[seed, 2])

    def f(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.nan_to_num(a), dtype=torch.float32)

    return {"x": f(arrays["x"]), "times": f(arrays["times"]), "mask": f(arrays["mask"]),
            "query_times": f(arrays.get("query_times", arrays["times"])), "y": f(arrays["y_clean"]),
            "y_mask": f(arrays["y_clean_mask"])}


def test_mse(spec_path: Path, weights: Path, data: dict[str, torch.Tensor]) -> float:
    """The masked mse of the trained model on ``data`` (eval mode: z0 is q's mean)."""
    import odespec
    from odespec.api import load_weights

    model = odespec.build(spec_path)
    load_weights(model, weights)
    model.eval()
    with torch.no_grad():
        pred = model(data["x"], times=data["times"], mask=data["mask"], query_times=data["query_times"])
    m = data["y_mask"]
    per_series = ((pred - data["y"]) ** 2 * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)
    return float(per_series[m.sum((1, 2)) > 0].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--test-count", type=int, default=1000)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out", type=Path, default=Path("out/irregular_models"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = args.tasks.split(",")
    from odespec.spec import load_spec

    results: dict[tuple[str, str], list[float]] = {}
    params: dict[str, int] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    for task in tasks:
        for seed in seeds:
            data = None
            for model in MODELS:
                path = variant(model, task, seed, args.iterations, args.out / "specs")
                params[model] = load_spec(path).num_params
                if data is None:  # the same test series for every model at this seed
                    data = test_set(path, seed, args.test_count)
                start = time.perf_counter()
                result = train_quiet(path, args.out / "runs" / path.parent.name)
                seconds.setdefault((model, task), []).append(time.perf_counter() - start)
                mse = test_mse(path, result.weights, data)
                results.setdefault((model, task), []).append(mse)
                print(f"{task:13s} seed {seed}  {model:12s} test mse {mse:.5f}  "
                      f"(kept iteration {result.kept.get('iteration')}, eval_loss "
                      f"{result.kept.get('value', float('nan')):.5f}; {seconds[(model, task)][-1]:.0f} s)",
                      flush=True)
    print(f"\n{args.iterations} iterations, batch 50, seeds {args.seeds}; test MSE vs the noiseless truth, "
          f"{args.test_count} series, mean ± std over seeds")
    print(f"{'model':12s} {'params':>7s} " + " ".join(f"{t:>22s}" for t in tasks) + "   train s/run")
    for model in MODELS:
        cells = []
        for task in tasks:
            v = results[(model, task)]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.fmean(v):.4f} ± {sd:.4f}".rjust(22))
        secs = statistics.fmean(s for t in tasks for s in seconds[(model, t)])
        print(f"{model:12s} {params[model]:7,d} " + " ".join(cells) + f"   {secs:8.0f}")


if __name__ == "__main__":
    main()
