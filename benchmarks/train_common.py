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


def model_and_batches(spec_path: Path) -> tuple[Any, Any, Any]:
    """``(spec, model, batches)`` of a spec with a ``train`` section, as ``odespec train`` sets
    them up (compiled model with the spec's initialisation, the data source's batch stream on
    the CPU in float32): for benchmarks that drive the pieces themselves."""
    import torch

    from odespec.compile.model import compile_spec
    from odespec.spec import load_spec
    from odespec.train import data as sources
    from odespec.train.batches import Batches
    from odespec.train.data import Need
    from odespec.train.reinit import apply_init

    spec = load_spec(spec_path)
    ts = spec.train
    model = compile_spec(spec)
    apply_init(model, ts.init, spec.seed)
    labels = ts.loss.kind == "cross_entropy"
    need = Need.of(spec.input_shape, spec.output_shape, labels, spec.series, spec.model)  # as the loop does
    loaded = sources.get(ts.data.source).load(ts.data.options, seed=ts.seed, base_dir=spec_path.parent, need=need)
    batches = Batches(loaded, ts.batch_size, seed=ts.seed, device=torch.device("cpu"), dtype=torch.float32,
                      labels=labels)
    return spec, model, batches
