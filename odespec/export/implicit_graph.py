"""An implicit Runge-Kutta solve laid into an ONNX graph: a fixed number of simplified-Newton
iterations per step, unrolled.

The graph computes what :func:`odespec.solvers.implicit.implicit_step` computes with
``newton_tol=0`` (exactly ``iters`` iterations) and ``jacobian="fd"``; that configuration
(:meth:`SolverConfig.unrolled <odespec.solvers.config.SolverConfig.unrolled>`) is the PyTorch
twin parity checks against and calibration evaluates. Per step:

1. ``f(t, y)``, and the Jacobian's blocks by forward differences from **one** evaluation of the
   dynamics on the ``m * batch`` nudged states stacked along the batch axis (``m``: elements per
   sample). ONNX has no autodiff, and torch's exporter cannot trace ``torch.func.jacfwd``/``vmap``
   (the TorchScript exporter fails on them, measured with torch 2.13; the dynamo exporter needs
   onnxscript), while forward differences work for every layer that exports at all. The matrix
   only steers the iteration (its fixed point is the stage equations' solution whatever the
   matrix), so the differences' ``sqrt(eps)`` relative error slows convergence by about that
   factor per iteration and moves no solution.
2. The inverse of each sample's Newton matrix ``I - h (A (x) J)`` (``n = unknown stages * m``
   unknowns) by Gauss-Jordan elimination with partial pivoting, unrolled over the ``n`` pivots
   with default-domain operators only (ArgMax, Where, ReduceSum, Div, Mul, Sub): portable to any
   runtime, unlike ``com.microsoft.Inverse`` (onnxruntime only). Pivoting matters: a stiff
   Jacobian can make a leading minor of the matrix small. Its cost grows as ``n`` nodes per step
   and ``n**3`` arithmetic, hence :data:`MAX_NEWTON_UNKNOWNS`.
3. ``iters`` iterations: each evaluates every unknown stage once and applies the inverse with one
   batched MatMul.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence, cast

import numpy as np

from odespec.errors import ExportError
from odespec.export.graph import GraphBuilder, Value
from odespec.solvers.tableau import ButcherTableau

__all__ = ["MAX_NEWTON_UNKNOWNS", "newton_unknowns", "implicit_export_problem", "lay_implicit_solve",
           "lay_implicit_step"]

#: the largest Newton system an exported step solves per sample (unknown stages x state
#: elements): Gauss-Jordan unrolls one group of nodes per unknown, and the forward-difference
#: Jacobian evaluates the dynamics on as many copies of the batch as a sample has elements
MAX_NEWTON_UNKNOWNS = 64

#: a solve of the dynamics at one time: f(t, y) as graph values
StageFunc = Callable[[float, Value], Value]


def newton_unknowns(tableau: ButcherTableau, state_size: int) -> int:
    """Unknowns of one step's Newton system per sample: the implicit stages times the state size."""
    return (tableau.stages - len(tableau.explicit_stages)) * state_size


def implicit_export_problem(tableau: ButcherTableau, *, state_sizes: Sequence[int], loop: bool, half: bool,
                            per_sample: bool) -> ExportError | None:
    """Why a model cannot be exported with the implicit ``tableau`` (None: it can).
    ``state_sizes``: elements per sample of each ODE block's state; ``loop``: the loop layout;
    ``half``: a graph computing in float16; ``per_sample``: a model solving at each sample's own
    times (``t: query`` blocks, ODE-RNN encoders taking the export's method)."""
    name = tableau.name
    if loop:
        return ExportError(f"the loop layout is not available for the implicit method {name!r}",
                           "export it unrolled (leave out loop)")
    if half:
        return ExportError(f"{name!r} is implicit: its graph takes a forward-difference Jacobian, which float16 "
                           "cannot resolve (its step would be 3 % of the state)",
                           "export it at precision float32 (or the model's float64)")
    if per_sample:
        return ExportError(f"the implicit method {name!r} is exported for ODE blocks on one time grid; this model "
                           "solves at each sample's own times (an ode_rnn, or an ODE block with t: query)",
                           "export it with an explicit method such as rk4")
    for m in state_sizes:
        n = newton_unknowns(tableau, m)
        if n > MAX_NEWTON_UNKNOWNS:
            stages = tableau.stages - len(tableau.explicit_stages)
            return ExportError(
                f"{name!r} on a state of {m} elements per sample solves {n} Newton unknowns per step "
                f"({stages} implicit stage(s) x {m}); the exported graph supports at most {MAX_NEWTON_UNKNOWNS}",
                "export a model with a smaller ODE state, an implicit method with fewer implicit stages "
                "(implicit_euler and implicit_midpoint: 1; radauIIA5: 3), or an explicit method")
    return None


