"""The runtime registry (odespec/export/runtimes.py) and ``build --verify``: parity and latency on
each runtime, GPU runtimes skipped with their reason, OpenVINO at f32 with its default precision
measured. The OpenVINO tests skip, saying so, where it is not installed; the test extra installs it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import odespec
from odespec.errors import BuildError, ExportError, RunError
from odespec.export.pipeline import ExportOptions, export_model
from odespec.export.run import run_onnx
from odespec.export.runtimes import (METADATA_KEY_OPENVINO, OPENVINO_CONFIG, OnnxRuntime, get_runtime, register,
                                     runtime_names)
from odespec.spec import parse_spec
from odespec.spec.schema import EXPORT_RUNTIMES
from export_helpers import TINY_SPEC



def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


openvino_installed = get_runtime("openvino").unavailable() is None
needs_openvino = pytest.mark.skipif(not openvino_installed, reason="OpenVINO is not installed "
                                    "(pip install 'odespec[openvino]')")


@pytest.fixture(scope="module")
def model():
    return odespec.build(parse_spec(TINY_SPEC))


def test_the_registry_holds_the_spec_languages_runtimes_once():
    assert runtime_names() == list(EXPORT_RUNTIMES)
    with pytest.raises(ExportError, match="already registered"):
        register(OnnxRuntime())


def test_an_unknown_runtime_gets_a_suggestion():
    with pytest.raises(ExportError, match="unknown runtime 'openvno'") as e:
        get_runtime("openvno")
    assert "did you mean 'openvino'" in str(e.value)
    with pytest.raises(ExportError, match="did you mean 'openvino'"):
        ExportOptions(verify=("openvno",))


def test_gpu_runtimes_without_a_gpu_are_skipped_with_a_one_line_reason(model, tmp_path: Path):
    for name in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        if get_runtime(name).unavailable() is None:
            pytest.skip(f"{name} is available here; this test is for machines without it")
    r = export_model(copy.deepcopy(model), tmp_path / "m.onnx",
                     ExportOptions(verify=("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt"), latency=False))
    by_name = {e["runtime"]: e for e in r.runtimes}
    for name, provider in (("onnxruntime-cuda", "CUDAExecutionProvider"),
                           ("onnxruntime-tensorrt", "TensorrtExecutionProvider")):
        reason = by_name[name]["skipped"]
        assert provider in reason and "\n" not in reason and "onnxruntime-gpu" in reason
    assert by_name["onnxruntime"]["parity"] == r.parity


def test_a_gpu_provider_that_does_not_start_is_a_load_error(monkeypatch):
    """onnxruntime quietly falls back to the CPU when a provider cannot start; odespec says so."""
    import onnxruntime as ort

    cuda = get_runtime("onnxruntime-cuda")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda.unavailable() is None
    if "CUDAExecutionProvider" in ort.get_all_providers() and _has_gpu():
        pytest.skip("a working CUDA provider")
    with pytest.raises(ExportError, match="onnxruntime-cuda could not load the exported model"):
        cuda.load(_identity_model())


def _has_gpu() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


def test_latency_at_batch_1_and_256_on_each_verified_runtime(model, tmp_path: Path):
    r = export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(verify=("onnxruntime",)))
    (entry,) = r.runtimes
    assert set(entry["latency_ms"]) == {"1", "256"} and all(v > 0 for v in entry["latency_ms"].values())
    assert entry["latency_threads"] == 1 and entry["provider"] == "CPUExecutionProvider"


@needs_openvino
def test_openvino_is_verified_at_f32_and_its_default_precision_is_measured(model, tmp_path: Path):
    r = export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(verify=("onnxruntime", "openvino")))
    ov = next(e for e in r.runtimes if e["runtime"] == "openvino")
    assert ov["parity"]["ok"] and ov["parity"]["max_abs_error"] <= ov["parity"]["tolerance"]
    assert "f32" in ov["precision"]
    dp = ov["default_precision"]
    assert dp["precision"] in ("bf16", "f16", "f32") and np.isfinite(dp["max_abs_error"])
    if dp["precision"] == "bf16":  # what the hint is for
        assert dp["max_abs_error"] > 10 * ov["parity"]["max_abs_error"]
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta[METADATA_KEY_OPENVINO]) == OPENVINO_CONFIG
    assert set(ov["latency_ms"]) == {"1", "256"}


@needs_openvino
@pytest.mark.parametrize("precision", ["mixed", "float16"])
def test_half_precision_graphs_pass_parity_on_openvino(model, tmp_path: Path, precision: str):
    r = export_model(copy.deepcopy(model), tmp_path / "m.onnx",
                     ExportOptions(precision=precision, verify=("onnxruntime", "openvino"), latency=False))
    assert all(e["parity"]["ok"] and e["parity"]["measure"] == "scaled" for e in r.runtimes)


@needs_openvino
def test_run_on_openvino_matches_onnxruntime(model, tmp_path: Path):
    export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(latency=False))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32))
    a = run_onnx(tmp_path / "m.onnx", tmp_path / "x.npy")
    b = run_onnx(tmp_path / "m.onnx", tmp_path / "x.npy", runtime="openvino")
    np.testing.assert_allclose(b.arrays[0], a.arrays[0], atol=1e-5)
    assert b.names == a.names == ["output"]


def test_openvino_missing_is_an_error_with_the_install_hint(model, tmp_path: Path, monkeypatch):
    ov = get_runtime("openvino")
    monkeypatch.setattr(type(ov), "unavailable", lambda self: "OpenVINO is not installed (pip install "
                        "'odespec[openvino]')")
    with pytest.raises(BuildError, match="cannot verify on openvino") as e:
        export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(verify=("openvino",), latency=False))
    assert "odespec[openvino]" in str(e.value)
    assert not (tmp_path / "m.onnx").exists()
    export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(latency=False))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(RunError, match="cannot run on openvino"):
        run_onnx(tmp_path / "m.onnx", tmp_path / "x.npy", runtime="openvino")


def test_run_names_an_unknown_runtime(model, tmp_path: Path):
    export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(latency=False))
    np.save(tmp_path / "x.npy", np.zeros((1, 2), np.float32))
    with pytest.raises(RunError, match="did you mean 'openvino'"):
        run_onnx(tmp_path / "m.onnx", tmp_path / "x.npy", runtime="openvno")


def test_a_float16_graph_is_fed_float32_arrays_by_run(model, tmp_path: Path):
    export_model(copy.deepcopy(model), tmp_path / "m.onnx", ExportOptions(precision="float16", latency=False))
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    result = run_onnx(tmp_path / "m.onnx", tmp_path / "x.npy")
    assert result.arrays[0].dtype == np.float16 and result.arrays[0].shape == (3, 3, 2)
