"""The Python API behind ``odespec build``: spec -> model -> ONNX -> parity -> report."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

import odespec
from odespec.compile.model import ODENet, compile_spec, count_parameters
from odespec.compile.ode_block import ResNetBlock
from odespec.errors import BuildError
from odespec.spec import load_spec
from odespec.spec.model import OdeBlockSpec, Spec

SpecLike = Union[Spec, str, "os.PathLike[str]"]

__all__ = ["build", "export_onnx", "build_all", "ExportResult", "BuildResult"]


def _as_spec(spec: SpecLike) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def build(spec: SpecLike, *, device: Optional[str] = None, dtype: Optional[str] = None) -> ODENet:
    """Compile a spec (object or path) into a ``torch.nn.Module``.

    ``device``/``dtype`` override the spec's (``cpu``/``cuda``, ``float32``/``float64``).
    """
    return compile_spec(_as_spec(spec), device=device, dtype=dtype)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    sha256: str
    size_bytes: int
    method: str
    steps: int
    opset: int
    nfe_per_forward: int
    export_seconds: float
    parity: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "method": self.method,
            "steps": self.steps,
            "opset": self.opset,
            "nfe_per_forward": self.nfe_per_forward,
            "export_seconds": round(self.export_seconds, 4),
            "parity": self.parity,
        }


def export_onnx(
    model: ODENet,
    path: Union[str, "os.PathLike[str]"],
    *,
    method: Optional[str] = None,
    steps: Optional[int] = None,
    opset: Optional[int] = None,
    parity: bool = True,
    parity_tol: Optional[float] = None,
    loop: Optional[bool] = None,
) -> ExportResult:
    """Unroll ``model`` with a fixed-step method, export it to ONNX, check it with
    ``onnx.checker`` and (by default) against onnxruntime, then write it atomically.

    ``loop=True`` writes each output interval's steps as one ONNX ``Loop`` node instead of
    unrolling them (``None``: the spec's ``export.onnx.loop``). Nothing is written if any
    check fails.
    """
    from odespec.export.onnx_export import build_onnx, check_onnx, export_settings_from_spec
    from odespec.export.parity import check_parity
    from odespec.export.unroll import fixed_step_model
    from odespec.fileio import atomic_write_bytes
    from odespec.solvers.tableaus import get_tableau, is_adaptive

    spec = model.spec
    settings = export_settings_from_spec(spec, method=method, steps=steps, opset=opset, loop=loop)
    if is_adaptive(settings.method):
        raise BuildError(f"{settings.method!r} is adaptive; an exported graph is fixed-step",
                         "choose a fixed-step method such as rk4")
    start = time.perf_counter()
    cpu = model if _on_cpu(model) else _cpu_copy(model)
    onnx_model = build_onnx(cpu, settings)
    check_onnx(onnx_model)
    data = onnx_model.SerializeToString()
    elapsed = time.perf_counter() - start
    twin = fixed_step_model(cpu, settings.method, settings.steps)
    parity_result = None
    if parity:
        dtype = next(cpu.parameters()).dtype if any(True for _ in cpu.parameters()) else torch.float32
        # a graph exported with a fixed batch of 1 can only be checked at batch 1
        batches = (1, 7, 256) if settings.dynamic_batch else (1,)
        parity_result = check_parity(
            data, twin, spec.input_shape, dtype=dtype, batch_sizes=batches,
            tolerance=parity_tol if parity_tol is not None else spec.export.parity_tol, seed=spec.seed,
        ).to_dict()
    stages = len(get_tableau(settings.method).b)
    nfe = sum(
        len(b.dynamics) if isinstance(b, ResNetBlock) else _grid_steps(b.spec, settings.steps) * stages
        for b in cpu.ode_blocks
    )
    target = atomic_write_bytes(path, data)
    return ExportResult(
        path=target, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), method=settings.method,
        steps=settings.steps, opset=settings.opset, nfe_per_forward=nfe, export_seconds=elapsed, parity=parity_result,
    )


def _grid_steps(block: OdeBlockSpec, steps: int) -> int:
    from odespec.export.onnx_export import fixed_grid

    return sum(len(interval) for interval in fixed_grid(block.t, steps))


def _on_cpu(model: torch.nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def _cpu_copy(model: ODENet) -> ODENet:
    import copy

    return copy.deepcopy(model).cpu()


@dataclass
class BuildResult:
    """Everything ``odespec build`` produced, serialisable as the build report."""

    spec: Spec
    model: ODENet
    export: ExportResult
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)


def summary(spec: Spec) -> dict[str, Any]:
    """Layers with output shapes and parameter counts, and each ODE block's solver."""
    rows = []
    for i, item in enumerate(spec.model):
        row: dict[str, Any] = {"index": i, "kind": item.kind, "line": item.loc.line,
                               "output_shape": list(item.out_shape), "parameters": item.num_params}
        if isinstance(item, OdeBlockSpec):
            s = item.solver
            row["solver"] = {"method": s.method, **({"rtol": s.rtol, "atol": s.atol} if s.adaptive
                                                    else {"steps": s.steps, "step_size": s.step_size})}
            row["gradient"] = item.gradient.method
            row["t"] = [item.t[0], item.t[-1]]
            row["output"] = item.output
        rows.append(row)
    return {"input_shape": list(spec.input_shape), "output_shape": list(spec.output_shape),
            "parameters": spec.num_params, "layers": rows}


def build_all(
    spec_path: Union[str, "os.PathLike[str]"],
    out_dir: Union[str, "os.PathLike[str]"],
    *,
    method: Optional[str] = None,
    steps: Optional[int] = None,
    device: Optional[str] = None,
    dtype: Optional[str] = None,
    loop: Optional[bool] = None,
) -> BuildResult:
    """The whole chain: validate, compile, export, check parity, write ``NAME.onnx`` and
    ``NAME.build.json`` into ``out_dir``. ``loop`` as in :func:`export_onnx`."""
    import json

    from odespec.fileio import atomic_write_text

    t0 = time.perf_counter()
    spec = load_spec(spec_path)
    model = build(spec, device=device, dtype=dtype)
    n_params = count_parameters(model)
    if n_params != spec.num_params:  # the validator's shape-based count must be exact
        raise BuildError(f"internal error: built {n_params} parameters, the spec promised {spec.num_params}")
    t_built = time.perf_counter()
    out = Path(out_dir)
    result = export_onnx(model, out / spec.export.file, method=method, steps=steps, loop=loop)
    report = {
        "odespec_version": odespec.__version__,
        "spec": {"file": os.path.basename(str(spec_path)), "name": spec.name, "sha256": spec.source_sha256},
        "dtype": dtype or spec.dtype,
        "device": device or spec.device,
        "parameters": n_params,
        "summary": summary(spec),
        "onnx": result.to_dict(),
        "timings_seconds": {"build": round(t_built - t0, 4), "export": round(result.export_seconds, 4),
                            "total": round(time.perf_counter() - t0, 4)},
    }
    report_path = atomic_write_text(out / f"{spec.name}.build.json", json.dumps(report, indent=2) + "\n")
    return BuildResult(spec=spec, model=model, export=result, report_path=report_path, report=report)