def lay_implicit_solve(gb: GraphBuilder, f: StageFunc, y: Value, grid: list[list[tuple[float, float]]],
                       tableau: ButcherTableau, iters: int, state_shape: Sequence[int]) -> list[Value]:
    """The states at the output times of a fixed-step implicit solve over ``grid``
    (:func:`odespec.solvers.grid.fixed_grid`), the first being ``y``. ``f`` must take any batch
    size (the Jacobian's evaluation stacks ``m`` copies of the batch)."""
    outs = [y]
    for interval in grid:
        for t0, h in interval:
            y = lay_implicit_step(gb, f, t0, y, h, tableau, iters, state_shape)
        outs.append(y)
    return outs


def _array(gb: GraphBuilder, values: np.ndarray) -> str:
    """A constant array in the graph's float type (or a bool array)."""
    return gb.const(cast(Any, values), dtype=values.dtype)


def _i64(gb: GraphBuilder, values: Any) -> str:
    return gb.const(values, dtype="int64")


def _slice(gb: GraphBuilder, x: str, start: int, end: int, axis: int) -> str:
    return gb.node("Slice", [x, _i64(gb, [start]), _i64(gb, [end]), _i64(gb, [axis])])


def _unsqueeze(gb: GraphBuilder, x: str, axes: Sequence[int]) -> str:
    return gb.node("Unsqueeze", [x, _i64(gb, list(axes))])


def _reshape(gb: GraphBuilder, x: str, shape: Sequence[int]) -> str:
    return gb.node("Reshape", [x, _i64(gb, list(shape))])


def lay_implicit_step(gb: GraphBuilder, f: StageFunc, t: float, y: Value, h: float, tableau: ButcherTableau,
                      iters: int, state_shape: Sequence[int]) -> Value:
    """One step of the implicit ``tableau`` as graph nodes (see the module docstring); the
    stage arithmetic is :meth:`GraphBuilder.combine`, as in every explicit step."""
    m = math.prod(state_shape)
    s = tableau.stages
    explicit = tableau.explicit_stages
    unknown = [i for i in range(s) if i not in explicit]
    n = len(unknown) * m
    f0 = f(t, y)
    jac = _fd_jacobian(gb, f, t, y, f0, state_shape)
    inverse = _newton_inverse(gb, tableau, unknown, h, jac, m)
    ks = [f0] * s
    for i in explicit:
        if tableau.c[i] != 0.0:
            ks[i] = f(t + tableau.c[i] * h, y)
    # the start: the inverse applied to f(t, y) in every stage, as odespec.solvers.implicit._predict
    f_flat = _reshape(gb, f0.name, [-1, m])
    rhs = f_flat if len(unknown) == 1 else gb.node("Concat", [f_flat] * len(unknown), axis=1)
    start = _reshape(gb, gb.node("MatMul", [inverse, _unsqueeze(gb, rhs, [2])]), [-1, n])
    for idx, i in enumerate(unknown):
        part = start if len(unknown) == 1 else _slice(gb, start, idx * m, (idx + 1) * m, 1)
        ks[i] = Value(_reshape(gb, part, [-1, *state_shape]))
    for _ in range(iters):
        residuals = []
        for i in unknown:
            z = gb.combine(y, h, [(coef, ks[j]) for j, coef in tableau.a_terms[i]])
            stage = f(t + tableau.c[i] * h, z)
            residuals.append(_reshape(gb, gb.node("Sub", [ks[i].name, stage.name]), [-1, m]))
        # (B, n) with stage i's block at [i*m, (i+1)*m), as the PyTorch step orders it
        r = residuals[0] if len(residuals) == 1 else gb.node("Concat", residuals, axis=1)
        delta = _reshape(gb, gb.node("MatMul", [inverse, _unsqueeze(gb, r, [2])]), [-1, n])
        for idx, i in enumerate(unknown):
            part = delta if len(unknown) == 1 else _slice(gb, delta, idx * m, (idx + 1) * m, 1)
            ks[i] = Value(gb.node("Sub", [ks[i].name, _reshape(gb, part, [-1, *state_shape])]))
    return gb.combine(y, h, [(coef, ks[j]) for j, coef in tableau.b_terms])


