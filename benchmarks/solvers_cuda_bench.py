"""Solver benchmark on a CUDA device (issue #3): odespec against torchdiffeq and torchode in the
same process, its gradient methods against each other, GPU memory against the number of steps,
and the host-device synchronisations per step.

Run from the repository root on a machine with a GPU (about 3 minutes):

    python benchmarks/solvers_cuda_bench.py [--repeat 15] [--only forward,grad,memory,sync]

Method: the "tiny" and "wide" networks of ``solvers_bench.py`` (float32, dopri5, rtol 1e-5,
atol 1e-6, t in [0, 10]) plus a "wide-b4096" case where the GPU has real work per call. Every
timing is wall time with ``torch.cuda.synchronize()`` before the clock stops; medians of
``--repeat`` interleaved rounds. Error: max |y - ref| / max |ref| against SciPy's DOP853 in
float64 on the CPU. Memory: ``torch.cuda.max_memory_allocated`` during one forward + backward
minus the allocation before it. Syncs: calls torch's sync debug mode reports.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from solvers_common import (  # noqa: E402
    ATOL,
    CASES,
    RTOL,
    Counter,
    interleaved_medians,
    markdown_table,
    make_case,
    rel_error,
    scipy_reference,
    add_torchode,
)

from odespec.solvers import GradientConfig, get_tableau, odeint, solve  # noqa: E402

#: DOPRI5 with fixed steps (every method integrates the same steps); adaptive methods take fixed
#: steps only in this explicit form
DOPRI5_FIXED = get_tableau("dopri5").fixed_step()

DEV = torch.device("cuda")


def _sync() -> None:
    if DEV.type == "cuda":
        torch.cuda.synchronize()
CASES.setdefault("wide-b4096", (64, 256, 4096, 1.0, 1.0))


def synced(fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        out = fn()
        _sync()
        return out

    return run


def on_cuda(name: str):
    case = make_case(name)
    ref = scipy_reference(case) if name != "wide-b4096" else None
    case.func.to(DEV)
    case.y0, case.t = case.y0.to(DEV), case.t.to(DEV)
    return case, ref


def forward_section(repeat: int) -> str:
    import torchdiffeq

    rows, notes = [], []
    for name in ("tiny-b1", "tiny-b512", "wide-b256", "wide-b4096"):
        case, ref = on_cuda(name)
        f, y0, t = case.func, case.y0, case.t
        peers: dict[str, Callable[[], object]] = {
            "odespec": lambda: odeint(f, y0, t, rtol=RTOL, atol=ATOL)[-1],
            "torchdiffeq": lambda: torchdiffeq.odeint(f, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")[-1],
        }
        add_torchode(peers, case, notes)
        with torch.no_grad():
            nfe, err = {}, {}
            counter = Counter(f)
            for label in ("odespec", "torchdiffeq"):
                counter.n = 0
                if label == "odespec":
                    yy = odeint(counter, y0, t, rtol=RTOL, atol=ATOL)[-1]
                else:
                    yy = torchdiffeq.odeint(counter, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")[-1]
                nfe[label] = counter.n
                err[label] = "" if ref is None else f"{rel_error(yy.cpu(), ref):.1e}"
            n_bare = 50

            def bare():
                for _ in range(n_bare):
                    f(t[0], y0)

            med = interleaved_medians({k: synced(v) for k, v in {**peers, "bare": bare}.items()}, repeat)
            per_call = med.pop("bare") / n_bare
        for label in peers:
            n = nfe.get(label)
            rows.append([name, label, f"{med[label] * 1e3:.2f}", f"{med[label] / med['torchdiffeq']:.2f}",
                         "" if n is None else str(n), err.get(label, ""),
                         "" if n is None else f"{med[label] / (n * per_call):.2f}"])
        rows.append([name, "(bare func call)", f"{per_call * 1e6:.1f} us", "", "", "", ""])
    out = markdown_table(["case", "solver", "median ms", "/ torchdiffeq", "NFE", "rel. error", "overhead"], rows)
    return out + ("\n\n" + "\n".join(notes) if notes else "")


def _grad_fn(case, **kw) -> Callable[[], object]:
    params = [case.y0] + list(case.func.parameters())

    def run():
        sol = solve(case.func, case.y0, case.t, **kw)
        torch.autograd.grad(sol.ys[-1].square().sum(), params)
        _sync()
        return sol

    return run


def grad_section(repeat: int) -> str:
    import torchdiffeq

    rows = []
    for name in ("tiny-b512", "wide-b256", "wide-b4096"):
        case, _ = on_cuda(name)
        case.y0.requires_grad_(True)
        params = [case.y0] + list(case.func.parameters())
        for label, common in (("100 fixed steps", {"method": DOPRI5_FIXED, "options": {"steps": 100}}),
                              ("adaptive", {"method": "dopri5", "rtol": RTOL, "atol": ATOL})):
            fns = {g: _grad_fn(case, gradient=g, **common) for g in ("backprop", "adjoint", "checkpoint")}
            fns["adjoint+seminorm"] = _grad_fn(case, gradient=GradientConfig.of("adjoint", seminorm=True), **common)
            if "options" not in common:
                for adj, key in ((False, "torchdiffeq backprop"), (True, "torchdiffeq adjoint")):
                    fn = torchdiffeq.odeint_adjoint if adj else torchdiffeq.odeint

                    def tdq(fn=fn):
                        ys = fn(case.func, case.y0, case.t, **common)
                        torch.autograd.grad(ys[-1].square().sum(), params)
                        _sync()

                    fns[key] = tdq
            stats = {k: fn().stats for k, fn in fns.items() if not k.startswith("torchdiffeq")}
            med = interleaved_medians(fns, repeat, warmup=1)
            base = med["backprop"]
            tdq_base = med.get("torchdiffeq backprop")
            for k in fns:
                st = stats.get(k)
                rows.append([name, label, k, f"{med[k] * 1e3:.1f}", f"{med[k] / base:.2f}",
                             "" if tdq_base is None else f"{med[k] / tdq_base:.2f}",
                             "" if st is None else str(st.nfe), "" if st is None else str(st.backward.nfe)])
    return markdown_table(["case", "steps", "gradient", "fwd+bwd median ms", "/ backprop", "/ torchdiffeq backprop",
                   "forward NFE", "backward NFE"], rows)


def memory_section() -> str:
    rows = []
    steps_list = (10, 100, 1000)
    for gradient in ("backprop", "adjoint", "checkpoint"):
        row = [gradient]
        peaks = []
        for steps in steps_list:
            case, _ = on_cuda("wide-b256")
            case.y0.requires_grad_(True)
            run = _grad_fn(case, gradient=gradient, method=DOPRI5_FIXED, options={"steps": steps})
            run()  # warm-up: kernels' workspaces
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            peaks.append(torch.cuda.max_memory_allocated() - before)
            row.append(f"{peaks[-1] / 2**20:.1f}")
        row.append(f"{peaks[-1] / peaks[0]:.2f}")
        rows.append(row)
    import torchdiffeq

    case, _ = on_cuda("wide-b256")
    case.y0.requires_grad_(True)
    params = [case.y0] + list(case.func.parameters())
    torchdiffeq.odeint(case.func, case.y0, case.t, rtol=RTOL, atol=ATOL)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    ys = torchdiffeq.odeint(case.func, case.y0, case.t, rtol=RTOL, atol=ATOL)
    torch.autograd.grad(ys[-1].square().sum(), params)
    tdq = torch.cuda.max_memory_allocated() - before
    return markdown_table(["gradient (wide-b256, dopri5 fixed)"] + [f"{s} steps (MiB)" for s in steps_list]
                  + ["1000 / 10"], rows) + (
        f"\n\ntorchdiffeq backprop, adaptive (same tolerances): {tdq / 2**20:.1f} MiB")


def sync_section() -> str:
    rows = []
    for name in ("tiny-b512", "wide-b256"):
        case, _ = on_cuda(name)
        for label, kw in (("dopri5 adaptive", {"rtol": RTOL, "atol": ATOL}),
                          ("dopri5 100 fixed steps", {"method": DOPRI5_FIXED, "options": {"steps": 100}}),
                          ("rk4 100 fixed steps", {"method": "rk4", "options": {"steps": 100}})):
            for grad in (False, True):
                holder = {}

                def run():
                    with torch.set_grad_enabled(grad):
                        holder["s"] = solve(case.func, case.y0, case.t, **kw).stats

                run()
                torch.cuda.synchronize()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        run()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                n = sum("synchronizing" in str(w.message) for w in caught)
                st = holder["s"]
                rows.append([name, label, "grad" if grad else "no grad", str(st.n_steps), str(st.nfe), str(n),
                             f"{n / st.n_steps:.2f}"])
    return markdown_table(["case", "solve", "mode", "steps", "NFE", "host syncs", "syncs / step"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", default="forward,grad,memory,sync")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a dry run of forward,grad
    args = parser.parse_args()
    global DEV
    DEV = torch.device(args.device)
    if DEV.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark measures the GPU path")
    name = torch.cuda.get_device_name() if DEV.type == "cuda" else "CPU dry run"
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    sections = {"forward": lambda: forward_section(args.repeat), "grad": lambda: grad_section(args.repeat),
                "memory": memory_section, "sync": sync_section}
    for key in args.only.split(","):
        print(f"\n## {key}\n", flush=True)
        print(sections[key](), flush=True)


if __name__ == "__main__":
    main()
