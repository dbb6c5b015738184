"""The one onnxruntime session factory: options, load errors, and that nothing else opens sessions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from odespec.errors import ExportError, RunError
from odespec.export.run import open_model
from odespec.export.session import ort_session

PACKAGE = Path(__file__).resolve().parents[2] / "odespec"


def _identity_model() -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_bytes_and_paths_load_on_the_cpu(tmp_path: Path):
    data = _identity_model()
    (tmp_path / "m.onnx").write_bytes(data)
    for source in (data, tmp_path / "m.onnx", str(tmp_path / "m.onnx")):
        sess = ort_session(source)
        assert sess.get_providers() == ["CPUExecutionProvider"]
        assert [i.name for i in sess.get_inputs()] == ["input"]


def test_threads_fix_the_intra_op_pool_and_run_sequentially():
    import onnxruntime as ort

    opts = ort_session(_identity_model(), threads=1).get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.log_severity_level == 3
    default = ort_session(_identity_model()).get_session_options()
    assert default.intra_op_num_threads == 0  # onnxruntime's own choice


def test_a_model_that_does_not_load_is_the_callers_error(tmp_path: Path):
    with pytest.raises(ExportError, match="onnxruntime could not load the exported model"):
        ort_session(b"not onnx")
    with pytest.raises(RunError, match="custom: "):
        ort_session(b"not onnx", load_error=lambda e: RunError(f"custom: {type(e).__name__}"))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(RunError, match="cannot load it as an ONNX model") as e:
        open_model(tmp_path / "junk.onnx")
    assert not isinstance(e.value, ExportError)


def test_no_other_module_opens_an_onnxruntime_session():
    makers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("InferenceSession", "SessionOptions"):
                makers.append(path.relative_to(PACKAGE).as_posix())
    assert set(makers) == {"export/session.py"}, makers