def _fd_jacobian(gb: GraphBuilder, f: StageFunc, t: float, y: Value, f0: Value, state_shape: Sequence[int]) -> str:
    """Each sample's Jacobian block ``(B, m, m)`` by forward differences, from one evaluation of
    ``f`` on the ``m * B`` nudged states, exactly as :func:`odespec.solvers.implicit.fd_jacobian`
    (steps :func:`odespec.solvers.implicit.fd_steps`)."""
    m = math.prod(state_shape)
    y_flat = _reshape(gb, y.name, [-1, m])
    sqrt_eps = math.sqrt(float(np.finfo(gb.np_dtype).eps))
    step = gb.node("Mul", [gb.node("Max", [gb.node("Abs", [y_flat]), gb.const(1.0)]), gb.const(sqrt_eps)])
    eye = np.eye(m, dtype=gb.np_dtype)[:, None, :]  # (m, 1, m)
    nudged = gb.node("Add", [_unsqueeze(gb, y_flat, [0]), gb.node("Mul", [_array(gb, eye), _unsqueeze(gb, step, [0])])])
    f_nudged = f(t, Value(_reshape(gb, nudged, [-1, *state_shape])))
    diff = gb.node("Sub", [_reshape(gb, f_nudged.name, [m, -1, m]),
                           _unsqueeze(gb, _reshape(gb, f0.name, [-1, m]), [0])])
    cols = gb.node("Div", [diff, _unsqueeze(gb, gb.node("Transpose", [step], perm=[1, 0]), [2])])  # [j, b, p]
    return gb.node("Transpose", [cols], perm=[1, 2, 0])  # [b, p, j]


def _newton_inverse(gb: GraphBuilder, tableau: ButcherTableau, unknown: list[int], h: float, jac: str, m: int) -> str:
    """The inverse of each sample's ``I - h (A_UU (x) J)``, ``(B, n, n)``, by Gauss-Jordan
    elimination with partial pivoting on ``[M | I]``."""
    s = len(unknown)
    n = s * m
    ha = np.array([[h * tableau.a[i][j] for j in unknown] for i in unknown], dtype=gb.np_dtype)
    kron = gb.node("Mul", [_array(gb, ha.reshape(1, s, 1, s, 1)), _unsqueeze(gb, jac, [1, 3])])  # (B, s, m, s, m)
    eye = _array(gb, np.eye(n, dtype=gb.np_dtype))
    matrix = gb.node("Sub", [eye, _reshape(gb, kron, [-1, n, n])])
    aug = gb.node("Concat", [matrix, gb.node("Expand", [eye, gb.node("Shape", [matrix])])], axis=2)  # (B, n, 2n)
    rows = _i64(gb, np.arange(n).reshape(1, n, 1))
    zero = gb.const(0.0)
    for k in range(n):
        below = _slice(gb, _slice(gb, aug, k, k + 1, 2), k, n, 1)  # column k from row k down
        pivot = gb.node("Add", [gb.node("ArgMax", [gb.node("Abs", [below])], axis=1, keepdims=1), _i64(gb, k)])
        is_pivot = gb.node("Equal", [rows, pivot])  # (B, n, 1)
        is_k = gb.const(np.arange(n).reshape(1, n, 1) == k, dtype=bool)
        # the pivot row, exactly (a sum of zeros and one value), swapped with row k
        row_p = gb.node("ReduceSum", [gb.node("Where", [is_pivot, aug, zero]), _i64(gb, [1])], keepdims=1)
        row_k = _slice(gb, aug, k, k + 1, 1)
        aug = gb.node("Where", [is_k, row_p, gb.node("Where", [is_pivot, row_k, aug])])
        r = gb.node("Div", [row_p, _slice(gb, row_p, k, k + 1, 2)])
        col = _slice(gb, aug, k, k + 1, 2)
        aug = gb.node("Where", [is_k, r, gb.node("Sub", [aug, gb.node("Mul", [col, r])])])
    return _slice(gb, aug, n, 2 * n, 2)
