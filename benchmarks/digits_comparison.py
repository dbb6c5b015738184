"""Digits: the paper's ODE-Net against its ResNet and RK-Net, scaled down (issue #16, item 5).

Trains ``specs/digits_{odenet,resnet,rknet}.yaml`` (each with its own settings; ``--seeds``
varies ``seed`` and ``train.seed``, the evaluation split stays the data source's), then for
each trained model:

- test accuracy of the PyTorch model as trained (the ODE-Net with its adaptive dopri5);
- for the ODE blocks, the fixed-step rk4 twin's accuracy at 1, 2, 4, 8 steps, and the fewest
  steps whose accuracy is within ``--tol`` (0.5 %) of the trained model's: the graph deployed
  "at equal accuracy";
- that graph exported (parity-checked in onnxruntime), its accuracy in onnxruntime, its
  f-evaluations per forward and its multiply-accumulates per sample counted from the ONNX
  graph (odespec.export.macs).

Prints one table row per model and seed, then the means; ``--json`` writes the rows.

    python benchmarks/digits_comparison.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, spec_data, train_quiet, write_variant  # noqa: E402

import odespec  # noqa: E402
from odespec.api import load_weights  # noqa: E402
from odespec.export.session import ort_session  # noqa: E402
from odespec.export.unroll import fixed_step_model  # noqa: E402
from odespec.train.digits import digits, digits_split  # noqa: E402

MODELS = ("odenet", "rknet", "resnet")
STEPS = (1, 2, 4, 8)


def test_set(fraction: float = 0.2, split_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The data source's evaluation images (float32, scaled to [0, 1]) and labels."""
    images, labels = digits()
    _, held = digits_split(labels, fraction, split_seed)
    return (images[held, None] / 16.0).astype(np.float32), labels[held]


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


def evaluate(name: str, seed: int, work: Path, tol: float, iterations: int | None) -> dict[str, Any]:
    def edit(doc: dict) -> None:
        doc["seed"] = seed
        doc["train"]["seed"] = seed

    spec = write_variant(spec_data(SPECS / f"digits_{name}.yaml"), work / f"{name}-{seed}", edit)
    start = time.perf_counter()
    result = train_quiet(spec, work / f"{name}-{seed}" / "run", iterations=iterations)
    seconds = time.perf_counter() - start
    model = odespec.build(spec)
    load_weights(model, result.weights)
    model.eval()
    x, y = test_set()
    row: dict[str, Any] = {"model": name, "seed": seed, "train_seconds": round(seconds, 1),
                           "parameters": sum(p.numel() for p in model.parameters()), "accuracy": accuracy(model, x, y)}
    steps = None
    if any(r["kind"] == "ode" for r in odespec.api.summary(model.spec)["layers"]):
        by_steps = {k: accuracy(fixed_step_model(model, "rk4", k), x, y) for k in STEPS}
        row["rk4_accuracy"] = by_steps
        steps = next((k for k in STEPS if by_steps[k] >= row["accuracy"] - tol), STEPS[-1])
    onnx_path = work / f"{name}-{seed}" / "model.onnx"
    exported = odespec.export_onnx(model, onnx_path, **({"method": "rk4", "steps": steps} if steps else {}),
                                   latency=False)
    sess = ort_session(onnx_path.read_bytes())
    logits = sess.run(None, {"input": x})[0]
    row.update(steps=steps, nfe=exported.nfe_per_forward, macs=exported.macs["macs_per_sample"],
               onnx_accuracy=float((logits.argmax(-1) == y).mean()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--tol", type=float, default=0.005, help="accuracy the deployed steps may lose (0.005: 0.5 %%)")
    ap.add_argument("--iterations", type=int, help="override the specs' iterations (a quick smoke run)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name in args.models:
                rows.append(evaluate(name, seed, Path(tmp), args.tol, args.iterations))
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n{'model':<8} {'seed':>4} {'params':>7} {'test acc':>8} {'rk4 steps':>9} {'onnx acc':>8} "
          f"{'f-evals':>7} {'MACs/sample':>12} {'train s':>7}")
    for r in rows:
        print(f"{r['model']:<8} {r['seed']:>4} {r['parameters']:>7,} {r['accuracy']:>8.2%} {str(r['steps'] or '-'):>9} "
              f"{r['onnx_accuracy']:>8.2%} {r['nfe'] or '-':>7} {r['macs']:>12,} {r['train_seconds']:>7}")
    print("\nmeans over seeds:")
    for name in args.models:
        rs = [r for r in rows if r["model"] == name]
        mean = {k: statistics.fmean(r[k] for r in rs) for k in ("accuracy", "onnx_accuracy", "macs", "nfe")}
        print(f"{name:<8} params {rs[0]['parameters']:,}  test acc {mean['accuracy']:.2%}  onnx acc "
              f"{mean['onnx_accuracy']:.2%}  MACs {mean['macs']:,.0f}  f-evals {mean['nfe']:.1f}")


if __name__ == "__main__":
    main()
