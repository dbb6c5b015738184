"""Parity: run the ONNX file in a runtime (onnxruntime by default) and compare with the PyTorch
fixed-step model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from odespec.errors import ParityError
from odespec.export.inputs import SEEDED_BATCHES, SeriesInputs, call_model, numpy_feeds, seeded_input_set
from odespec.export.session import ort_session

__all__ = ["ParityResult", "parity_batches", "check_parity"]


@dataclass(frozen=True)
class ParityResult:
    """Largest differences between a runtime and PyTorch over all checked batches."""

    batch_sizes: tuple[int, ...]
    #: ``max |onnxruntime - pytorch|`` over every element: what :attr:`bound` bounds
    max_abs_error: float
    #: element-wise relative error, ``max |onnxruntime - pytorch| / max(|pytorch|, 1e-12)`` taken
    #: per element (unlike the deployment error's ``max_scaled_error``, which divides by the
    #: output's largest magnitude)
    max_rel_error: float
    tolerance: float
    #: ``max_abs_error`` divided by PyTorch's largest output magnitude (the deployment error's
    #: ``max_scaled_error``)
    max_scaled_error: float = 0.0
    #: what :attr:`tolerance` bounds: ``abs`` (:attr:`max_abs_error`) or ``scaled``
    #: (:attr:`max_scaled_error`: a float16 graph's rounding is relative to the output's size)
    measure: str = "abs"
    runtime: str = "onnxruntime"
    #: PyTorch's largest output magnitude over the checked batches
    output_scale: float = 0.0

    @property
    def error(self) -> float:
        """The error :attr:`bound` bounds."""
        return self.max_scaled_error if self.measure == "scaled" else self.max_abs_error

    @property
    def bound(self) -> float:
        """The largest :attr:`error` accepted: :attr:`tolerance`, times the output's largest
        magnitude where that exceeds 1 for the absolute measure. Float rounding is relative to
        the values rounded: logits of magnitude 7 from a float32 graph of 48 unrolled rk4 steps
        differ from PyTorch's by 1.1e-5 with no fault in the graph, and an absolute 1e-5 would
        refuse the shipped circles_anode spec trained with its own settings."""
        return self.tolerance if self.measure == "scaled" else self.tolerance * max(1.0, self.output_scale)

    @property
    def ok(self) -> bool:
        """Whether :attr:`error` is within :attr:`bound`."""
        return self.error <= self.bound

    def to_dict(self) -> dict[str, Any]:
        """The report's ``onnx.parity`` entry."""
        return {
            "batch_sizes": list(self.batch_sizes),
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "tolerance": self.tolerance,
            **({"bound": self.bound} if self.bound != self.tolerance else {}),
            "ok": self.ok,
            # the output-scaled error is the measure only of a graph computing in float16; elsewhere
            # parity's relative error is max_rel_error (element-wise) and no other
            **({"max_scaled_error": self.max_scaled_error, "measure": self.measure} if self.measure != "abs" else {}),
        }


def parity_batches(dynamic_batch: bool) -> tuple[int, ...]:
    """The batch sizes a graph is checked at: the seeded inputs' for a dynamic batch; a graph
    exported with a fixed batch of 1 can only be checked at batch 1."""
    return SEEDED_BATCHES if dynamic_batch else (1,)


def check_parity(
    model_bytes: bytes,
    reference: torch.nn.Module,
    input_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    tolerance: float,
    batch_sizes: Sequence[int] = SEEDED_BATCHES,
    seed: int = 0,
    session: Optional[Any] = None,
    series: Optional[SeriesInputs] = None,
    scaled: bool = False,
    runtime: str = "onnxruntime",
) -> ParityResult:
    """Compare ``runtime`` with ``reference`` (the PyTorch fixed-step model) on seeded random
    inputs at several batch sizes; raise :class:`ParityError` above ``tolerance``.
    ``session``: a session of ``model_bytes`` already open in ``runtime`` (anything with
    onnxruntime's ``run(None, feeds)``; default: an onnxruntime CPU session). ``series``: the
    model reads irregular series; each batch then has random per-sample grids as well.
    ``scaled``: ``tolerance`` bounds the error relative to the output's largest magnitude (a
    float16 graph) instead of the absolute error."""
    sess = session if session is not None else ort_session(model_bytes)
    max_abs = 0.0
    max_rel = 0.0
    scale = 0.0
    reference.eval()
    inputs = seeded_input_set(input_shape, dtype=dtype, batch_sizes=batch_sizes, seed=seed, series=series)
    for feeds in inputs.feeds():
        with torch.no_grad():
            want = call_model(reference, feeds).cpu().to(torch.float64).numpy()
        (got,) = sess.run(None, numpy_feeds(feeds))
        got = got.astype(np.float64)
        if got.shape != want.shape:
            raise ParityError(f"{runtime} output shape {got.shape} != PyTorch output shape {want.shape}")
        diff = np.abs(got - want)
        if not np.all(np.isfinite(got)):
            raise ParityError(f"{runtime} produced non-finite values where PyTorch did not",
                              "float16 overflows above 65504: export at precision mixed or float32"
                              if scaled else None)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        max_rel = max(max_rel, float((diff / np.maximum(np.abs(want), 1e-12)).max(initial=0.0)))
        scale = max(scale, float(np.abs(want).max(initial=0.0)))
    max_scaled = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    result = ParityResult(tuple(batch_sizes), max_abs, max_rel, tolerance, max_scaled,
                          "scaled" if scaled else "abs", runtime, scale)
    if not result.ok:
        what = "relative to the output's largest magnitude " if scaled else ""
        bound = (f"tolerance {tolerance:g}" if result.bound == tolerance else
                 f"tolerance {tolerance:g} x max |output| {scale:.3g} = {result.bound:.3g}")
        raise ParityError(
            f"{runtime} differs from PyTorch by up to {result.error:.3g} {what}({bound})",
            "half precision rounds every operation: raise export.onnx.parity_tol, or export at precision mixed"
            if scaled else
            "float32 error grows with the step count; raise export.onnx.parity_tol (--parity-tol) or use dtype: float64",
        )
    return result
