"""The exported graph in onnxruntime against PyTorch eager running the same fixed-step model
(issue #5), plus export time, file size and a scan of the file for machine paths.

* Latency, ORT vs PyTorch eager (``fixed_step_model``, the function the graph computes), at
  batch 1 and 256: MLP dynamics 2->50->2 and 64->256->64 (tanh, t in [0, 1]) with rk4 x 8 and
  x 64, unrolled and as ONNX Loops; the MNIST ODE-Net (specs/mnist_odenet.yaml) with rk4 x 8.
  Targets: ORT/PyTorch <= 0.25 at batch 1, <= 0.5 at batch 256.
* 64->256->64 at batch 256: achieved GFLOP/s (matmul FLOPs) against onnxruntime's own rate on
  a 2048x2048 MatMul, same threads. Target >= 60%.
* Export time: MNIST ODE-Net rk4 x 8 and 2->50->2 rk4 x 256 (target < 5 s each); and, unless
  --quick, the same rk4 x 256 MLP hand-unrolled and exported by torch's dynamo exporter (the
  alternative the README explains we rejected), in a subprocess capped at --dynamo-timeout.
* File size against the raw weight bytes (target <= 1.05 x weights + 200 KB for unrolled
  graphs up to 64 steps), and no machine paths or source text inside the files.

Contenders are timed in interleaved repeats (each repeat runs every contender once) and
medians are reported; intra-op threads are set explicitly for both (--threads, default 1).

Run from the repository root:  .venv/bin/python benchmarks/export_bench.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and torch")
    p.add_argument("--min-time", type=float, default=0.4, help="seconds of timing per row (at least --repeat runs)")
    p.add_argument("--repeat", type=int, default=15, help="least number of interleaved repeats per row")
    p.add_argument("--quick", action="store_true", help="skip the dynamo exporter comparison")
    p.add_argument("--dynamo-timeout", type=float, default=240, help="cap on the dynamo export, seconds")
    p.add_argument("--json", type=Path, help="also write every measurement to this file")
    p.add_argument("--models", default="2-50-2,64-256-64,mnist-odenet",
                   help="comma-separated latency rows to run (default: all)")
    return p.parse_args()


ARGS = _args()
# threads must be fixed before torch or onnxruntime start their pools
os.environ.setdefault("OMP_NUM_THREADS", str(ARGS.threads))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import odespec  # noqa: E402
from odespec.export.unroll import fixed_step_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_timing import interleaved, session  # noqa: E402
from odespec.spec import parse_spec  # noqa: E402

torch.set_num_threads(ARGS.threads)
torch.set_num_interop_threads(1)


def mlp_spec(d: int, hidden: int) -> Any:
    return parse_spec(textwrap.dedent(f"""
        odespec: 1
        name: mlp-{d}-{hidden}-{d}
        input: {{shape: [{d}]}}
        model:
          - ode:
              t: [0, 1]
              dynamics: {{layers: [{{linear: {hidden}}}, tanh, {{linear: {d}}}]}}
              solver: {{method: dopri5, rtol: 1e-5, atol: 1e-7}}
        """))


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


#: byte strings that would betray the machine or the source code inside an ONNX file
def leak_needles() -> list[bytes]:
    needles = [str(ROOT).encode(), str(Path.home()).encode(), b"/tmp/", b"/home/", b"site-packages", b".py\"",
               b".py:", b"File \"", b"def forward", tempfile.gettempdir().encode()]
    return [n for n in dict.fromkeys(needles) if n and n != b"/"]


def leaks(data: bytes) -> list[str]:
    return [n.decode(errors="replace") for n in leak_needles() if n in data]


MATMUL_N = 2048


def matmul_session(out_dir: Path) -> tuple[Any, Callable[[], Any]]:
    """An onnxruntime session multiplying two 2048 x 2048 float32 matrices (same threads), and
    a function running it once."""
    from onnx import TensorProto, helper, numpy_helper

    n = MATMUL_N
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], initializer=[w])
    path = out_dir / "matmul.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    sess = session(path, ARGS.threads)
    x = rng.standard_normal((n, n)).astype(np.float32)
    return sess, lambda: sess.run(None, {"x": x})


def export(model: Any, path: Path, **kw: Any) -> tuple[Any, float]:
    """export_onnx with the parity check (deployment error off: this is about speed), and its
    total wall time."""
    t0 = time.perf_counter()
    r = odespec.export_onnx(model, path, deployment=False, **kw)
    return r, time.perf_counter() - t0


DYNAMO_SCRIPT = r"""
import sys, time, io, torch
from torch import nn
torch.manual_seed(0)
steps = int(sys.argv[1]); out = sys.argv[2]
class MLP(nn.Module):
    def __init__(self):
        super().__init__(); self.l1 = nn.Linear(2, 50); self.l2 = nn.Linear(50, 2)
    def forward(self, y): return self.l2(torch.tanh(self.l1(y)))
