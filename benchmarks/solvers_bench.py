"""Solver benchmark (issue #3): odespec against torchdiffeq and torchode, and odespec's three
gradient methods against each other.

Run from the repository root (about 10 minutes on 2 cores; ``--quick`` for a smoke run):

    .venv/bin/python benchmarks/solvers_bench.py [--repeat 15] [--only forward,overhead,accuracy,grad,seminorm,memory]

Method, so the numbers can be judged:

* ``torch.set_num_threads(1)`` (printed), float32, CPU, everything in one process; timings are
  medians of ``--repeat`` interleaved rounds (each round runs every peer once, so machine noise
  hits all peers alike); a ratio of two peers is the median over rounds of their ratio within a
  round (a paired comparison, steadier than a ratio of medians when the machine's speed drifts);
  forward timings run under ``torch.no_grad()``.
* dopri5, rtol 1e-5, atol 1e-6, t in [0, 10], output at t = 10. Error: max |y - ref| / max |ref|
  against SciPy's DOP853 at rtol = atol = 1e-12 in float64, on the same float32 weights.
* NFE: calls of the dynamics in an untimed run (torchode: its own count of evaluations of the
  batched function). Overhead: solver time / (NFE x time of one bare ``func(t, y0)``), in the
  interleaved forward table and, in the overhead table, measured alone: the solver alternating
  with its NFE bare calls and nothing else (the issue's yardsticks, torchdiffeq, torchode and a
  hand-written RK4 loop, measured the same way beside it).
* Timings run with freed memory kept in the process (``odespec.train.allocator``, as ``odespec
  train`` runs; ``--glibc-defaults`` to switch it off). With glibc's default thresholds the
  process's first iterations decide whether backprop's activations (tens of MB per solve) come
  back from the heap or are mapped afresh every time: across fresh processes the same backprop
  took 159-234 ms (tiny-b512, 100 steps) with 300 to 26 000 page faults per run, which moved
  every ratio against backprop by up to 30 %.
* Work-precision: the NFE torchdiffeq needs for the error odespec reaches at the same rtol,
  interpolated log-linearly on torchdiffeq's own (rtol, NFE, error) sweep, float64.
* Gradient timings: forward + backward of ``sum(y(10)**2)`` w.r.t. y0 and all parameters, grad
  enabled, dopri5 with 100 fixed steps (so every method integrates the same steps) and adaptive.
* Memory: peak resident set size of a fresh process running one forward + backward, minus its
  resident size just before (``VmHWM`` after, reset just before, minus ``VmRSS`` before; after a
  warm-up on a tiny problem), with glibc's mmap threshold pinned at 64 KiB
  so every tensor of the "wide" state (64 KiB) or larger is mapped and unmapped on its own and
  the RSS tracks live tensor memory. It counts everything the solve allocates (autograd's saved
  tensors, checkpoints, the adjoint's augmented state), which a saved-tensor hook would not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers_common import (  # noqa: E402
    ATOL,
    CASES,
    RTOL,
    Counter,
    T_END,
    interleaved_times,
    isolated_overhead,
    markdown_table,
    median_ratio,
    rk4_loop,
    make_case,
    rel_error,
    scipy_reference,
    add_torchode,
)

from odespec.solvers import GradientConfig, get_tableau, odeint, solve  # noqa: E402

#: DOPRI5 with fixed steps (every method integrates the same steps); adaptive methods take fixed
#: steps only in this explicit form
DOPRI5_FIXED = get_tableau("dopri5").fixed_step()
from odespec.train.allocator import keep_freed_memory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()[:15]
    except OSError:
        cpu = [platform.processor()]
    return "\n".join(cpu + [f"python {platform.python_version()}, torch {torch.__version__}, "
                            f"threads {torch.get_num_threads()}"])


# --------------------------------------------------------------------------- forward


#: the peers solved through a ``torchdiffeq.odeint``-like call (torchode has its own set-up)
ODEINT_PEERS = ("odespec", "odespec controller=i", "torchdiffeq")


def _odeint_peer(label: str, case, func: Optional[Callable] = None) -> Callable[[], torch.Tensor]:
    """The forward solve of peer ``label`` (one of :data:`ODEINT_PEERS`) on ``case``, returning
    y(T); ``func`` replaces the case's dynamics (a :class:`Counter`, for the NFE)."""
    f = case.func if func is None else func
    if label.startswith("odespec"):
        opts = {"controller": "i"} if label.endswith("=i") else None
        return lambda: odeint(f, case.y0, case.t, rtol=RTOL, atol=ATOL, options=opts)[-1]
    import torchdiffeq

    return lambda: torchdiffeq.odeint(f, case.y0, case.t, rtol=RTOL, atol=ATOL, method="dopri5")[-1]


