"""specs/stiff_chain.yaml: training with implicit methods against explicit ones, and the export.

For each method: one forward solve of the spec's model (batch 32 of its data, without autograd:
where an explicit method fails, it fails there) with the ODE block's solver replaced by that method; an explicit adaptive method gives up at
``max_num_steps`` (100,000 by default), an explicit fixed-step method at the implicit method's
step count produces non-finite values. Then the spec is trained as written (``odespec train``)
and built (``odespec build``), and the build report's export figures are printed.

    PYTHONPATH=. python benchmarks/stiff_chain.py [--out DIR] [--max-num-steps N] [--solves-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import odespec
from odespec.solvers.config import SolverConfig

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "stiff_chain.yaml"
EXPLICIT_ADAPTIVE = ("dopri5", "tsit5", "bosh3", "dopri8", "adaptive_heun", "fehlberg2")
EXPLICIT_FIXED = (("rk4", 1), ("rk4", 64))
IMPLICIT = (("radauIIA5", 1), ("radauIIA3", 2), ("sdirk2", 4), ("trbdf2", 4), ("implicit_euler", 8))


def one_iteration(model: odespec.compile.model.ODENet, solver: SolverConfig, x: torch.Tensor,
                  y: torch.Tensor) -> str:
    block = model[0]
    twin = odespec.compile.model.ODENet(model.spec, [block.with_solver(solver)])
    start = time.perf_counter()
    try:
        with torch.no_grad():
            loss = ((twin(x) - y) ** 2).mean()
    except Exception as e:  # the solver's own error: what a user sees
        return f"fails after {time.perf_counter() - start:.1f} s: {type(e).__name__}: {str(e).splitlines()[0][:90]}"
    if not torch.isfinite(loss):
        return f"non-finite loss ({float(loss)}) after {time.perf_counter() - start:.2f} s"
    return f"ok: loss {float(loss):.3g} in {time.perf_counter() - start:.2f} s, {twin[0].nfe_forward} f-evals"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/stiff_chain_bench"))
    parser.add_argument("--skip-explicit", action="store_true")
    parser.add_argument("--max-num-steps", type=int, default=100_000,
                        help="the explicit adaptive methods' step limit (default: the solvers' default)")
    parser.add_argument("--solves-only", action="store_true", help="skip the train and build runs")
    args = parser.parse_args()
    model = odespec.build(SPEC)
    from odespec.train.stiff import stiff_chain_trajectories

    x, y = stiff_chain_trajectories(32, seed=1)
    x, y = torch.tensor(x), torch.tensor(y)
    rows = []
    methods = [SolverConfig.fixed(m, n) for m, n in IMPLICIT]
    if not args.skip_explicit:
        methods += [SolverConfig(method=m, max_num_steps=args.max_num_steps) for m in EXPLICIT_ADAPTIVE] + [SolverConfig.fixed(m, n) for m, n in EXPLICIT_FIXED]
    for solver in methods:
        rows.append((solver.describe(), one_iteration(model, solver, x, y)))
        print(f"| {rows[-1][0]} | {rows[-1][1]} |", flush=True)
    if args.solves_only:
        return
    env = {"PYTHONPATH": str(ROOT)}
    run = args.out / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "odespec", "train", str(SPEC), "-o", str(run)], check=True, env=env,
                   capture_output=True)
    train_s = time.perf_counter() - start
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "eval_loss" in m]
    print(f"odespec train: {len(metrics)} iterations in {train_s:.1f} s (wall, with start-up); first loss "
          f"{metrics[0]['loss']:.3g}, last eval_loss {evals[-1]['eval_loss']:.3g}")
    build = args.out / "build"
    subprocess.run([sys.executable, "-m", "odespec", "build", str(SPEC), "--weights", str(run / "model.safetensors"),
                    "-o", str(build)], check=True, env=env, capture_output=True)
    onnx = json.loads((build / "stiff_chain.build.json").read_text())["onnx"]
    print(json.dumps({k: onnx[k] for k in ("method", "steps", "nfe_per_forward", "newton_iters", "parity",
                                           "deployment_error", "size_bytes")}, indent=1))


if __name__ == "__main__":
    main()