class Unrolled(nn.Module):
    # rk4 x steps on [0, 1], written out by hand: what exporting the whole model with torch means
    def __init__(self):
        super().__init__(); self.f = MLP()
    def forward(self, y):
        h = 1.0 / steps
        for _ in range(steps):
            k1 = self.f(y); k2 = self.f(y + 0.5 * h * k1); k3 = self.f(y + 0.5 * h * k2); k4 = self.f(y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y
m = Unrolled().eval()
t0 = time.perf_counter()
prog = torch.onnx.export(m, (torch.zeros(2, 2),), dynamo=True, external_data=False)
prog.save(out)
print(time.perf_counter() - t0)
"""


def dynamo_export(out_dir: Path, steps: int) -> dict[str, Any]:
    out = out_dir / "dynamo.onnx"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", DYNAMO_SCRIPT, str(steps), str(out)], capture_output=True,
                              text=True, timeout=ARGS.dynamo_timeout,
                              env={**os.environ, "OMP_NUM_THREADS": str(ARGS.threads)})
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {ARGS.dynamo_timeout:.0f} s", "seconds": None}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        return {"status": "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200], "seconds": wall}
    data = out.read_bytes()
    return {"status": "ok", "seconds": float(proc.stdout.strip().splitlines()[-1]), "process_seconds": wall,
            "size_bytes": len(data), "leaks": leaks(data)}


def main() -> None:
    out_dir = Path(tempfile.mkdtemp(prefix="odespec-export-bench-"))
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "cpu": _cpu_name(),
        "versions": {"onnxruntime": ort.__version__, "torch": torch.__version__, "onnx": onnx.__version__},
        "threads": ARGS.threads,
        "latency": [], "files": [], "export": {},
    }
    print(f"# odespec export benchmark: {results['cpu']}, {os.cpu_count()} CPUs; onnxruntime {ort.__version__}, "
          f"torch {torch.__version__}; intra-op threads {ARGS.threads} (ORT and torch), inter-op 1")

    _, matmul = matmul_session(out_dir)
    mm_flops = 2 * MATMUL_N**3
    rate = mm_flops / statistics.median(interleaved({"mm": matmul}, min_time=2.0, repeat=5)["mm"]) / 1e9
    results["ort_matmul_gflops"] = rate
    print(f"onnxruntime {MATMUL_N}x{MATMUL_N} MatMul: {rate:.1f} GFLOP/s (alone; the GFLOP/s rows below are "
          "compared with the MatMul timed in the same interleaved repeats)\n")

    models = {"2-50-2": odespec.build(mlp_spec(2, 50)), "64-256-64": odespec.build(mlp_spec(64, 256))}
    mnist = odespec.build(ROOT / "specs" / "mnist_odenet.yaml")
    configs: list[tuple[str, Any, str, int, bool]] = []
    for name, model in models.items():
        for steps in (8, 64):
            for loop in (False, True):
                configs.append((name, model, "rk4", steps, loop))
    configs.append(("mnist-odenet", mnist, "rk4", 8, False))
    configs.append(("mnist-odenet", mnist, "rk4", 8, True))

    head = f"{'model':<13} {'method':<9} {'layout':<9} {'batch':>5} {'ORT ms':>9} {'torch ms':>9} {'ORT/torch':>9}  target"
    print(head)
    print("-" * len(head))
    wanted = set(ARGS.models.split(","))
    for name, model, method, steps, loop in [c for c in configs if c[0] in wanted]:
        layout = "loop" if loop else "unrolled"
        path = out_dir / f"{name}-{method}{steps}-{layout}.onnx"
        r, wall = export(model, path, method=method, steps=steps, loop=loop)
        data = path.read_bytes()
        wb = weight_bytes(model)
        results["files"].append({"model": name, "method": method, "steps": steps, "layout": layout,
                                 "size_bytes": len(data), "weight_bytes": wb, "leaks": leaks(data),
                                 "export_seconds": r.export_seconds, "export_wall_seconds": wall,
                                 "parity_max_abs_error": r.parity["max_abs_error"]})
        sess = session(path, ARGS.threads)
        twin = fixed_step_model(model, method, steps).eval()
        for batch in (1, 256):
            x = torch.randn((batch, *model.spec.input_shape), generator=torch.Generator().manual_seed(batch))
            xn = x.numpy()

            def torch_run(twin=twin, x=x):
                with torch.inference_mode():
                    return twin(x)

            fns = {"ort": lambda: sess.run(None, {"input": xn}), "torch": torch_run}
            gflop_row = name == "64-256-64" and batch == 256
            if gflop_row:
                fns["matmul"] = matmul  # the reference rate, under the same machine noise
            t = {k: statistics.median(v) for k, v in interleaved(
                fns, min_time=ARGS.min_time, repeat=ARGS.repeat if batch == 1 or name != "mnist-odenet" else 5).items()}
            ratio = t["ort"] / t["torch"]
            target = 0.25 if batch == 1 else 0.5
            row = {"model": name, "method": f"{method}x{steps}", "layout": layout, "batch": batch,
                   "ort_ms": 1e3 * t["ort"], "torch_ms": 1e3 * t["torch"], "ratio": ratio, "target": target,
                   "met": ratio <= target}
            if gflop_row:
                flops = steps * 4 * 2 * batch * (64 * 256 + 256 * 64)  # the two Gemms of each evaluation
                row["gflops"] = flops / t["ort"] / 1e9
                row["matmul_gflops"] = mm_flops / t["matmul"] / 1e9
                row["matmul_fraction"] = row["gflops"] / row["matmul_gflops"]
            results["latency"].append(row)
            extra = (f"  ({row['gflops']:.1f} GFLOP/s = {100 * row['matmul_fraction']:.0f}% of MatMul's "
                     f"{row['matmul_gflops']:.1f}; target >= 60%"
                     f" {'met' if row['matmul_fraction'] >= 0.6 else 'MISSED'})") if "gflops" in row else ""
            print(f"{name:<13} {method + 'x' + str(steps):<9} {layout:<9} {batch:>5} {row['ort_ms']:>9.3f} "
                  f"{row['torch_ms']:>9.3f} {ratio:>9.2f}  <= {target} {'met' if row['met'] else 'MISSED'}{extra}")

    print("\nexport time (graph assembly + onnx.checker; total adds the parity check in onnxruntime)")
    for label, model, steps in (("mnist-odenet rk4x8", mnist, 8), ("2-50-2 rk4x256", models["2-50-2"], 256)):
        times = []
        for i in range(3):
            r, wall = export(model, out_dir / f"time{i}.onnx", method="rk4", steps=steps)
            times.append((r.export_seconds, wall))
        exp, wall = (statistics.median(v) for v in zip(*times))
        results["export"][label] = {"export_seconds": exp, "total_seconds": wall, "target": 5.0}
        print(f"  {label:<20} {exp:6.2f} s (total {wall:5.2f} s)  target < 5 s {'met' if wall < 5 else 'MISSED'}")
    if ARGS.quick:
        print("  dynamo exporter, hand-unrolled 2-50-2 rk4x256: skipped (--quick)")
    else:
        d = dynamo_export(out_dir, 256)
        results["export"]["dynamo 2-50-2 rk4x256"] = d
        if d["status"] == "ok":
            print(f"  {'dynamo, hand-unrolled 2-50-2 rk4x256':<20} {d['seconds']:6.1f} s (process {d['process_seconds']:.1f} s), "
                  f"{d['size_bytes']:,} bytes, machine paths/source text inside: {', '.join(d['leaks']) or 'none'}")
        else:
            print(f"  dynamo exporter, hand-unrolled 2-50-2 rk4x256: {d['status']}")

    print("\nfile size vs raw weight bytes (unrolled target <= 1.05 x weights + 200 KB up to 64 steps)")
    for f in results["files"]:
        limit = 1.05 * f["weight_bytes"] + 200_000
        judged = f["layout"] == "unrolled" and f["steps"] <= 64
        verdict = ("met" if f["size_bytes"] <= limit else "MISSED") if judged else "-"
        f["size_target_met"] = f["size_bytes"] <= limit if judged else None
        print(f"  {f['model']:<13} {f['method'] + 'x' + str(f['steps']):<9} {f['layout']:<9} {f['size_bytes']:>10,} B  "
              f"weights {f['weight_bytes']:>9,} B  ratio {f['size_bytes'] / f['weight_bytes']:5.2f}  "
              f"limit {limit:>10,.0f} B {verdict:<6}  leaks: {', '.join(f['leaks']) or 'none'}")
    if ARGS.json:
        ARGS.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {ARGS.json}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