def forward_section(repeat: int) -> str:
    rows = []
    notes: list[str] = []
    for name in CASES:
        case = make_case(name)
        ref = scipy_reference(case)
        f, y0, t = case.func, case.y0, case.t
        peers: dict[str, Callable[[], torch.Tensor]] = {label: _odeint_peer(label, case) for label in ODEINT_PEERS}
        add_torchode(peers, case, notes)
        with torch.no_grad():
            # untimed: NFE and error
            nfe, err = {}, {}
            for label in peers:
                if label.startswith("torchode"):
                    yy = peers[label]()
                    nfe[label] = _torchode_nfe(case, label.endswith("jit"))
                else:
                    counter = Counter(f)
                    yy = _odeint_peer(label, case, counter)()
                    nfe[label] = counter.n
                err[label] = rel_error(yy, ref)
            # the bare calls run interleaved with the solvers, so the overhead ratio compares
            # timings taken under the same machine load
            n_bare = 50
            t0 = t[0]

            def bare_calls() -> None:
                for _ in range(n_bare):
                    f(t0, y0)

            times = interleaved_times({**peers, "bare": bare_calls}, repeat)
            bare = [b / n_bare for b in times.pop("bare")]
        for label in peers:
            rows.append([
                name, label, f"{statistics.median(times[label]) * 1e3:.2f}",
                f"{median_ratio(times[label], times['torchdiffeq']):.2f}",
                str(nfe[label]), f"{err[label]:.1e}",
                f"{median_ratio(times[label], [nfe[label] * b for b in bare]):.2f}",
            ])
        rows.append([name, "(bare func call)", f"{statistics.median(bare) * 1e6:.1f} us", "", "", "", ""])
    out = markdown_table(["case", "solver", "median ms", "/ torchdiffeq", "NFE", "rel. error", "overhead"], rows)
    return out + ("\n\n" + "\n".join(notes) if notes else "")


#: steps of the hand-written RK4 yardstick: 100 evaluations, about the NFE of the solves above
RK4_STEPS = 25


OVERHEAD_SOLVERS = ODEINT_PEERS + ("torchode", "hand-written RK4 loop")


def overhead_child(name: str, label: str, repeat: int) -> None:
    """One solver's overhead, alone in a fresh process (see :func:`overhead_section`); prints
    ``NFE ratio`` or ``- reason``."""
    torch.set_num_threads(1)
    keep_freed_memory()
    case = make_case(name)
    f, y0, t = case.func, case.y0, case.t
    with torch.no_grad():
        if label in ODEINT_PEERS:
            counter = Counter(f)
            _odeint_peer(label, case, counter)()
            solver, nfe = _odeint_peer(label, case), counter.n
        elif label == "torchode":
            peers: dict[str, Callable[[], object]] = {}
            notes: list[str] = []
            add_torchode(peers, case, notes)
            if "torchode" not in peers:
                print("- " + " ".join(notes))
                return
            solver, nfe = peers["torchode"], _torchode_nfe(case, False)
        else:
            solver, nfe = (lambda: rk4_loop(f, y0, 0.0, T_END, RK4_STEPS)), 4 * RK4_STEPS
        print(nfe, isolated_overhead(solver, f, t[0], y0, nfe, repeat))


def overhead_section(repeat: int) -> str:
    """Each solver's overhead on its own, beside the yardsticks the issue quotes (torchdiffeq,
    torchode, a hand-written RK4 loop), measured here. Each (case, solver) runs in a fresh
    process that imports only what it needs, and alternates its solve with its NFE bare calls
    (:func:`isolated_overhead`), so that what other libraries and earlier sections leave behind
    (imports, allocator state) stays out of the figure."""
    rows = []
    for name in CASES:
        for label in OVERHEAD_SOLVERS:
            out = subprocess.run([sys.executable, __file__, "--overhead-child", name, label, str(repeat)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            if out.startswith("-"):
                rows.append([name, label, "", f"not run: {out[2:]}"])
                continue
            nfe, ratio = out.split()
            rows.append([name, label, nfe, f"{float(ratio):.2f}"])
    return markdown_table(["case", "solver", "NFE", "overhead (alone)"], rows)


def _torchode_nfe(case, jit: bool) -> int:
    import torchode as to

    y0 = case.y0.reshape(case.y0.shape[0], -1)
    t_eval = case.t.unsqueeze(0).expand(y0.shape[0], -1).contiguous()
    term = to.ODETerm(case.func)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))
    return int(sol.stats["n_f_evals"].max())


