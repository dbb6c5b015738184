"""``odespec export`` (trained weights, calibration) and ``odespec build``'s export options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import odespec
from odespec.cli import cli
from odespec.export.parity import ort_session
from odespec.export.unroll import fixed_step_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _modified_state_dict() -> dict[str, torch.Tensor]:
    """ode_demo's weights, changed enough to change every output."""
    sd = odespec.build(DEMO).state_dict()
    gen = torch.Generator().manual_seed(7)
    return {k: v * 1.5 + 0.1 * torch.randn(v.shape, generator=gen) for k, v in sd.items()}


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    (y,) = ort_session(path.read_bytes()).run(None, {"input": x})
    return y


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_export_with_weights_reflects_them(tmp_path: Path, fmt: str):
    sd = _modified_state_dict()
    weights = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(sd, weights)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(weights))
    r = run("export", DEMO, "-o", tmp_path / "out", "--weights", weights, "--steps", 8)
    assert r.exit_code == 0, r.output
    assert f"weights: w.{fmt} (4 tensors" in r.stdout and "deployment: " in r.stdout
    onnx_path = tmp_path / "out" / "ode_demo.onnx"
    x = np.random.default_rng(0).standard_normal((5, 2)).astype(np.float32)
    trained = odespec.build(DEMO)
    trained.load_state_dict(sd)
    with torch.no_grad():
        want = fixed_step_model(trained, "rk4", 8).eval()(torch.from_numpy(x)).numpy()
        untrained = fixed_step_model(odespec.build(DEMO), "rk4", 8).eval()(torch.from_numpy(x)).numpy()
    got = _ort(onnx_path, x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - untrained).max() > 1e-2
    report = json.loads((tmp_path / "out" / "ode_demo.build.json").read_text())
    assert report["weights"]["file"] == f"w.{fmt}" and len(report["weights"]["sha256"]) == 64
    assert report["onnx"]["deployment_error"]["max_abs_error"] < 1e-3


def test_export_checkpoint_dict_and_calibration_json(tmp_path: Path):
    torch.save({"model": _modified_state_dict(), "iteration": 3}, tmp_path / "ckpt.pt")
    r = run("export", DEMO, "-o", tmp_path, "--weights", tmp_path / "ckpt.pt", "--match-tol", "1e-4",
            "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    c = doc["onnx"]["calibration"]
    assert c["match_tol"] == 1e-4 and c["error"] <= 1e-4
    assert doc["onnx"]["steps_source"] == "calibrated"
    assert (doc["onnx"]["method"], doc["onnx"]["steps"]) == (c["method"], c["steps"])
    assert doc["timings_seconds"]["calibration"] > 0


@pytest.mark.parametrize("content,words", [
    (b"odespec: 1\n", "neither a torch.save file nor .safetensors"),
    ("state", "do not fit the spec's model: missing"),
])
def test_bad_weights_exit_1_with_a_message(tmp_path: Path, content, words):
    weights = tmp_path / "w.pt"
    if content == "state":
        torch.save({"0.dynamics.layers.1.weight": torch.zeros(3)}, weights)
    else:
        weights.write_bytes(content)
    r = run("export", DEMO, "-o", tmp_path / "out", "--weights", weights)
    assert r.exit_code == 1
    assert words in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_missing_weights_file_is_a_usage_error(tmp_path: Path):
    r = run("export", DEMO, "-o", tmp_path, "--weights", tmp_path / "nope.safetensors")
    assert r.exit_code == 1 and "no such weights file" in r.stderr


def test_export_without_weights_refuses_to_write_untrained_weights(tmp_path: Path):
    # it used to exit 0 with the spec's initial weights, which parity cannot reveal
    r = run("export", DEMO, "-o", tmp_path / "out")
    assert r.exit_code == 2
    assert "--weights FILE" in r.stderr and "--initial-weights" in r.stderr and "untrained" in r.stderr
    assert not (tmp_path / "out").exists()
    r = run("export", DEMO, "-o", tmp_path / "out", "--initial-weights", "--weights", tmp_path / "w.pt")
    assert r.exit_code == 2 and "exclude each other" in r.stderr
    assert not (tmp_path / "out").exists()


def test_export_initial_weights_on_purpose_and_build_say_so(tmp_path: Path):
    for command, extra in (("export", ["--initial-weights"]), ("build", [])):
        r = run(command, DEMO, "-o", tmp_path / command, "--steps", 4, *extra)
        assert r.exit_code == 0, r.output
        assert "weights: the spec's initial weights (seeded, untrained)" in r.stdout
        assert json.loads((tmp_path / command / "ode_demo.build.json").read_text())["weights"] is None


@pytest.mark.parametrize("suffix", ["safetensors", "json"])
def test_a_training_checkpoint_works_as_weights(tmp_path: Path, suffix: str):
    from odespec.train.checkpoint import save_checkpoint

    model = odespec.build(DEMO)
    model.load_state_dict(_modified_state_dict())
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 2)).sum().backward()
    optimizer.step()  # per-parameter optimizer tensors in the checkpoint, as a run writes them
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints", 7, model, optimizer, {}, extra={"best.0.weight": torch.zeros(3)})
    weights = tmp_path / "checkpoints" / f"iter-00000007.{suffix}"
    r = run("export", DEMO, "-o", tmp_path / "out", "--weights", weights, "--steps", 8, "--format", "json")
    assert r.exit_code == 0, r.output  # was: "unexpected model.0.bias"
    report = json.loads(r.stdout)
    assert report["weights"]["file"] == "iter-00000007.safetensors" and report["weights"]["checkpoint"] is True
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    with torch.no_grad():
        want = fixed_step_model(model.eval(), "rk4", 8)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(tmp_path / "out" / "ode_demo.onnx", x), want, atol=1e-5)


