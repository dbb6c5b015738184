"""The one error hierarchy of odespec.

Every error a user can cause derives from :class:`OdespecError`. The library raises these typed
errors; the command line turns them into messages and exit codes (``cli.py``), so no user error
ever surfaces as a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

__all__ = [
    "OdespecError",
    "SpecIssue",
    "SpecError",
    "SolverError",
    "TracedAdaptiveSolveError",
    "BuildError",
    "ExportError",
    "ParityError",
    "RunError",
    "DataFileError",
    "InputFileError",
    "SeriesInputError",
]


class OdespecError(Exception):
    """Root of every error odespec raises on purpose."""

    #: process exit code the CLI uses for this family of errors
    exit_code: int = 1


@dataclass(frozen=True)
class SpecIssue:
    """One problem found in a spec, with its place in the source text.

    ``line`` and ``column`` are 1-based; they are 0 when the problem has no place in the text
    (for example an empty file). ``path`` is the spec path such as ``model[3].ode.solver.rtol``.
    """

    file: str
    line: int
    column: int
    path: str
    message: str
    hint: Optional[str] = None

    def format(self) -> str:
        """Render as ``FILE:LINE:COL: error: PATH: MESSAGE`` plus an optional ``hint:`` line."""
        where = f"{self.file}:{self.line}:{self.column}" if self.line else f"{self.file}"
        subject = f"{self.path}: " if self.path else ""
        text = f"{where}: error: {subject}{self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def to_dict(self) -> dict:
        """A JSON-ready form, used by ``--format json``."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class SpecError(OdespecError):
    """A spec is malformed or invalid. Holds every problem found, not just the first."""

    exit_code = 2

    def __init__(self, issues: Iterable[SpecIssue]):
        self.issues: tuple[SpecIssue, ...] = tuple(
            sorted(issues, key=lambda i: (i.file, i.line, i.column, i.path, i.message))
        )
        if not self.issues:
            raise ValueError("SpecError needs at least one issue")
        super().__init__("\n".join(i.format() for i in self.issues))


class SolverError(OdespecError):
    """An ODE solve failed. Carries where (``t``), the step size ``h`` and why (``reason``).

    ``reason`` is one of ``"non-finite"``, ``"step-size-underflow"``, ``"max-steps"``.
    """

    REASONS = ("non-finite", "step-size-underflow", "max-steps")

    def __init__(self, reason: str, t: float, h: float, message: str, hint: Optional[str] = None):
        if reason not in self.REASONS:
            raise ValueError(f"unknown solver failure reason {reason!r}")
        self.reason = reason
        self.t = t
        self.h = h
        self.hint = hint
        text = f"{message} (t={t:.6g}, step size={h:.3g}, reason: {reason})"
        if hint:
            text += f"\n  hint: {hint}"
        super().__init__(text)


class TracedAdaptiveSolveError(SolverError):
    """An adaptive solve was called under a tracer (``torch.onnx.export``, ``torch.jit.trace``,
    ``torch.export``). Its step sizes depend on the input, so a traced graph would freeze the
    example input's steps and be wrong at other inputs; ``reason`` is ``"traced"``, ``t`` and
    ``h`` NaN (refused before any step)."""

    def __init__(self, message: str, hint: Optional[str] = None):
        self.reason = "traced"
        self.t = float("nan")
        self.h = float("nan")
        self.hint = hint
        OdespecError.__init__(self, message + (f"\n  hint: {hint}" if hint else ""))


class BuildError(OdespecError):
    """Building a model from a valid spec failed (device missing, weights mismatch, ...)."""

    def __init__(self, message: str, hint: Optional[str] = None):
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


class ExportError(BuildError):
    """Exporting to ONNX, or checking the exported file, failed."""


class ParityError(ExportError):
    """onnxruntime's output differs from PyTorch's by more than the allowed tolerance."""


class RunError(OdespecError):
    """Running or inspecting an ONNX file failed: the file is missing, is not ONNX, or
    onnxruntime could not run it."""

    def __init__(self, message: str, hint: Optional[str] = None):
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))


class DataFileError(OdespecError):
    """A data file does not fit the data contract (:mod:`odespec.data_contract`): unreadable, not
    numbers, a shape that does not feed the model, NaN or infinity, bad class labels. A usage
    error (exit code 2). Raised as the reading command's own subclass,
    :class:`odespec.train.DataError` or :class:`InputFileError`, which take ``(message, hint)``."""

    exit_code = 2


class InputFileError(RunError, DataFileError):
    """An input file for ``odespec run`` cannot be used: missing, unreadable, or its array
    does not fit the model's input (shape or dtype). A usage error, hence exit code 2."""

    exit_code = 2


class SeriesInputError(OdespecError):
    """A compiled model that reads irregular series (``times``, ``mask``, ``query_times``) was
    called without an input it reads, with one it does not read, or with one of the wrong shape
    or order. A usage error (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, hint: Optional[str] = None):
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n  hint: {hint}" if hint else ""))
