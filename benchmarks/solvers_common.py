"""Shared pieces of the solver benchmarks: the dynamics networks, the peers, timing helpers.

The networks: "tiny" 2 -> 50 -> 2 and "wide" 64 -> 256 -> 64, tanh, with a fixed seed and
weights scaled so the dynamics are non-trivial (the state moves by O(1) and turns over
[0, 10], so dopri5 at rtol 1e-5 takes tens of steps) but not stiff.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

T_END = 10.0
RTOL, ATOL = 1e-5, 1e-6

# name -> (dim, width, batch, scale of the first layer, scale of the second layer)
CASES = {
    "tiny-b1": (2, 50, 1, 1.0, 1.0),
    "tiny-b512": (2, 50, 512, 1.0, 1.0),
    "wide-b256": (64, 256, 256, 1.0, 1.0),
}


class MLP(nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2 (autonomous: t is ignored)."""

    def __init__(self, dim: int, width: int, s1: float, s2: float, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim, width)
        self.l2 = nn.Linear(width, dim)
        with torch.no_grad():
            # scaled Gaussian init: W1 ~ s1/sqrt(dim), W2 ~ s2/sqrt(width), small biases
            self.l1.weight.copy_(torch.randn(width, dim, generator=g) * (s1 / dim**0.5))
            self.l1.bias.copy_(torch.randn(width, generator=g) * 0.5)
            self.l2.weight.copy_(torch.randn(dim, width, generator=g) * (s2 / width**0.5))
            self.l2.bias.copy_(torch.randn(dim, generator=g) * 0.1)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(y)))

    def numpy_rhs(self, batch: int) -> Callable[[float, np.ndarray], np.ndarray]:
        """The same field in float64 numpy, on the flattened batch (for SciPy)."""
        w1 = self.l1.weight.detach().double().numpy()
        b1 = self.l1.bias.detach().double().numpy()
        w2 = self.l2.weight.detach().double().numpy()
        b2 = self.l2.bias.detach().double().numpy()
        dim = w1.shape[1]

        def rhs(t: float, y: np.ndarray) -> np.ndarray:
            z = y.reshape(batch, dim)
            return (np.tanh(z @ w1.T + b1) @ w2.T + b2).reshape(-1)

        return rhs


@dataclass
class Case:
    name: str
    func: MLP
    y0: torch.Tensor
    t: torch.Tensor


def make_case(name: str, dtype: torch.dtype = torch.float32) -> Case:
    dim, width, batch, s1, s2 = CASES[name]
    func = MLP(dim, width, s1, s2).to(dtype)
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(batch, dim, generator=g).to(dtype)
    return Case(name, func, y0, torch.tensor([0.0, T_END], dtype=dtype))


def scipy_reference(case: Case) -> torch.Tensor:
    """y(T_END) by SciPy's DOP853 at rtol = atol = 1e-12 in float64."""
    from scipy.integrate import solve_ivp

    batch = case.y0.shape[0]
    sol = solve_ivp(case.func.numpy_rhs(batch), (0.0, T_END), case.y0.double().reshape(-1).numpy(),
                    method="DOP853", rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(case.y0.shape)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max |y - ref| / max |ref|."""
    return float((y.double() - ref).abs().max() / ref.abs().max())


class Counter(nn.Module):
    """Counts calls of the wrapped field (used in untimed runs only)."""

    def __init__(self, func: nn.Module):
        super().__init__()
        self.func = func
        self.n = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self.func(t, y)


def interleaved_times(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 2) -> dict[str, list[float]]:
    """Wall times of each function over ``repeat`` rounds, running them round-robin so that
    machine noise spreads over all of them alike (round ``i`` of every list is one round)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time of each function over interleaved rounds (see :func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, repeat, warmup).items()}


def median_ratio(num: list[float], den: list[float]) -> float:
    """The median over rounds of ``num[i] / den[i]``: a paired comparison. On a machine whose
    speed drifts by tens of percent within a minute (this one), the ratio of two timings taken
    in the same round moves far less than either timing, so its median is steadier than a
    ratio of two medians."""
    return statistics.median(a / b for a, b in zip(num, den))


def rk4_loop(func: Callable, y0: torch.Tensor, t0: float, t1: float, steps: int) -> torch.Tensor:
    """The yardstick the issue quotes for overhead: classic RK4 written out by hand in the
    plainest way (no error control, fixed steps, out-of-place tensor arithmetic)."""
    h = (t1 - t0) / steps
    t = torch.tensor(t0, dtype=y0.dtype)
    y = y0
    for _ in range(steps):
        k1 = func(t, y)
        k2 = func(t + h / 2, y + h / 2 * k1)
        k3 = func(t + h / 2, y + h / 2 * k2)
        k4 = func(t + h, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = t + h
    return y


def isolated_overhead(solver: Callable[[], object], func: Callable, t: torch.Tensor, y0: torch.Tensor,
                      nfe: int, repeat: int) -> float:
    """Overhead measured on its own: the solve alternating with ``nfe`` bare ``func(t, y0)``
    calls, nothing else in between; the median over rounds of solve time / bare-calls time.
    (In the interleaved forward table other libraries run between the two; here nothing
    does.)"""

    def bare() -> None:
        for _ in range(nfe):
            func(t, y0)

    times = interleaved_times({"solve": solver, "bare": bare}, repeat, warmup=5)
    return median_ratio(times["solve"], times["bare"])


_JIT_FAILURE: list[str] = []


def torchode_solver(case: Case, jit: bool) -> tuple[Optional[Callable[[], torch.Tensor]], str]:
    """A zero-argument closure solving ``case`` with torchode (eager or TorchScript), or
    ``(None, reason)`` when it cannot run."""
    try:
        import torchode as to
    except ImportError as e:  # pragma: no cover
        return None, f"torchode not installed ({e})"
    y0 = case.y0.reshape(case.y0.shape[0], -1)
    t_eval = case.t.unsqueeze(0).expand(y0.shape[0], -1).contiguous()
    term = to.ODETerm(case.func)
    method = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=ATOL, rtol=RTOL, term=term)
    solver = to.AutoDiffAdjoint(method, ctrl)
    if jit:
        if _JIT_FAILURE:
            # a failed script leaves TorchScript's class registry half-filled; trying again
            # only reports "Can't redefine method", so report the first failure
            return None, _JIT_FAILURE[0]
        try:
            solver = torch.jit.script(solver)
        except Exception as e:  # noqa: BLE001 - report any scripting failure as the reason
            _JIT_FAILURE.append(f"torch.jit.script failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            return None, _JIT_FAILURE[0]
    problem = to.InitialValueProblem(y0=y0, t_eval=t_eval)

    def run() -> torch.Tensor:
        return solver.solve(problem).ys[:, -1]

    return run, ""


def add_torchode(peers: dict[str, Callable[[], torch.Tensor]], case: Case, notes: list[str]) -> None:
    """Add torchode eager and TorchScript to ``peers`` where they run; else note why not."""
    for jit in (False, True):
        run, why = torchode_solver(case, jit)
        label = "torchode-jit" if jit else "torchode"
        if run is None:
            notes.append(f"{case.name}: {label} not run: {why}")
        else:
            peers[label] = run


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])