def test_a_damaged_checkpoint_json_is_refused(tmp_path: Path):
    (tmp_path / "iter-00000001.json").write_text('{"format": "odespec-checkpoint/1", "tensors": "gone.safetensors"}')
    r = run("export", DEMO, "-o", tmp_path / "out", "--weights", tmp_path / "iter-00000001.json")
    assert r.exit_code == 1 and "not a complete odespec training checkpoint" in r.stderr
    assert "Traceback" not in r.output and not (tmp_path / "out").exists()


def test_build_loop_flag_and_no_loop(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--steps", 4, "--loop")
    assert r.exit_code == 0, r.output
    m = onnx.load(str(tmp_path / "ode_demo.onnx"))
    assert sum(n.op_type == "Loop" for n in m.graph.node) == 5
    assert json.loads((tmp_path / "ode_demo.build.json").read_text())["onnx"]["layout"] == "loop"
    r = run("build", DEMO, "-o", tmp_path, "--steps", 4, "--no-loop")
    assert r.exit_code == 0
    assert not any(n.op_type == "Loop" for n in onnx.load(str(tmp_path / "ode_demo.onnx")).graph.node)


def test_build_match_tol_prints_the_candidate_table(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--match-tol", "1e-5")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "calibration: steps chosen within match_tol 1e-05" in out
    for column in ("method", "steps", "f-evals", "max abs error", "latency", "status"):
        assert column in out
    assert "rk4 x 3 steps, 60 f-evaluations" in out
    assert out.strip().splitlines()[-1].startswith("report: ")


def test_build_steps_auto_with_calibration_data_csv(tmp_path: Path):
    x = np.random.default_rng(1).standard_normal((30, 2))
    np.savetxt(tmp_path / "c.csv", x, delimiter=",", header="a,b", comments="")
    r = run("build", DEMO, "-o", tmp_path / "o", "--steps", "auto", "--method", "rk4", "--calibration-data",
            tmp_path / "c.csv", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["onnx"]["calibration"]["inputs"] == "c.csv (30 samples)"


def test_usage_errors_exit_2(tmp_path: Path):
    for args in (("--steps", "4", "--match-tol", "1e-3"), ("--steps", "lots"), ("--steps", "0"),
                 ("--match-tol", "0"), ("--match-tol", "2")):
        r = run("build", DEMO, "-o", tmp_path, *args)
        assert r.exit_code == 2, (args, r.output)
    r = run("export", DEMO, "-o", tmp_path, "--steps", "3", "--match-tol", "1e-3")
    assert r.exit_code == 2 and "--match-tol" in r.output
    assert list(tmp_path.iterdir()) == []


def test_calibration_that_cannot_succeed_exits_1_and_writes_nothing(tmp_path: Path):
    r = run("export", DEMO, "-o", tmp_path / "o", "--initial-weights", "--match-tol", "1e-8", "--method", "rk4")
    assert r.exit_code == 1
    assert "calibration failed" in r.stderr and "hint: " in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_bad_calibration_data_exits_2(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.zeros((3, 5), np.float32))
    r = run("build", DEMO, "-o", tmp_path / "o", "--match-tol", "1e-3", "--calibration-data", tmp_path / "x.npy")
    assert r.exit_code == 2 and "expected shape (batch, 2)" in r.stderr


# -- judged by predictions, --strict, --triton-repo (issue #14) --------------------------------------

RKNET_1 = """odespec: 1
name: clf
input: {shape: [2]}
model:
  - ode: {t: [0, 1], dynamics: {layers: [{linear: 16}, tanh, {linear: 2}]}, family: rknet,
          solver: {method: rk4, steps: 1}}
  - linear: 2
export: {onnx: {method: rk4, steps: 4}}
train: {data: {circles: {count: 100}}, loss: cross_entropy, iterations: 1}
"""


@pytest.fixture
def rknet(tmp_path: Path) -> tuple[Path, Path]:
    """A classifier trained (here: weights scaled so the step count matters) as rk4 x 1 whose
    spec exports it at rk4 x 4, and its weights."""
    spec = tmp_path / "clf.yaml"
    spec.write_text(RKNET_1)
    sd = odespec.build(spec).state_dict()
    torch.save({k: 3 * v if k.startswith("0.") else v for k, v in sd.items()}, tmp_path / "w.pt")
    return spec, tmp_path / "w.pt"


def test_build_warns_last_about_a_large_deployment_error_and_strict_fails(tmp_path: Path, rknet):
    spec, weights = rknet
    r = run("build", spec, "-o", tmp_path / "out", "--weights", weights)
    assert r.exit_code == 0, r.output
    lines = r.stdout.rstrip().splitlines()
    assert lines[-2].startswith("warning: ") and "trained as rk4 x 1" in lines[-2]
    assert "--method rk4 --steps 1" in lines[-1] and "predictions:" in r.stdout
    r = run("build", spec, "-o", tmp_path / "out", "--weights", weights, "--format", "json")
    assert json.loads(r.stdout)["warnings"][0]["fix"].startswith("export it as it was trained")
    assert "warning: " in r.stderr
    r = run("build", spec, "-o", tmp_path / "strict", "--weights", weights, "--strict",
            "--triton-repo", tmp_path / "models")
    assert r.exit_code == 1 and "Ott et al" in r.stderr and "nothing written" in r.stderr
    assert not (tmp_path / "strict").exists() and not (tmp_path / "models").exists()
    # exported as trained, --strict passes
    r = run("build", spec, "-o", tmp_path / "ok", "--weights", weights, "--strict", "--steps", "1")
    assert r.exit_code == 0 and "warning" not in r.output


def test_build_match_agreement_and_triton_repo(tmp_path: Path, rknet):
    spec, weights = rknet
    r = run("build", spec, "-o", tmp_path / "out", "--weights", weights, "--match-agreement", "0.999",
            "--triton-repo", tmp_path / "models", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["onnx"]["calibration"]["match"]["criterion"] == "agreement"
    assert doc["onnx"]["deployment_error"]["agreement"] >= 0.999
    assert doc["triton"]["model"] == "clf"
    assert (tmp_path / "models" / "clf" / "1" / "model.onnx").read_bytes() == (tmp_path / "out" / "clf.onnx").read_bytes()
    assert 'backend: "onnxruntime"' in (tmp_path / "models" / "clf" / "config.pbtxt").read_text()
    r = run("build", spec, "-o", tmp_path / "t", "--weights", weights, "--triton-repo", tmp_path / "models")
    assert "triton: model 'clf'" in r.stdout


@pytest.mark.parametrize("args,words", [
    (["--steps", "4", "--match-agreement", "0.99"], "--match-agreement calibrates the step count"),
    (["--match-tol", "1e-3", "--match-agreement", "0.99"], "two criteria"),
])
def test_build_match_agreement_usage_errors(tmp_path: Path, args: list[str], words: str):
    r = run("build", DEMO, "-o", tmp_path, *args)
    assert r.exit_code == 2 and words in r.output


def test_build_verify_and_precision_print_the_runtimes_table(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--steps", "8", "--precision", "mixed",
            "--verify", "onnxruntime,onnxruntime-cuda")
    assert r.exit_code == 0, r.output
    assert "runtimes (graph precision mixed" in r.output
    assert "onnxruntime-cuda: skipped:" in r.output or "onnxruntime-cuda " in r.output
    report = json.loads((tmp_path / "ode_demo.build.json").read_text())
    assert report["onnx"]["precision"] == "mixed"
    assert [e["runtime"] for e in report["onnx"]["runtimes"]] == ["onnxruntime", "onnxruntime-cuda"]
    model = onnx.load(tmp_path / "ode_demo.onnx")
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_build_verify_unknown_runtime_and_precision_are_refused(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--verify", "onnxruntime,openvno")
    assert r.exit_code == 1 and "did you mean 'openvino'" in r.output
    r = run("build", DEMO, "-o", tmp_path, "--precision", "half")
    assert r.exit_code == 2 and "half" in r.output
    assert not (tmp_path / "ode_demo.onnx").exists()


def test_run_runtime_option(tmp_path: Path):
    assert run("build", DEMO, "-o", tmp_path, "--steps", "4").exit_code == 0
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    r = run("run", tmp_path / "ode_demo.onnx", "-i", tmp_path / "x.npy", "--runtime", "onnxruntme")
    assert r.exit_code == 1 and "did you mean 'onnxruntime'" in r.output
    r = run("run", tmp_path / "ode_demo.onnx", "-i", tmp_path / "x.npy", "--runtime", "onnxruntime", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.output)["outputs"][0]["shape"] == [2, 6, 2]


def test_build_with_an_implicit_method_unrolls_its_newton_iterations(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--method", "implicit_euler", "--steps", "2", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["onnx"]["method"] == "implicit_euler" and doc["onnx"]["parity"]["ok"]
    assert doc["onnx"]["newton_iters"]["iters"] >= 1
    meta = {p.key: p.value for p in onnx.load(tmp_path / "ode_demo.onnx").metadata_props}
    assert meta["export_method"] == "implicit_euler" and int(meta["export_newton_iters"]) >= 1


def test_build_match_accuracy_on_labelled_calibration_data(tmp_path: Path, rknet):
    spec, weights = rknet
    model = odespec.build(spec)
    odespec.api.load_weights(model, weights)
    x = np.random.default_rng(1).normal(size=(200, 2)).astype(np.float32)
    with torch.no_grad():
        y = model.eval()(torch.from_numpy(x)).numpy().argmax(-1)
    np.savez(tmp_path / "cal.npz", x=x, y=y)
    r = run("build", spec, "-o", tmp_path / "out", "--weights", weights, "--match-accuracy", "0.99",
            "--calibration-data", tmp_path / "cal.npz", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["onnx"]["calibration"]["match"]["criterion"] == "accuracy"
    assert doc["onnx"]["deployment_error"]["accuracy"]["onnx"] >= 0.99
    r = run("build", spec, "-o", tmp_path / "t", "--weights", weights, "--match-accuracy", "0.99")
    assert r.exit_code != 0 and "labelled calibration data" in r.output
    r = run("build", spec, "-o", tmp_path / "u", "--weights", weights, "--match-accuracy", "0.99",
            "--calibration-data", tmp_path / "cal.npz")
    assert r.exit_code == 0 and "accuracy of at least 0.99" in r.output


def test_build_match_accuracy_usage_errors(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--match-agreement", "0.9", "--match-accuracy", "0.9")
    assert r.exit_code == 2 and "two criteria" in r.output
    r = run("build", DEMO, "-o", tmp_path, "--steps", "2", "--match-accuracy", "0.9")
    assert r.exit_code == 2 and "--match-accuracy calibrates the step count" in r.output


def test_build_parity_tol_overrides_the_spec(tmp_path: Path):
    r = run("build", DEMO, "-o", tmp_path, "--steps", "2", "--parity-tol", "1e-3", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["onnx"]["parity"]["tolerance"] == 1e-3
    r = run("build", DEMO, "-o", tmp_path / "bad", "--parity-tol", "0")
    assert r.exit_code == 2 and "--parity-tol" in r.output
