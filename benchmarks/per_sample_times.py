"""Per-sample output times (issue #13): what solving every sample at its own times costs, and how
the two ways of doing it compare.

Run from the repository root (a few minutes on 2 cores; ``--quick`` for a smoke run):

    .venv/bin/python benchmarks/per_sample_times.py [--repeat 7] [--batch 256] [--times 30]

The batch: ``--batch`` samples, each observed at ``--times`` random times of its own, uniform in
[0, 5] and sorted, all starting at t = 0 from a random state; an autonomous MLP field (2 -> 50 ->
2, tanh: ``solvers_common.MLP``, the solver benchmark's "tiny" network), float32. The peers,
each giving every sample's state at its own times, shape (K, batch, 2):

* ``per-sample``: ``solve_per_sample`` (change of time variable, one batched solve per output
  interval, K solves);
* ``union (odespec)``: ``odeint`` on the sorted union of the batch's times (up to batch x K
  distinct times), then each sample's outputs gathered from it (torchdiffeq's answer to its issues
  #43, #86, #122);
* ``union (torchdiffeq)``: the same with ``torchdiffeq.odeint``;
* ``shared grid``: the same batch with ONE grid of K times for every sample (the first sample's):
  the cost floor, what the batch would cost without per-sample times (``odeint``); and
  ``per-sample, shared grid``: ``solve_per_sample`` given that same grid in every row (what the
  restarts per interval cost by themselves).

Solvers: dopri5 at rtol 1e-5, atol 1e-6; rk4 with 2 steps per output interval. On the union grid
rk4 takes one step per union interval (already a finer grid than 2 steps per sample's interval;
"2 steps per interval" there would double it); torchdiffeq's "rk4" is Kutta's 3/8 rule (odespec's
"rk4_38"), odespec's the classic one, same cost and order.

Measured: NFE (calls of the field in an untimed run); forward wall time (median of ``--repeat``
interleaved rounds, under ``no_grad``); forward + backward (backprop) of ``mean(ys**2)`` w.r.t.
y0 and the parameters; "x shared": the median over rounds of the ratio to the shared grid's
odespec solve in the same round; error: max |y - ref| / max |ref| over all samples and times,
against SciPy's DOP853 at rtol = atol = 1e-12 in float64 (on the float32 weights) at each
sample's own times. ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers_common import MLP, Counter, interleaved_times, median_ratio  # noqa: E402

from odespec.solvers import solve, solve_per_sample  # noqa: E402

T_END = 5.0
DOPRI5 = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-6}
# per output interval; the union grid takes one step per union interval (see the module doc)
RK4_STEPS = 2


def make_batch(batch: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    times = torch.sort(torch.rand(batch, k, generator=g) * T_END, dim=1).values
    y0 = torch.randn(batch, 2, generator=g)
    return y0, times


def union_grid(times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sorted distinct times with t = 0 first, and each (k, b)'s row in it, shape (K, batch)."""
    grid = torch.unique(torch.cat([torch.zeros(1, dtype=times.dtype), times.reshape(-1)]))
    return grid, torch.searchsorted(grid, times.T.contiguous())


