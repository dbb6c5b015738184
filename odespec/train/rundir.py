"""A training run's directory and its metrics log.

::

    RUN/spec.yaml           the spec, byte for byte as trained (resume reads this copy)
    RUN/run.json            name, spec hash, where data paths are resolved, iterations, status
    RUN/metrics.jsonl       one JSON line per iteration (eval metrics on the lines where it ran)
    RUN/checkpoints/        iter-NNNNNNNN.safetensors + .json (see odespec.train.checkpoint)
    RUN/model.safetensors   the trained weights (odespec build SPEC --weights RUN/model.safetensors):
                            the best evaluation's in a run that evaluates along the way (train.eval_every),
                            else the last iterate's
    RUN/model.last.safetensors  the last iterate, beside the best evaluation's weights

Every file is written atomically. The metrics log is kept in memory and rewritten whole (at
checkpoints, evaluations, the end and every few seconds), so a reader never sees a torn line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from odespec.fileio import atomic_write_bytes, atomic_write_text
from odespec.train.errors import TrainError

__all__ = ["SPEC_FILE", "RUN_FILE", "METRICS_FILE", "WEIGHTS_FILE", "LAST_WEIGHTS_FILE", "CHECKPOINTS", "RUN_FORMAT",
           "create_run", "read_run_info", "write_run_info", "MetricsLog"]

SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"
#: the last iterate, beside WEIGHTS_FILE when that holds the best evaluation's weights
LAST_WEIGHTS_FILE = "model.last.safetensors"
CHECKPOINTS = "checkpoints"
RUN_FORMAT = "odespec-run/1"


def create_run(run_dir: Path, spec_bytes: bytes, info: Mapping[str, Any]) -> None:
    """Make a new run directory; refuse one that already holds files."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise TrainError(f"{run_dir} already exists and is not an empty directory",
                         f"resume that run with: odespec train --resume {run_dir}, or choose another -o DIR")
    (run_dir / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(run_dir / SPEC_FILE, spec_bytes)
    write_run_info(run_dir, info)


def write_run_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """(Re)write ``run.json``."""
    atomic_write_text(run_dir / RUN_FILE, json.dumps({"format": RUN_FORMAT, **info}, indent=2) + "\n")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of an existing run; a :class:`TrainError` if ``run_dir`` is not a run."""
    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainError(f"{run_dir} is not a training run (no {RUN_FILE})",
                         "give the directory `odespec train` wrote (its -o DIR)") from None
    except (OSError, ValueError) as e:
        raise TrainError(f"cannot read {run_dir / RUN_FILE}: {e}") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise TrainError(f"{run_dir / RUN_FILE} is not an odespec run file ({RUN_FORMAT})")
    return info


class MetricsLog:
    """The per-iteration records, in memory, written out whole and atomically."""

    #: rewrite at least this often (seconds) while training
    FLUSH_SECONDS = 5.0

    def __init__(self, path: Path, records: Optional[list[dict[str, Any]]] = None, *, write: bool = True):
        self.path = path
        #: False on the data-parallel ranks other than 0, which keep the records but write nothing
        self.write = write
        self.lines = [json.dumps(r) for r in records or []]
        self.last: Optional[dict[str, Any]] = records[-1] if records else None
        self._flushed = time.monotonic()

    @classmethod
    def resume(cls, path: Path, upto: int, *, write: bool = True) -> "MetricsLog":
        """The log of a resumed run: its records up to iteration ``upto`` (those past the checkpoint
        will be made again)."""
        records: list[dict[str, Any]] = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # cannot happen with atomic writes; tolerate a hand-edited file
                if isinstance(rec, dict) and isinstance(rec.get("iteration"), int) and rec["iteration"] <= upto:
                    records.append(rec)
        return cls(path, records, write=write)

    def append(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record))
        self.last = record

    def update_last(self, extra: Mapping[str, Any]) -> None:
        """Add (evaluation) metrics to the latest record."""
        assert self.last is not None
        self.last.update(extra)
        self.lines[-1] = json.dumps(self.last)

    def flush(self, *, if_due: bool = False) -> None:
        """Write the file (``if_due``: only when the last write is FLUSH_SECONDS old)."""
        if not self.write or (if_due and time.monotonic() - self._flushed < self.FLUSH_SECONDS):
            return
        atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))
        self._flushed = time.monotonic()
