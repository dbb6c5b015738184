"""Shared helpers of the training benchmarks (issue #6): spec variants written as JSON (a
YAML 1.2 document), training runs with their metrics, and small statistics."""

from __future__ import annotations

import copy
import json
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "specs"


def spec_data(path: Path) -> dict[str, Any]:
    """A spec file as plain data (odespec's YAML 1.2 reader)."""
    from odespec.spec.load import load_file

    return copy.deepcopy(load_file(path).data)


def write_variant(data: dict[str, Any], directory: Path, edit: Optional[Callable[[dict], None]] = None,
                  name: str = "spec.yaml") -> Path:
    """Write ``data`` (after ``edit`` changes a copy of it) as a spec file in a fresh directory."""
    doc = copy.deepcopy(data)
    if edit is not None:
        edit(doc)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    path = directory / name
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def first_ode(doc: dict[str, Any]) -> dict[str, Any]:
    """The options of the spec's first ODE block."""
    return next(item["ode"] for item in doc["model"] if isinstance(item, dict) and "ode" in item)


def records(run: Path) -> list[dict[str, Any]]:
    """The run's metrics, one dict per iteration."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tail(recs: list[dict[str, Any]], fraction: float = 0.2) -> list[dict[str, Any]]:
    """The last ``fraction`` of the iterations."""
    return recs[int(round(len(recs) * (1 - fraction))):]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def train_quiet(spec: Path, run: Path, **kw: Any) -> Any:
    """Train without progress output into a fresh run directory."""
    from odespec.train.loop import train

    shutil.rmtree(run, ignore_errors=True)
    return train(spec, run, progress=False, **kw)
