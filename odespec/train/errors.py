"""Errors of ``odespec train``; all derive from :class:`odespec.errors.OdespecError`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from odespec.errors import DataFileError, OdespecError

__all__ = ["TrainError", "DataError", "TrainingFailed", "TrainingInterrupted"]


class TrainError(OdespecError):
    """Training could not start or go on (run directory in use, no checkpoint to resume, ...)."""

    exit_code = 2

    def __init__(self, message: str, hint: Optional[str] = None):
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


class DataError(TrainError, DataFileError):
    """Training data are missing or do not fit the model (a usage error: exit code 2)."""


class TrainingFailed(TrainError):
    """Training went wrong after it started (the loss became NaN or infinite): exit code 1."""

    exit_code = 1


class TrainingInterrupted(OdespecError):
    """Ctrl-C stopped training; a checkpoint was written first, so the run can be resumed."""

    exit_code = 130

    def __init__(self, run_dir: Path, iteration: int, total: int, checkpoint: Path):
        self.run_dir = run_dir
        self.iteration = iteration
        self.total = total
        self.checkpoint = checkpoint
        super().__init__(
            f"interrupted after iteration {iteration} of {total}; checkpoint written to {checkpoint}\n"
            f"  resume with: odespec train --resume {run_dir}"
        )