# --------------------------------------------------------------------------- accuracy


#: a fine tolerance sweep: the NFE of one solve is a staircase in the tolerance (it moves in
#: whole steps of 6 evaluations), so single tolerances compare staircases, not methods
WP_RTOLS = [10.0 ** (-3.0 - 0.25 * i) for i in range(21)]  # 1e-3 .. 1e-8
WP_ERRORS = [1e-4, 1e-5, 1e-6, 1e-7]


def accuracy_section() -> str:
    """Work-precision: for each library, a least-squares line of log NFE against log error over
    a 21-tolerance sweep (float64, atol = rtol/10); the table compares the lines at fixed
    errors, and gives the geometric mean and the largest of odespec's NFE over torchdiffeq's
    line at odespec's own errors."""
    import torchdiffeq

    rows = []
    for name in CASES:
        case = make_case(name, torch.float64)
        ref = scipy_reference(case)
        counter = Counter(case.func)
        lines = {}
        points = {}
        variants = (("odespec", odeint, None), ("odespec controller=i", odeint, {"controller": "i"}),
                    ("torchdiffeq", torchdiffeq.odeint, None))
        with torch.no_grad():
            for lib, fn, opts in variants:
                pts = []
                for rtol in WP_RTOLS:
                    counter.n = 0
                    kw = {} if opts is None else {"options": opts}
                    y = fn(counter, case.y0, case.t, rtol=rtol, atol=rtol / 10, method="dopri5", **kw)[-1]
                    pts.append((counter.n, rel_error(y, ref)))
                points[lib] = pts
                lines[lib] = np.polyfit(np.log([e for _, e in pts]), np.log([n for n, _ in pts]), 1)
        tdq = lines["torchdiffeq"]
        for lib in ("odespec", "odespec controller=i"):
            at = [math.exp(np.polyval(lines[lib], math.log(e)) - np.polyval(tdq, math.log(e))) for e in WP_ERRORS]
            pointwise = [n / math.exp(np.polyval(tdq, math.log(e))) for n, e in points[lib]]
            rows.append([name, lib] + [f"{r:.2f}" for r in at]
                        + [f"{math.exp(sum(map(math.log, pointwise)) / len(pointwise)):.2f}", f"{max(pointwise):.2f}"])
    return markdown_table(["case", "solver"] + [f"NFE ratio at err {e:.0e}" for e in WP_ERRORS]
                  + ["pointwise geo. mean", "pointwise max"], rows)


# --------------------------------------------------------------------------- gradients


def _grad_fn(case, **kw) -> Callable[[], object]:
    params = [case.y0] + list(case.func.parameters())

    def run():
        sol = solve(case.func, case.y0, case.t, **kw)
        torch.autograd.grad(sol.ys[-1].square().sum(), params)
        return sol

    return run


