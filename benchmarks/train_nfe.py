"""Controlling NFE (issue #6): the same training with and without RNODE regularisation.

The shipped augmented classifier specs/circles_anode.yaml (dopri5 at rtol 1e-3, atol 1e-4,
Adam, 400 iterations of batch 128, the same seed and batches in every run) is trained as
shipped and with ``regularise: {kinetic: W, jacobian: W}``, once with backprop and once with
the adjoint (whose backward pass evaluates f, so its NFE is counted too). Printed: the final
training loss, the evaluation loss and accuracy after the last iteration, the mean forward and
backward NFE over the last 20% of iterations, the forward NFE at every tenth of training, and
the wall time.

Run from the repository root:  .venv/bin/python benchmarks/train_nfe.py [--iterations 400] [--weight 1e-3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, first_ode, mean, records, spec_data, tail, train_quiet, write_variant  # noqa: E402


def run_config(spec: Path, work: Path, tag: str, *, gradient: str, regularise: Optional[dict[str, Any]],
               iterations: int) -> dict[str, Any]:
    """Train one configuration; its summary row."""

    def edit(doc: dict[str, Any]) -> None:
        first_ode(doc)["gradient"] = gradient
        doc["train"]["iterations"] = iterations
        doc["train"].pop("regularise", None)
        if regularise:
            doc["train"]["regularise"] = regularise

    path = write_variant(spec_data(spec), work / tag, edit)
    start = time.perf_counter()
    result = train_quiet(path, work / tag / "run")
    seconds = time.perf_counter() - start
    recs = records(work / tag / "run")
    last = tail(recs)
    growth = [recs[min(len(recs) - 1, round(len(recs) * k / 10) - 1)]["nfe_forward"] for k in range(1, 11)]
    return {"tag": tag, "loss": recs[-1]["loss"], "eval_loss": result.evaluation.get("eval_loss"),
            "eval_accuracy": result.evaluation.get("eval_accuracy"),
            "nfe_f": mean([r["nfe_forward"] for r in last]), "nfe_b": mean([r["nfe_backward"] for r in last]),
            "growth": growth, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=SPECS / "circles_anode.yaml")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--weight", type=float, default=1e-3, help="weight of both regularisers")
    ap.add_argument("--gradients", default="backprop,adjoint")
    args = ap.parse_args()
    torch.set_num_threads(1)
    reg = {"kinetic": args.weight, "jacobian": args.weight}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gradient in args.gradients.split(","):
            for label, r in (("none", None), (f"kinetic+jacobian {args.weight:g}", reg)):
                rows.append(run_config(args.spec, Path(tmp), f"{gradient}, {label}", gradient=gradient,
                                       regularise=r, iterations=args.iterations))
                print(f"done: {rows[-1]['tag']} in {rows[-1]['seconds']:.1f} s", file=sys.stderr)
    print(f"{args.spec.name}, {args.iterations} iterations, same seed and batches; NFE means over the last 20%")
    print(f"{'configuration':40s} {'loss':>9s} {'eval loss':>9s} {'eval acc':>8s} {'fwd NFE':>8s} {'bwd NFE':>8s} "
          f"{'time s':>7s}")
    for r in rows:
        print(f"{r['tag']:40s} {r['loss']:9.4g} {r['eval_loss']:9.4g} {r['eval_accuracy']:8.3f} {r['nfe_f']:8.1f} "
              f"{r['nfe_b']:8.1f} {r['seconds']:7.1f}")
    for gradient in args.gradients.split(","):
        base, reg_row = [r for r in rows if r["tag"].startswith(gradient + ",")]
        print(f"{gradient}: forward NFE {100 * (1 - reg_row['nfe_f'] / base['nfe_f']):.0f}% lower with regularisation"
              + (f", backward NFE {100 * (1 - reg_row['nfe_b'] / base['nfe_b']):.0f}% lower" if base["nfe_b"] else ""))
    print("\nforward NFE at each tenth of training")
    for r in rows:
        print(f"{r['tag']:40s} " + " ".join(f"{g:3d}" for g in r["growth"]))


if __name__ == "__main__":
    main()
