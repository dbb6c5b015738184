"""Controlling NFE (issue #6): the same training with and without RNODE regularisation.

A shipped spec (default specs/circles_anode.yaml: dopri5 at rtol 1e-3, atol 1e-4, Adam, 400
iterations of batch 128) is trained as shipped, without regularisation, and with each
``regularise: {kinetic: K, jacobian: J}`` asked for (``--reg K,J``, repeatable; a weight of 0
leaves that regulariser out), with every gradient method asked for (backprop; the adjoint's
backward pass evaluates f, so its NFE is counted too). Every run of one seed sees the same
initial weights and the same batches. Printed per run: the final training loss, the evaluation
loss and accuracy after the last iteration, the mean forward and backward NFE over the last 20%
of iterations, the forward-NFE cut and the evaluation-loss ratio against the unregularised run,
whether the run meets the criterion, the wall time, and at every tenth of training the forward
NFE and the last evaluation loss.

Criterion (fixed before the runs; ``--min-cut``, ``--max-loss-ratio``): a regularised run meets
it when its forward NFE (last-20% mean) is at least 30% below the unregularised run's, its
evaluation loss is at most 1.5 times the unregularised run's, and (classifiers) its evaluation
accuracy is not lower.

Run from the repository root:
  .venv/bin/python benchmarks/train_nfe.py [--spec specs/circles_anode.yaml] [--iterations 400]
      [--reg 1e-3,1e-3 --reg 1e-3,0 ...] [--gradients backprop,adjoint] [--seeds 0,1]
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
               iterations: int, seed: Optional[int] = None) -> dict[str, Any]:
    """Train one configuration; its summary row. ``seed`` (if given) replaces both the spec's
    seed (initial weights) and ``train.seed`` (batches)."""

    def edit(doc: dict[str, Any]) -> None:
        first_ode(doc)["gradient"] = gradient
        doc["train"]["iterations"] = iterations
        doc["train"].pop("regularise", None)
        if regularise:
            doc["train"]["regularise"] = regularise
        if seed is not None:
            doc["seed"] = seed
            doc["train"]["seed"] = seed

    path = write_variant(spec_data(spec), work / tag, edit)
    start = time.perf_counter()
    result = train_quiet(path, work / tag / "run")
    seconds = time.perf_counter() - start
    recs = records(work / tag / "run")
    last = tail(recs)
    tenths = [min(len(recs) - 1, round(len(recs) * k / 10) - 1) for k in range(1, 11)]
    growth = [recs[i]["nfe_forward"] for i in tenths]
    # the evaluation loss last measured at or before each tenth (None before the first evaluation)
    evals = [next((r["eval_loss"] for r in reversed(recs[:i + 1]) if "eval_loss" in r), None) for i in tenths]
    return {"tag": tag, "loss": recs[-1]["loss"], "eval_loss": result.evaluation.get("eval_loss"),
            "eval_accuracy": result.evaluation.get("eval_accuracy"),
            "nfe_f": mean([r["nfe_forward"] for r in last]), "nfe_b": mean([r["nfe_backward"] or 0 for r in last]),
            "growth": growth, "evals": evals, "seconds": seconds}


def parse_reg(text: str) -> dict[str, float]:
    """``K,J`` -> ``{kinetic: K, jacobian: J}`` without the zero weights."""
    k, j = (float(v) for v in text.split(","))
    if k < 0 or j < 0 or k == j == 0:
        raise argparse.ArgumentTypeError(f"--reg {text}: two weights >= 0, not both 0")
    return {n: w for n, w in (("kinetic", k), ("jacobian", j)) if w > 0}


def label(reg: dict[str, float]) -> str:
    return " ".join(f"{'K' if n == 'kinetic' else 'J'}={w:g}" for n, w in reg.items())


def verdict(row: dict[str, Any], base: dict[str, Any], min_cut: float, max_ratio: float) -> dict[str, Any]:
    """The run against the unregularised run of the same seed and gradient."""
    cut = 1 - row["nfe_f"] / base["nfe_f"]
    ratio = row["eval_loss"] / base["eval_loss"]
    acc_ok = row["eval_accuracy"] is None or row["eval_accuracy"] >= base["eval_accuracy"]
    return {"cut": cut, "ratio": ratio, "meets": cut >= min_cut and ratio <= max_ratio and acc_ok}


def _f(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", type=Path, default=SPECS / "circles_anode.yaml")
    ap.add_argument("--iterations", type=int, default=None, help="default: the spec's")
    ap.add_argument("--reg", type=parse_reg, action="append", metavar="K,J",
                    help="kinetic and jacobian weights of one regularised run (repeatable; default 1e-3,1e-3)")
    ap.add_argument("--weight", type=float, default=None, help="shorthand for --reg W,W")
    ap.add_argument("--gradients", default="backprop,adjoint")
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the spec's)")
    ap.add_argument("--min-cut", type=float, default=0.30, help="criterion: forward NFE at least this much lower")
    ap.add_argument("--max-loss-ratio", type=float, default=1.5, help="criterion: evaluation loss at most this ratio")
    args = ap.parse_args()
    torch.set_num_threads(1)
    regs = list(args.reg or [])
    if args.weight is not None:
        regs.append(parse_reg(f"{args.weight},{args.weight}"))
    if not regs:
        regs = [parse_reg("1e-3,1e-3")]
    iterations = args.iterations or spec_data(args.spec)["train"]["iterations"]
    seeds: list[Optional[int]] = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
    gradients = args.gradients.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for gradient in gradients:
                base = None
                for reg in [None] + regs:
                    tag = f"{gradient}, {'none' if reg is None else label(reg)}"
                    if seed is not None:
                        tag = f"seed {seed}, {tag}"
                    row = run_config(args.spec, Path(tmp), tag.replace(" ", "_").replace(",", ""), gradient=gradient,
                                     regularise=reg, iterations=iterations, seed=seed)
                    row["tag"] = tag
                    if reg is None:
                        base = row
                    else:
                        row.update(verdict(row, base, args.min_cut, args.max_loss_ratio))
                    rows.append(row)
                    print(f"done: {tag} in {row['seconds']:.1f} s", file=sys.stderr)
    print(f"{args.spec.name}, {iterations} iterations, same seed and batches per seed; NFE: means over the last 20%;"
          f" cut and ratio against the unregularised run; meets: cut >= {args.min_cut:.0%}, eval loss ratio <= "
          f"{args.max_loss_ratio:g}, eval accuracy not lower")
    w = max(len(r["tag"]) for r in rows) + 1
    print(f"{'configuration':{w}s} {'loss':>9s} {'eval loss':>9s} {'eval acc':>8s} {'fwd NFE':>7s} {'bwd NFE':>7s} "
          f"{'cut':>5s} {'ratio':>6s} {'meets':>5s} {'time s':>6s}")
    for r in rows:
        cut = f"{100 * r['cut']:4.0f}%" if "cut" in r else "    -"
        print(f"{r['tag']:{w}s} {r['loss']:9.3g} {r['eval_loss']:9.3g} {_f(r['eval_accuracy'], '8.3f'):>8s} "
              f"{r['nfe_f']:7.1f} {r['nfe_b']:7.1f} {cut} {_f(r.get('ratio'), '6.2f'):>6s} "
              f"{('yes' if r['meets'] else 'no') if 'meets' in r else '-':>5s} {r['seconds']:6.1f}")
    print("\nforward NFE at each tenth of training")
    for r in rows:
        print(f"{r['tag']:{w}s} " + " ".join(f"{g:3d}" for g in r["growth"]))
    print("\nevaluation loss at each tenth of training (the last evaluation at or before it)")
    for r in rows:
        print(f"{r['tag']:{w}s} " + " ".join(f"{_f(e, '.3g'):>9s}" for e in r["evals"]))


if __name__ == "__main__":
    main()
