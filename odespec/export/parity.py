"""Parity: run the ONNX file in onnxruntime and compare with the PyTorch fixed-step model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from odespec.errors import ExportError, ParityError
from odespec.export.onnx_export import INPUT_NAME


@dataclass(frozen=True)
class ParityResult:
    """Largest differences between onnxruntime and PyTorch over all checked batches."""

    batch_sizes: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance

    def to_dict(self) -> dict:
        return {
            "batch_sizes": list(self.batch_sizes),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "tolerance": self.tolerance,
            "ok": self.ok,
        }


def ort_session(model_bytes: bytes):
    """An onnxruntime CPU session for a serialized model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ExportError(f"onnxruntime could not load the exported model: {e}") from e


def seeded_inputs(input_shape: Sequence[int], *, dtype: torch.dtype, batch_sizes: Sequence[int] = (1, 7, 256),
                  seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal input batches drawn from ``seed`` (in float64, then cast, so that both
    dtypes see the same values): the inputs of the parity check and of the deployment error."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((b, *input_shape), generator=gen, dtype=torch.float64).to(dtype) for b in batch_sizes]


def check_parity(
    model_bytes: bytes,
    reference: torch.nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    tolerance: float,
    batch_sizes: Sequence[int] = (1, 7, 256),
    seed: int = 0,
    session: Optional[Any] = None,
) -> ParityResult:
    """Compare onnxruntime with ``reference`` (the PyTorch fixed-step model) on seeded random
    inputs at several batch sizes; raise :class:`ParityError` above ``tolerance``.
    ``session``: an onnxruntime session of ``model_bytes`` already open."""
    sess = session if session is not None else ort_session(model_bytes)
    max_abs = 0.0
    max_rel = 0.0
    reference.eval()
    for x in seeded_inputs(input_shape, dtype=dtype, batch_sizes=batch_sizes, seed=seed):
        with torch.no_grad():
            want = reference(x).cpu().to(torch.float64).numpy()
        (got,) = sess.run(None, {INPUT_NAME: x.numpy()})
        got = got.astype(np.float64)
        if got.shape != want.shape:
            raise ParityError(f"onnxruntime output shape {got.shape} != PyTorch output shape {want.shape}")
        diff = np.abs(got - want)
        if not np.all(np.isfinite(got)):
            raise ParityError("onnxruntime produced non-finite values where PyTorch did not")
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-12)).max(initial=0.0)))
    result = ParityResult(tuple(batch_sizes), max_abs, max_rel, tolerance)
    if not result.ok:
        raise ParityError(
            f"onnxruntime differs from PyTorch by up to {max_abs:.3g} (tolerance {tolerance:g})",
            "float32 error grows with the step count; raise export.onnx.parity_tol or use dtype: float64",
        )
    return result
