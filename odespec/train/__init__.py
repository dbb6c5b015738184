"""Training from the spec: ``odespec train`` and :func:`train` / :func:`resume`.

Importing this package does not import torch: the spec's ``train:`` section registers with the
validator from :mod:`odespec.train.section`, and its schema and checks use the data-source
registry (:mod:`odespec.train.data`) and :mod:`odespec.train.check`. The loop, losses and
checkpoints are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["train", "resume", "TrainResult", "TrainError", "DataError", "TrainingFailed", "TrainingInterrupted"]

from odespec.train.errors import DataError, TrainError, TrainingFailed, TrainingInterrupted

if TYPE_CHECKING:  # pragma: no cover
    from odespec.train.loop import TrainResult, resume, train


def __getattr__(name: str) -> Any:
    # PEP 562: the torch-backed loop is imported on first use only
    if name in ("train", "resume", "TrainResult"):
        from odespec.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'odespec.train' has no attribute {name!r}")
