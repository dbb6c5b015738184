"""Training on a CUDA device (issue #6): the loop learns there, a resumed run equals an
uninterrupted one, the weights export to ONNX with parity, and ``torchrun`` trains with the
nccl backend. Skipped where torch sees no CUDA device (CI has none)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

import odespec
from odespec.api import load_weights
from odespec.train import TrainingInterrupted
from odespec.train.loop import resume, train

from train_helpers import circles_spec, demo_spec, latent_spec, stop_at, write

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPECS: dict[str, Callable[..., str]] = {"demo": demo_spec, "latent": latent_spec, "circles": circles_spec}


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(SPECS))
def test_cuda_training_learns_and_resumes_exactly(name: str, tmp_path: Path):
    spec = write(tmp_path, SPECS[name]())
    ref = tmp_path / "ref"
    result = train(spec, ref, device="cuda", progress=False)
    assert result.iterations == 12
    recs = records(ref)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs)
    info = json.loads((ref / "run.json").read_text())
    assert info["device"] == "cuda" and info["status"] == "finished"
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(spec, run, device="cuda", callbacks=[stop_at(7)], progress=False)
    resume(run, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records(run)) == strip(recs)
    a, b = load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_demo_learns_on_cuda(tmp_path: Path):
    spec = write(tmp_path, demo_spec(iterations=60))
    train(spec, tmp_path / "run", device="cuda", progress=False)
    recs = records(tmp_path / "run")
    first, last = recs[0]["loss"], min(r["loss"] for r in recs[-10:])
    assert last < 0.7 * first, (first, last)


def test_cuda_trained_weights_export_with_parity(tmp_path: Path):
    spec = write(tmp_path, demo_spec(iterations=6))
    train(spec, tmp_path / "run", device="cuda", progress=False)
    model = odespec.build(spec, device="cuda")
    load_weights(model, tmp_path / "run" / "model.safetensors")
    assert next(model.parameters()).device.type == "cuda"
    res = odespec.export_onnx(model, tmp_path / "m.onnx", method="rk4", steps=8)
    assert res.parity["max_abs_error"] <= 1e-4
    assert next(model.parameters()).device.type == "cuda"  # the user's model was not moved


def test_torchrun_on_cuda(tmp_path: Path):
    """One process per GPU, with the nccl backend where there are several. On a machine with
    one GPU torchrun starts one process, which trains without a process group (nccl refuses two
    ranks on one GPU): then this checks only that training under torchrun finds its GPU."""
    n = torch.cuda.device_count()
    spec = write(tmp_path, demo_spec(iterations=4).replace("odespec: 1\n", "odespec: 1\ndtype: float64\n"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
         "--master-port", str(port), "-m", "odespec", "train", str(spec), "-o", str(tmp_path / "ddp"),
         "--device", "cuda"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["status"] == "finished" and info["processes"] == n and info["device"] == "cuda"