def grad_section(repeat: int) -> str:
    import torchdiffeq

    rows = []
    for name in ("tiny-b512", "wide-b256"):
        case = make_case(name)
        case.y0.requires_grad_(True)
        params = [case.y0] + list(case.func.parameters())
        for label, common in (("100 fixed steps", {"method": DOPRI5_FIXED, "options": {"steps": 100}}),
                              ("100 RK4 steps", {"method": "rk4", "options": {"steps": 100}}),
                              ("adaptive", {"method": "dopri5", "rtol": RTOL, "atol": ATOL})):
            fns = {
                "backprop": _grad_fn(case, **common),
                "adjoint": _grad_fn(case, gradient="adjoint", **common),
                "adjoint+seminorm": _grad_fn(case, gradient=GradientConfig.of("adjoint", seminorm=True), **common),
                "checkpoint": _grad_fn(case, gradient="checkpoint", **common),
            }

            def tdq(adjoint: bool, kw: dict):
                fn = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

                def run():
                    ys = fn(case.func, case.y0, case.t, **kw)
                    torch.autograd.grad(ys[-1].square().sum(), params)

                return run

            # torchdiffeq's dopri5 has no fixed-step mode; its RK4 does (step_size 0.1: the
            # same 100 steps)
            td_kw = ({"method": "rk4", "options": {"step_size": T_END / 100}} if common["method"] == "rk4"
                     else None if "options" in common else common)
            if td_kw is not None:
                fns["torchdiffeq backprop"] = tdq(False, td_kw)
                fns["torchdiffeq adjoint"] = tdq(True, td_kw)
            stats = {k: fn().stats for k, fn in fns.items() if not k.startswith("torchdiffeq")}
            times = interleaved_times(fns, repeat, warmup=1)
            for k in fns:
                st = stats.get(k)
                td = times.get("torchdiffeq backprop")
                rows.append([name, label, k, f"{statistics.median(times[k]) * 1e3:.1f}",
                             f"{median_ratio(times[k], times['backprop']):.2f}",
                             "" if td is None else f"{median_ratio(times[k], td):.2f}",
                             "" if st is None else str(st.nfe),
                             "" if st is None else str(st.backward.nfe)])
    return markdown_table(["case", "steps", "gradient", "fwd+bwd median ms", "/ backprop", "/ torchdiffeq backprop",
                           "forward NFE", "backward NFE"], rows)


def adjoint_floor_section(repeat: int) -> str:
    """The work on ``func`` that the continuous adjoint does against backprop's, per stage.

    Backprop records one evaluation and later walks its graph inside one big backward pass
    (F_g + V_b per stage). The adjoint evaluates ``func`` once without a graph forward (F) and,
    backward, once more with a graph followed by a vector-Jacobian product of its own
    (F_g + V_s: one backward-engine call per stage, as each stage's adjoint needs the previous
    stage's product). (F + F_g + V_s) / (F_g + V_b) is what the adjoint's time over backprop's
    tends to where ``func`` dominates; the stage combinations around it (cheaper without
    autograd, which the adjoint's are) pull the measured ratio somewhat below it.
    """
    from odespec.solvers.gradient.vjp import vjp

    rows = []
    for name in ("tiny-b512", "wide-b256"):
        case = make_case(name)
        f, y0, t0 = case.func, case.y0.detach(), case.t[0]
        params = tuple(f.parameters())
        a = torch.randn_like(y0)
        k = 6  # one DOPRI5 step's stages walked by one backward call

        def nograd() -> None:
            with torch.no_grad():
                f(t0, y0)

        def single() -> None:
            y = y0.clone().requires_grad_(True)
            vjp((f(t0, y),), (y,) + params, (a,))

        def batched() -> None:
            ys = [y0.clone().requires_grad_(True) for _ in range(k)]
            vjp([f(t0, y) for y in ys], tuple(ys) + params, (a,) * k)

        times = interleaved_times({"F": nograd, "Fg+Vs": single, "Fg+Vb": batched}, repeat, warmup=3)
        med = {key: statistics.median(v) for key, v in times.items()}
        fg_vb = med["Fg+Vb"] / k
        rows.append([name, f"{med['F'] * 1e6:.0f}", f"{med['Fg+Vs'] * 1e6:.0f}", f"{fg_vb * 1e6:.0f}",
                     f"{(med['F'] + med['Fg+Vs']) / fg_vb:.2f}"])
    return markdown_table(["case", "F us (no grad)", "F_g + V_s us (own vjp)", "F_g + V_b us (batched vjp)",
                           "f-work ratio adjoint / backprop"], rows)


def seminorm_section() -> str:
    rows = []
    for name in CASES:
        case = make_case(name)
        case.y0.requires_grad_(True)
        for rtol, atol in ((RTOL, ATOL), (1e-7, 1e-8)):
            got = {}
            for semi in (False, True):
                sol = _grad_fn(case, gradient=GradientConfig.of("adjoint", seminorm=semi), rtol=rtol, atol=atol)()
                got[semi] = sol.stats.backward
            rows.append([name, f"{rtol:.0e}", str(got[False].nfe), str(got[True].nfe),
                         f"{got[True].nfe / got[False].nfe:.2f}",
                         f"{got[False].n_rejected}/{got[True].n_rejected}"])
    return markdown_table(["case", "rtol", "backward NFE, mixed norm", "with seminorm", "ratio",
                   "rejected steps (mixed/semi)"], rows)


