"""``odespec train`` on the command line (exit codes, formats, Ctrl-C and --resume) and the
trained weights' way into ``odespec build --weights``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import odespec
from odespec.api import load_weights
from odespec.cli import cli

from train_helpers import demo_spec, write


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    return write(tmp_path, demo_spec(iterations=8))


def test_train_text(spec: Path, tmp_path: Path):
    r = run("train", str(spec), "-o", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("trained tiny-demo: 8 iterations in ") and "eval_loss" in lines[0]
    assert lines[1] == f"wrote {tmp_path / 'run' / 'model.safetensors'}"
    assert lines[2] == f"export with: odespec build {spec} --weights {tmp_path / 'run' / 'model.safetensors'}"
    assert "it 8/8  loss" in r.stderr  # progress goes to stderr


def test_train_json_and_iterations_override(spec: Path, tmp_path: Path):
    r = run("train", str(spec), "-o", str(tmp_path / "run"), "--iterations", "3", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["iterations"] == 3 and doc["last"]["iteration"] == 3
    assert set(doc["evaluation"]) == {"eval_loss"}


def test_ctrl_c_exits_130_and_resume_finishes(spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from odespec.train.loop import _Trainer

    after = _Trainer._after

    def interrupt_at_3(self: Any) -> None:
        after(self)
        if self.done == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(_Trainer, "_after", interrupt_at_3)
    rundir = tmp_path / "run"
    r = run("train", str(spec), "-o", str(rundir))
    assert r.exit_code == 130
    assert f"interrupted after iteration 3 of 8; checkpoint written to {rundir / 'checkpoints' / 'iter-00000003.json'}" \
        in r.stderr
    assert f"resume with: odespec train --resume {rundir}" in r.stderr
    assert "Traceback" not in r.output
    monkeypatch.setattr(_Trainer, "_after", after)
    r = run("train", "--resume", str(rundir), "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["iterations"] == 8


def test_interrupted_json(spec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from odespec.train.loop import _Trainer

    def interrupt(self: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_Trainer, "_after", interrupt)
    r = run("train", str(spec), "-o", str(tmp_path / "run"), "--format", "json")
    assert r.exit_code == 130
    doc = json.loads(r.stdout)
    assert doc["interrupted"] is True and doc["iteration"] == 1 and doc["resume"].endswith(str(tmp_path / "run"))


def test_train_errors_exit_2(spec: Path, tmp_path: Path):
    assert run("train").exit_code == 2  # neither SPEC nor --resume
    assert run("train", str(spec), "-o", "a", "--resume", "b").exit_code == 2
    r = run("train", str(spec), "-o", str(tmp_path))  # not empty: holds the spec
    assert r.exit_code == 2 and "already exists and is not an empty directory" in r.stderr
    assert "hint: resume that run with: odespec train --resume" in r.stderr
    bad = write(tmp_path, demo_spec().replace("loss: l1", "loss: l2"), "bad.yaml")
    r = run("train", str(bad))
    assert r.exit_code == 2 and "bad.yaml:" in r.stderr and "unknown loss 'l2'" in r.stderr
    r = run("train", "--resume", str(tmp_path / "nothing"))
    assert r.exit_code == 2 and "is not a training run" in r.stderr


def test_resume_refuses_another_spec(spec: Path, tmp_path: Path):
    rundir = tmp_path / "run"
    assert run("train", str(spec), "-o", str(rundir), "--iterations", "2").exit_code == 0
    other = write(tmp_path, demo_spec(iterations=9), "other.yaml")
    r = run("train", str(other), "--resume", str(rundir))
    assert r.exit_code == 2 and "is not the spec" in r.stderr
    assert run("train", str(spec), "--resume", str(rundir), "--iterations", "3").exit_code == 0


def test_trained_weights_go_into_build(spec: Path, tmp_path: Path):
    import onnxruntime as ort

    rundir = tmp_path / "run"
    assert run("train", str(spec), "-o", str(rundir)).exit_code == 0
    trained = rundir / "model.safetensors"
    r = run("build", str(spec), "-o", str(tmp_path / "out"), "--weights", str(trained), "--format", "json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["weights"]["sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()

    x = np.array([[2.0, 0.0], [0.5, -1.0]], dtype=np.float32)
    sess = ort.InferenceSession(str(tmp_path / "out" / "tiny-demo.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    model = odespec.build(spec).eval()
    with torch.no_grad():
        untrained = model(torch.from_numpy(x)).numpy()
        load_weights(model, trained)
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(got - untrained).max() > 1e-3  # the export holds the trained weights


def test_readme_documents_train():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "## Training" in readme and "odespec train SPEC" in readme
    assert readme.index("## Training") < readme.index("## Errors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(spec: Path, tmp_path: Path):
    r = run("train", str(spec), "-o", str(tmp_path / "run"), "--device", "cuda")
    assert r.exit_code == 1 and "no usable CUDA device" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()


def test_real_ctrl_c_on_the_command(tmp_path: Path):
    """SIGINT to a running `odespec train` process: checkpoint, message, exit 130, resumable."""
    import signal
    import subprocess
    import sys

    spec = write(tmp_path, demo_spec(iterations=1_000_000, extra="  log_every: 1\n"))
    rundir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "odespec", "train", str(spec), "-o", str(rundir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait until training is under way
            if line.startswith("it 3/"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "checkpoint written to" in err and f"resume with: odespec train --resume {rundir}" in err
    assert "Traceback" not in err
    r = run("train", "--resume", str(rundir), "--iterations", "12", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["iterations"] == 12
