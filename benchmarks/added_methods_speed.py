"""Speed of the methods added for issue #17 (implicit Runge-Kutta, Adams, scipy_solver) against
torchdiffeq's same methods on the same problem, forward (no grad) and forward + backward
(backprop through the solver), and the implicit methods' accuracy and time on a stiff problem
against SciPy's Radau and BDF.

    PYTHONPATH=. python benchmarks/added_methods_speed.py --source /work/wt/torchdiffeq_src [--repeat 15]
           [--methods implicit_midpoint explicit_adams] [--no-stiff]

Times are medians of interleaved repeats (odespec and torchdiffeq alternate, so a change of the
machine's load hits both) of the process's CPU time (``time.process_time``, one torch thread): on
a machine shared with other jobs, wall time measures the others as much as the solver.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

IMPLICIT = ("implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "radauIIA5", "gl4", "gl6", "sdirk2",
            "trbdf2")
ADAMS = ("explicit_adams", "implicit_adams")


class Field(torch.nn.Module):
    """A small MLP vector field, damped so every method is stable at the step used."""

    def __init__(self, n: int = 4, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(n, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, n))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) - y


def _time_pair(ours, theirs, repeat: int) -> tuple[float, float]:
    """Median CPU ms of ``ours()`` and ``theirs()``, alternating, after one warm-up each."""
    ours()
    theirs()
    a, b = [], []
    for _ in range(repeat):
        for fn, out in ((ours, a), (theirs, b)):
            t0 = time.process_time()
            fn()
            out.append(time.process_time() - t0)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def _time(fn, repeat: int) -> float:
    fn()
    out = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return statistics.median(out) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--methods", nargs="+", help="only these methods (default: every added method)")
    ap.add_argument("--no-stiff", action="store_true", help="leave out the stiff Robertson table")
    args = ap.parse_args()
    sys.path.insert(0, args.source)
    td = importlib.import_module("torchdiffeq")
    from odespec.solvers import odeint

    torch.set_num_threads(1)
    f = Field().double()
    y0 = torch.randn(16, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    print("| method | options | odespec fwd ms | torchdiffeq fwd ms | ratio | odespec fwd+bwd ms | torchdiffeq fwd+bwd ms"
          " | ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    cases = [(m, {"step_size": 0.05}) for m in IMPLICIT + ADAMS] + [("scipy_solver", {"solver": "RK45"}),
                                                                    ("scipy_solver", {"solver": "Radau"})]
    if args.methods:
        cases = [(m, o) for m, o in cases if m in args.methods]
    for method, opts in cases:
        def ours(grad: bool, method=method, opts=opts):
            with torch.set_grad_enabled(grad):
                y = odeint(f, y0, t, method=method, options=opts, rtol=1e-6, atol=1e-8)
                if grad and method != "scipy_solver":
                    y[-1].square().sum().backward()
            return y

        def theirs(grad: bool, method=method, opts=opts):
            with torch.set_grad_enabled(grad):
                y = td.odeint(f, y0, t, method=method, options=opts, rtol=1e-6, atol=1e-8)
                if grad and method != "scipy_solver":
                    y[-1].square().sum().backward()
            return y

        diff = float((ours(False)[-1] - theirs(False)[-1]).abs().max())
        row = list(_time_pair(lambda: ours(False), lambda: theirs(False), args.repeat))
        if method == "scipy_solver":
            row += [float("nan"), float("nan")]
        else:
            row += list(_time_pair(lambda: ours(True), lambda: theirs(True), args.repeat))
        opt = ", ".join(f"{k}={v}" for k, v in opts.items())
        print(f"| {method} | {opt} | {row[0]:.1f} | {row[1]:.1f} | {row[0] / row[1]:.2f} | {row[2]:.1f} | "
              f"{row[3]:.1f} | {row[2] / row[3]:.2f} | {diff:.1e} |")

    if args.no_stiff:
        return
    # stiff: Robertson's chemical kinetics to t = 40, error against a tight Radau solution
    import numpy as np
    from scipy.integrate import solve_ivp

    def rober(t, y):
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2],
                           dim=-1)

    def rober_np(t, y):
        return rober(t, torch.as_tensor(y)).numpy()

    y_0 = np.array([1.0, 0.0, 0.0])
    ref = solve_ivp(rober_np, (0, 40), y_0, method="Radau", rtol=1e-12, atol=1e-14).y[:, -1]
    print("\n| solver | steps / tolerance | error at t=40 (max abs) | ms |")
    print("|---|---|---|---|")
    for m in ("Radau", "BDF"):
        ms = _time(lambda m=m: solve_ivp(rober_np, (0, 40), y_0, method=m, rtol=1e-6, atol=1e-10), args.repeat)
        err = np.abs(solve_ivp(rober_np, (0, 40), y_0, method=m, rtol=1e-6, atol=1e-10).y[:, -1] - ref).max()
        print(f"| scipy {m} | rtol 1e-6, atol 1e-10 | {err:.1e} | {ms:.1f} |")
    y0r = torch.tensor(y_0)
    # the fast transient lies in the first 1e-3: outputs spaced by decades, equal steps in each
    decades = torch.tensor([0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 40.0], dtype=torch.float64)
    for m, n in (("radauIIA5", 4), ("radauIIA3", 8), ("trbdf2", 16), ("sdirk2", 16), ("implicit_euler", 64)):
        run = lambda m=m, n=n: odeint(rober, y0r, decades, method=m, options={"steps": n})  # noqa: E731
        err = float((run()[-1] - torch.as_tensor(ref)).abs().max())
        print(f"| odespec {m} | {n} steps per decade ({8 * n} steps) | {err:.1e} | {_time(run, args.repeat):.1f} |")
    try:
        odeint(rober, y0r, torch.tensor([0.0, 40.0], dtype=torch.float64), method="dopri5", rtol=1e-6, atol=1e-10,
               options={"max_num_steps": 2000})
        print("| odespec dopri5 | max_num_steps 2000 | solved | |")
    except Exception as e:  # noqa: BLE001
        print(f"| odespec dopri5 | max_num_steps 2000 | fails: {type(e).__name__} | |")


if __name__ == "__main__":
    main()
