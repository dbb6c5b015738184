"""Which solver the shipped irregular latent ODE specs train with (issue #13): a trained model's
latent ODE solved with other solvers, same weights: forward NFE of the latent ODE, time of a
training forward + backward pass (batch 50, median of ``--repeat``), evaluation MSE against the
noiseless truth (200 evaluation series of the spec's data), and the largest deviation from the
same model solved by dopri5 at rtol 1e-7 (the reference).

Every query interval is its own solve (the change of time variable, README "Irregular time
series"), so an adaptive solver restarts 30 times per forward pass; a fixed-step solver takes
``steps`` steps in every sample's own interval.

Run from the repository root, on a run of the spec (``odespec train SPEC -o RUN``):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/irregular_solver_choice.py SPEC RUN/model.safetensors
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import spec_data, write_variant  # noqa: E402

CANDIDATES = {
    "dopri5 rtol 1e-7": {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9},
    "dopri5 rtol 1e-5": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-7},
    "dopri5 rtol 1e-3": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4},
    "rk4 1 step": {"method": "rk4", "steps": 1},
    "rk4 2 steps": {"method": "rk4", "steps": 2},
    "rk4 4 steps": {"method": "rk4", "steps": 4},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", type=Path)
    ap.add_argument("weights", type=Path)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("out/irregular_solver_choice"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    import odespec
    from odespec.api import load_weights
    from odespec.spec import load_spec
    from odespec.train.generators import oscillators

    spec = load_spec(args.spec)
    o = dict(spec.train.data.options)
    points = o["points"]
    kw = dict(points=points, min_points=o["min_points"] or points, query_points=o["query_points"] or points,
              missing=o["missing"], noise_std=o["noise_std"], task=o["task"], stop=o["stop"])
    seed = spec.train.seed
    train, ev = oscillators(50, seed=[seed, 0], **kw), oscillators(o["eval_count"], seed=[seed, 1], **kw)

    def inputs(a: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        f = lambda v: torch.as_tensor(np.nan_to_num(v), dtype=torch.float32)  # noqa: E731
        return {"x": f(a["x"]), "times": f(a["times"]), "mask": f(a["mask"]),
                "query_times": f(a.get("query_times", a["times"]))}

    tr_in, ev_in = inputs(train), inputs(ev)
    truth = torch.as_tensor(ev["y_clean"], dtype=torch.float32)
    m = torch.as_tensor(ev["y_clean_mask"], dtype=torch.float32)
    doc = spec_data(args.spec)
    ode = next(item["ode"] for item in doc["model"] if isinstance(item, dict) and "ode" in item)
    print(f"{args.spec} with {args.weights}; trained with {ode['solver']}")
    print(f"{'latent ODE solver':18s} {'NFE':>5s} {'fwd+bwd ms':>10s} {'eval mse':>9s} {'max dev':>8s}")
    ref = None
    for name, solver in CANDIDATES.items():
        def edit(d: dict, solver: dict = solver) -> None:
            next(it["ode"] for it in d["model"] if isinstance(it, dict) and "ode" in it)["solver"] = solver

        model = odespec.build(write_variant(doc, args.out / name.replace(" ", "_"), edit))
        load_weights(model, args.weights)
        model.eval()
        with torch.no_grad():
            y = model(ev_in["x"], **{k: v for k, v in ev_in.items() if k != "x"})
        ref = y if ref is None else ref
        mse = float((((y - truth) ** 2 * m).sum((1, 2)) / m.sum((1, 2))).mean())
        model.train()
        times, nfe = [], 0
        for _ in range(args.repeat):
            model.zero_grad()
            torch.manual_seed(0)
            start = time.perf_counter()
            out = model(tr_in["x"], **{k: v for k, v in tr_in.items() if k != "x"})
            nfe = model.nfe_forward
            out.pow(2).mean().backward()
            times.append(time.perf_counter() - start)
        dev = float((y - ref).abs().max())
        print(f"{name:18s} {nfe:5d} {1e3 * statistics.median(times):10.1f} {mse:9.5f} {dev:8.1e}", flush=True)


if __name__ == "__main__":
    main()