def gather(ys: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """ys (U, batch, D) on the union grid -> (K, batch, D) at each sample's own times."""
    return ys[index, torch.arange(index.shape[1])[None, :]]


def scipy_reference(func: MLP, y0: torch.Tensor, grid: np.ndarray) -> np.ndarray:
    """The whole batch in float64 by DOP853 at rtol = atol = 1e-12, at the times ``grid``
    (sorted), shape (len(grid), batch, 2). The field is autonomous and acts on each sample
    alone, so one solve of the flattened batch is every sample's own solve."""
    from scipy.integrate import solve_ivp

    batch = y0.shape[0]
    sol = solve_ivp(func.numpy_rhs(batch), (0.0, float(grid[-1])), y0.double().reshape(-1).numpy(),
                    method="DOP853", rtol=1e-12, atol=1e-12, t_eval=grid)
    assert sol.success, sol.message
    return sol.y.T.reshape(len(grid), batch, 2)


def peers(func: Callable, y0: torch.Tensor, times: torch.Tensor, shared: torch.Tensor, solver: str
          ) -> dict[str, Callable[[], Any]]:
    """Zero-argument solves returning (ys (K, batch, 2), odespec stats or None)."""
    import torchdiffeq

    grid, index = union_grid(times)
    shared_grid = torch.cat([torch.zeros(1), shared])
    shared_rows = shared[None].expand_as(times).contiguous()
    if solver == "dopri5":
        ps_kw: dict[str, Any] = dict(DOPRI5)
        union_kw: dict[str, Any] = dict(DOPRI5)
        tde_kw: dict[str, Any] = dict(DOPRI5)
        shared_kw: dict[str, Any] = dict(DOPRI5)
    else:
        ps_kw = {"method": "rk4", "options": {"steps": RK4_STEPS}}
        union_kw = {"method": "rk4", "options": {"steps": 1}}
        tde_kw = {"method": "rk4"}  # no step_size: torchdiffeq steps on the output grid itself
        shared_kw = ps_kw

    def per_sample() -> Any:
        sol = solve_per_sample(func, y0, times, **ps_kw)
        return sol.ys, sol.stats

    def union_odespec() -> Any:
        sol = solve(func, y0, grid, **union_kw)
        return gather(sol.ys, index), sol.stats

    def union_torchdiffeq() -> Any:
        return gather(torchdiffeq.odeint(func, y0, grid, **tde_kw), index), None

    def shared_odespec() -> Any:
        sol = solve(func, y0, shared_grid, **shared_kw)
        return sol.ys[1:], sol.stats

    def per_sample_shared() -> Any:
        sol = solve_per_sample(func, y0, shared_rows, **ps_kw)
        return sol.ys, sol.stats

    return {"per-sample": per_sample, "union (odespec)": union_odespec, "union (torchdiffeq)": union_torchdiffeq,
            "shared grid": shared_odespec, "per-sample, shared grid": per_sample_shared}


def run(batch: int, k: int, repeat: int, backward_repeat: int, union: bool = True) -> str:
    func = MLP(2, 50, 1.0, 1.0)
    y0, times = make_batch(batch, k)
    shared = times[0]
    grid, index = union_grid(times)
    ref_union = scipy_reference(func, y0, grid.double().numpy())
    ref_own = torch.from_numpy(ref_union[index.numpy(), np.arange(batch)[None, :]])
    ref_shared = torch.from_numpy(scipy_reference(func, y0, np.concatenate([[0.0], shared.double().numpy()]))[1:])
    lines = [f"batch {batch}, {k} times per sample in [0, {T_END:g}], union grid {len(grid)} times; "
             f"MLP 2-50-2 tanh, float32, torch threads {torch.get_num_threads()}", ""]
    header = (f"{'solver':<8} {'peer':<26} {'NFE':>7} {'x shared':>8} {'fwd ms':>9} {'x shared':>8} "
              f"{'fwd+bwd ms':>10} {'x shared':>8} {'error':>9}")
    lines.append(header)
    for solver in ("dopri5", "rk4"):
        fns = _select(peers(func, y0, times, shared, solver), union)
        nfe, err = {}, {}
        with torch.no_grad():
            for label in fns:
                counter = Counter(func)
                ys, _ = peers(counter, y0, times, shared, solver)[label]()
                nfe[label] = counter.n
                ref = ref_shared if label == "shared grid" or label.endswith("shared grid") else ref_own
                err[label] = float((ys.double() - ref).abs().max() / ref.abs().max())
            fwd = interleaved_times({lb: (lambda fn=fn: fn()) for lb, fn in fns.items()}, repeat)
        params = list(func.parameters())
        y0g = y0.clone().requires_grad_()
        bfns = _select(peers(func, y0g, times, shared, solver), union)

        def fwd_bwd(fn: Callable[[], Any], inputs: list[torch.Tensor] = [y0g, *params]) -> None:  # noqa: B006
            ys, _ = fn()
            torch.autograd.grad((ys**2).mean(), inputs)

        bwd = interleaved_times({lb: (lambda fn=fn: fwd_bwd(fn)) for lb, fn in bfns.items()}, backward_repeat,
                                warmup=1)
        for label in fns:
            lines.append(
                f"{solver:<8} {label:<26} {nfe[label]:>7} {nfe[label] / nfe['shared grid']:>8.2f} "
                f"{1e3 * statistics.median(fwd[label]):>9.1f} {median_ratio(fwd[label], fwd['shared grid']):>8.2f} "
                f"{1e3 * statistics.median(bwd[label]):>10.1f} {median_ratio(bwd[label], bwd['shared grid']):>8.2f} "
                f"{err[label]:>9.2e}")
        lines.append("")
    return "\n".join(lines)


def _select(fns: dict[str, Callable[[], Any]], union: bool) -> dict[str, Callable[[], Any]]:
    return fns if union else {k: v for k, v in fns.items() if not k.startswith("union")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds for the forward timings")
    parser.add_argument("--backward-repeat", type=int, default=5, help="rounds for forward + backward")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--times", type=int, default=30, help="output times per sample")
    parser.add_argument("--no-union", action="store_true",
                        help="leave out the union-grid peers (seconds per round): a steadier run of the others")
    parser.add_argument("--quick", action="store_true", help="batch 16, 5 times, 2 rounds: a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.batch, args.times, args.repeat, args.backward_repeat = 16, 5, 2, 2
    print(run(args.batch, args.times, args.repeat, args.backward_repeat, union=not args.no_union))


if __name__ == "__main__":
    main()
