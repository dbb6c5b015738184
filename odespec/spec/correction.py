"""``export.onnx.correction``: a learned step correction (hypersolver, Poli et al. 2020) exported
with the model. The spec language's part: the options, their defaults, the schema fragment and
the checks that need the rest of the spec. Training and export live in
:mod:`odespec.export.correction`.

A fixed-step method of order p makes a local error of order h^(p+1) per step; a small network
g(t, h, y_n, k1) trained to predict that error divided by h^(p+1) is added to every step::

    y_{n+1} = y_n + h * sum(b_i k_i) + h^(p+1) * g(t_n, h, y_n, k1)

so a cheaper grid may reach the tolerance the plain grid needs more f-evaluations for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Optional

__all__ = ["CorrectionSpec", "CORRECTION_DEFAULTS", "correction_schema", "correction_spec"]


@dataclass(frozen=True)
class CorrectionSpec:
    """The options of the correction network and of its training."""

    #: width of the correction network's hidden layers (features, or channels for image states)
    hidden: int = 16
    #: optimiser steps (Adam, full batch) of the training on the one-step residuals
    iterations: int = 500
    #: Adam's learning rate
    lr: float = 1e-2
    #: Adam steps that then fine-tune the nets through the whole corrected solve, against the
    #: training solver's outputs on the fit inputs (0: the one-step fit alone)
    refine: int = 300
    #: fraction of the calibration inputs held out: the correction is trained on the rest, and
    #: kept only if it lowers the error on these
    held_out: float = 0.25
    #: with ``steps: auto``, how many cheaper grids (method x steps) the search may train a
    #: correction for; 0: only the calibrated grid itself
    trials: int = 6
    #: seed of the network's initialisation and the split of the inputs
    seed: int = 0


CORRECTION_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(CorrectionSpec)}

_DESCRIPTIONS = {
    "hidden": "Width of the correction network: its two dense hidden layers for a vector state, the hidden "
              "channels between its two 3x3 (or 3) convolutions for an image (sequence) state.",
    "iterations": "Adam steps (full batch) fitting the one-step residuals.",
    "lr": "Adam's learning rate.",
    "refine": "Adam steps that then fine-tune the correction through the whole corrected solve, so that the model's "
              "outputs match the training solver's on the fit inputs (the one-step fit leaves errors that add up "
              "over the steps); 0: the one-step fit alone.",
    "held_out": "Fraction of the calibration inputs held out: the correction trains on the rest and is kept "
                "only if it lowers the error on these (and that error is within the tolerance).",
    "trials": "steps: auto only: how many grids cheaper than the calibrated one the search may train a "
              "correction for (0: only the calibrated grid).",
    "seed": "Seed of the network's initialisation and of the split of the inputs.",
}

_RANGES: dict[str, dict[str, Any]] = {
    "hidden": {"type": "integer", "minimum": 1, "maximum": 1024},
    "iterations": {"type": "integer", "minimum": 1, "maximum": 100_000},
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "refine": {"type": "integer", "minimum": 0, "maximum": 100_000},
    "held_out": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "trials": {"type": "integer", "minimum": 0, "maximum": 64},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
}


def correction_schema() -> dict[str, Any]:
    """The schema of ``export.onnx.correction``."""
    return {
        "type": "object",
        "description": "A learned step correction (hypersolver): a small network g(t, h, y, k1), trained after "
                       "calibration on the training solver's states at the step points and refined on its "
                       "outputs, adds h^(p+1) g to "
                       "every step of the exported method (order p). Kept only when it lowers the held-out "
                       "error within the tolerance; the report says what it saves (f-evaluations, MACs). "
                       "Write {} for the defaults.",
        "properties": {name: {**_RANGES[name], "default": CORRECTION_DEFAULTS[name],
                              "description": _DESCRIPTIONS[name]} for name in CORRECTION_DEFAULTS},
        "additionalProperties": False,
    }


#: ``error(path, message, hint, key=...)`` of the validator
ErrorFn = Callable[..., None]


def correction_spec(raw: dict[str, Any], path: tuple, error: ErrorFn, *, loop: bool,
                    blocks: Optional[list[Any]], series: bool = False) -> Optional[CorrectionSpec]:
    """``raw`` (schema-valid) as a :class:`CorrectionSpec`, after the checks that need the rest of
    the spec: the unrolled layout, and an ODE block it can correct (``blocks``: the model's ODE
    block specs, ``None`` when the model is not valid), and a model that reads no series. Errors go to ``error`` at ``path``."""
    ok = True
    if loop:
        error(path, "the correction network is laid into each unrolled step; the loop layout is not available "
                    "with it", "remove loop: true, or remove correction", key=True)
        ok = False
    if series:
        error(path, "the correction is not available for a model that reads irregular series (its training "
                    "splits the calibration inputs sample by sample)", "remove correction", key=True)
        ok = False
    elif blocks is not None and not any(correctable(b) for b in blocks):
        error(path, "the model has no ODE block the correction can apply to (a continuous ODE block or RK-Net "
                    "on its own time grid; not a ResNet block, nor t: query)",
              "remove correction", key=True)
        ok = False
    return CorrectionSpec(**raw) if ok else None


def correctable(block: Any) -> bool:
    """Whether an ODE block spec takes a correction: a continuous block (or RK-Net) on its own
    time grid, not a ResNet block (its own weights per step) nor a ``t: query`` block."""
    return getattr(block, "family", None) != "resnet" and not getattr(block, "query", False)