# --------------------------------------------------------------------------- memory


def _status_bytes(key: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in bytes.
    Unlike ``getrusage``'s ``ru_maxrss``, which a child inherits from its parent across
    fork + exec, ``VmHWM`` belongs to this process's own address space."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); harmless where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def memory_child(gradient: str, steps: int) -> None:
    """One forward + backward in this (fresh) process; prints the peak RSS increase."""
    torch.set_num_threads(1)
    # warm-up on a tiny problem: one-time allocations (lazy imports, autograd engine, kernels'
    # scratch buffers) happen here, with small tensors, not in the measured run
    tiny = make_case("tiny-b1")
    tiny.y0.requires_grad_(True)
    _grad_fn(tiny, gradient=gradient, method=DOPRI5_FIXED, options={"steps": 2})()
    case = make_case("wide-b256")
    case.y0.requires_grad_(True)
    run = _grad_fn(case, gradient=gradient, method=DOPRI5_FIXED, options={"steps": steps})
    _reset_peak()
    before = _status_bytes("VmRSS")
    sol = run()
    peak = _status_bytes("VmHWM")
    print(json.dumps({"delta": peak - before, "bwd_nfe": sol.stats.backward.nfe}))


def memory_section(steps_list: list[int]) -> str:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    rows = []
    results: dict[str, dict[int, int]] = {}
    for gradient in ("backprop", "adjoint", "checkpoint"):
        results[gradient] = {}
        for steps in steps_list:
            out = subprocess.run([sys.executable, __file__, "--memory-child", gradient, str(steps)],
                                 capture_output=True, text=True, env=env, cwd=ROOT, check=True)
            results[gradient][steps] = json.loads(out.stdout.strip().splitlines()[-1])["delta"]
    for gradient, by_steps in results.items():
        first = by_steps[steps_list[0]]
        rows.append([gradient] + [f"{v / 2**20:.1f}" for v in by_steps.values()]
                    + [f"{by_steps[steps_list[-1]] / first:.2f}"])
    return markdown_table(["gradient"] + [f"{s} steps (MiB)" for s in steps_list]
                  + [f"{steps_list[-1]} / {steps_list[0]}"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats, memory up to 100 steps")
    parser.add_argument("--only", default="forward,overhead,accuracy,grad,seminorm,memory")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="time with glibc's default malloc thresholds (see the module docstring)")
    parser.add_argument("--memory-child", nargs=2, metavar=("GRADIENT", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--overhead-child", nargs=3, metavar=("CASE", "SOLVER", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.overhead_child:
        overhead_child(args.overhead_child[0], args.overhead_child[1], int(args.overhead_child[2]))
        return
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    torch.set_num_threads(1)
    kept = False if args.glibc_defaults else keep_freed_memory()
    repeat = 3 if args.quick else args.repeat
    only = set(args.only.split(","))
    print(f"# odespec solver benchmark\n\n```\n{machine()}\n```\n")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}\n")
    print(f"malloc: {'freed memory kept in the process (odespec.train.allocator)' if kept else 'glibc defaults'}\n")
    if "forward" in only:
        print("## Forward solve (no_grad), dopri5 rtol 1e-5 atol 1e-6\n")
        print(forward_section(repeat), "\n", flush=True)
    if "overhead" in only:
        print("## Overhead measured alone: each solver alternating with its bare calls\n")
        print(overhead_section(max(repeat, 21)), "\n", flush=True)
    if "accuracy" in only:
        print("## Work-precision (float64): NFE to reach the same error\n")
        print(accuracy_section(), "\n", flush=True)
    if "grad" in only:
        print("## Forward + backward by gradient method\n")
        print(grad_section(max(3, repeat // 2)), "\n", flush=True)
        print("### The adjoint's work on func against backprop's, from timings of func alone\n")
        print(adjoint_floor_section(max(repeat, 21)), "\n", flush=True)
    if "seminorm" in only:
        print("## Adjoint backward NFE: mixed norm vs seminorm\n")
        print(seminorm_section(), "\n", flush=True)
    if "memory" in only:
        steps = [10, 30, 100] if args.quick else [10, 30, 100, 300, 1000]
        print("## Peak memory of forward + backward (wide-b256, dopri5 fixed steps, peak RSS increase)\n")
        print(memory_section(steps), "\n", flush=True)


if __name__ == "__main__":
    main()
