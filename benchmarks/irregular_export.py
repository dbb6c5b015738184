"""onnxruntime latency of the exported irregular latent ODE against PyTorch eager on the same
fixed-step model (issue #13, figure 4).

The model is ``specs/irregular_latent_ode.yaml`` (ODE-RNN encoder over T = 30 observation slots
with masks -> q(z0) -> latent ODE at each sample's 30 query times -> decoder), exported with
its spec's ``export.onnx`` settings (or ``--method``/``--steps``) and untrained weights from the
spec's seed: latency does not depend on the weights. Inputs: random per-sample grids as the
export's parity check draws them (:func:`odespec.export.inputs.seeded_series`: each sample's
own sorted times, padding, ~30 % masked, query times into extrapolation). PyTorch runs
``fixed_step_model(model, method, steps)`` eagerly under ``torch.inference_mode()``: the very
function the graph computes (checked: the script fails if they differ beyond float32 round-off).

Contenders are timed in interleaved repeats (each repeat runs both once); medians are
reported, with the spread (interquartile range). Intra-op threads are set explicitly for both
(``--threads``, default 1; inter-op 1, sequential execution).

Run from the repository root:
  .venv/bin/python benchmarks/irregular_export.py [--threads 1] [--batches 1,256] [--spec PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, default=ROOT / "specs" / "irregular_latent_ode.yaml")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch")
    p.add_argument("--batches", default="1,256", help="comma-separated batch sizes")
    p.add_argument("--method", help="export method (default: the spec's export.onnx)")
    p.add_argument("--steps", type=int, help="export steps per interval (default: the spec's export.onnx)")
    p.add_argument("--min-time", type=float, default=2.0, help="seconds of timing per row (at least --repeat runs)")
    p.add_argument("--repeat", type=int, default=15, help="least number of interleaved repeats per row")
    return p.parse_args()


ARGS = _args()
# threads must be fixed before torch or onnxruntime start their pools
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import odespec  # noqa: E402
from odespec.export.inputs import call_model, numpy_feeds, seeded_input_set, series_inputs  # noqa: E402
from odespec.export.unroll import fixed_step_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timing import interleaved, session  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)


def quartiles(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=4)
    return q[0], statistics.median(v), q[2]


def main() -> int:
    model = odespec.build(ARGS.spec).eval()
    spec = model.spec
    series = series_inputs(model)
    if series is None:
        sys.exit(f"{ARGS.spec}: the model reads no irregular series")
    out = Path(tempfile.mkdtemp()) / "model.onnx"
    res = odespec.export_onnx(model, out, method=ARGS.method, steps=ARGS.steps, latency=False)
    twin = fixed_step_model(model, res.method, res.steps).eval()
    sess = session(res.path, ARGS.threads)
    batches = [int(b) for b in ARGS.batches.split(",")]
    inputs = seeded_input_set(spec.input_shape, dtype=torch.float32, seed=spec.seed, batch_sizes=batches,
                              series=series)

    print(f"model: {ARGS.spec.name} ({spec.name}), input {tuple(spec.input_shape)}, inputs "
          f"{', '.join(spec.series.input_names)}; export {res.method} x {res.steps} steps per interval, "
          f"{res.nfe_per_forward} f-evaluations per forward, {res.size_bytes:,} bytes")
    print(f"parity max abs error {res.parity['max_abs_error']:.2e}; deployment error vs training solver "
          f"{res.deployment_error['max_abs_error']:.2e}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Python "
          f"{platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"threads {ARGS.threads}")
    print()
    print(f"{'batch':>5}  {'ORT ms (IQR)':>22}  {'torch ms (IQR)':>22}  {'ORT/torch':>9}  {'repeats':>7}")
    print("-" * 74)
    for feeds in inputs.feeds():
        np_feeds = numpy_feeds(feeds)
        with torch.inference_mode():
            want = call_model(twin, feeds).numpy()
        (got,) = sess.run(None, np_feeds)
        err = float(np.abs(got - want).max())
        if err > 1e-4 * max(1.0, float(np.abs(want).max())):
            sys.exit(f"onnxruntime differs from the PyTorch fixed-step model by {err:.3g}")

        def run_torch() -> Any:
            with torch.inference_mode():
                return call_model(twin, feeds)

        times = interleaved({"ort": lambda: sess.run(None, np_feeds), "torch": run_torch},
                            min_time=ARGS.min_time, repeat=ARGS.repeat)
        o1, om, o3 = (1e3 * v for v in quartiles(times["ort"]))
        t1, tm, t3 = (1e3 * v for v in quartiles(times["torch"]))
        print(f"{feeds['input'].shape[0]:>5}  {om:>9.3f} ({o1:.3f}-{o3:.3f})  {tm:>9.3f} ({t1:.3f}-{t3:.3f})  "
              f"{om / tm:>9.3f}  {len(times['ort']):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
