"""``odespec build --triton-repo``: a Triton Inference Server model repository (issue #14, item 5),
its ``config.pbtxt`` parsed with Triton's own protobuf definition and checked against the ONNX
graph it serves."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest

import odespec
from odespec.api import build_all
from odespec.errors import ExportError
from odespec.export.pipeline import ExportOptions, export_model
from odespec.export.session import ort_session
from odespec.export.triton import MAX_BATCH_SIZE, triton_config, write_triton_repository
from odespec.spec import parse_spec

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient[grpc] is not installed (pip install -c constraints/dev.txt -e '.[test]'): the config is "
           "checked with Triton's own protobuf definition")
text_format = pytest.importorskip("google.protobuf.text_format")

PLAIN = """
odespec: 1
name: plain
input: {shape: [3]}
model:
  - linear: 4
  - ode: {t: [0, 1], dynamics: {layers: [{linear: 8}, tanh, {linear: 4}]}, solver: {method: dopri5}}
  - linear: 2
export: {onnx: {method: rk4, steps: 2%s}}
"""

#: a latent ODE reading series: four graph inputs (input, times, mask, query_times)
SERIES = """
odespec: 1
name: series-latent
input: {shape: [6, 2], times: true, mask: true, query: 5}
model:
  - ode_rnn: {hidden: 6, start: -1}
  - linear: 8
  - gaussian
  - ode:
      t: query
      start: 0.5
      output: trajectory
      dynamics: {layers: [{linear: 8}, tanh, {linear: 4}]}
  - linear: 2
export: {onnx: {method: rk4, steps: 2}}
"""

FAST = ExportOptions(latency=False, deployment=False)
#: onnxruntime's type names -> Triton's, written out here independently of odespec's table
ORT_TO_TRITON = {"tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64"}


def _export(tmp_path: Path, text: str, name: str = "m.onnx", dtype: str | None = None) -> bytes:
    model = odespec.build(parse_spec(text), dtype=dtype)
    return export_model(model, tmp_path / name, FAST).path.read_bytes()


def _config(path: Path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _check_against_onnx(config, model_bytes: bytes) -> None:
    """Every graph input and output appears in the config by name, in order, with its data type
    and its dims (after the batch axis when the config batches)."""
    sess = ort_session(model_bytes)
    batched = config.max_batch_size > 0
    for entries, tensors in ((config.input, sess.get_inputs()), (config.output, sess.get_outputs())):
        assert [e.name for e in entries] == [t.name for t in tensors]
        for e, t in zip(entries, tensors):
            assert model_config_pb2.DataType.Name(e.data_type) == ORT_TO_TRITON[t.type]
            shape = t.shape[1:] if batched else t.shape
            assert list(e.dims) == shape, (e.name, list(e.dims), t.shape)
            if batched:
                assert isinstance(t.shape[0], str)  # the graph's batch axis is symbolic


def test_build_writes_a_repository_that_triton_parses_and_that_matches_the_graph(tmp_path: Path):
    spec_file = tmp_path / "plain.yaml"
    spec_file.write_text(PLAIN % "")
    res = build_all(spec_file, tmp_path / "out", triton_repo=tmp_path / "models")
    model_dir = tmp_path / "models" / "plain"
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*")) == ["1", "1/model.onnx",
                                                                                  "config.pbtxt"]
    data = (model_dir / "1" / "model.onnx").read_bytes()
    assert data == res.export.path.read_bytes()
    config = _config(model_dir / "config.pbtxt")
    assert (config.name, config.backend, config.max_batch_size) == ("plain", "onnxruntime", MAX_BATCH_SIZE)
    assert config.HasField("dynamic_batching")
    _check_against_onnx(config, data)
    assert [list(e.dims) for e in config.input] == [[3]] and [list(e.dims) for e in config.output] == [[2]]
    assert res.report["triton"] == {"model": "plain", "files": ["plain/config.pbtxt", "plain/1/model.onnx"],
                                    "backend": "onnxruntime", "max_batch_size": MAX_BATCH_SIZE,
                                    "dynamic_batching": True}
    # only odespec's files: nothing staged is left in or beside the repository
    assert sorted(os.listdir(tmp_path)) == ["models", "out", "plain.yaml"]
    assert os.listdir(tmp_path / "models") == ["plain"]


def test_series_model_lists_every_input(tmp_path: Path):
    data = _export(tmp_path, SERIES)
    write_triton_repository(tmp_path / "repo", "series-latent", data)
    config = _config(tmp_path / "repo" / "series-latent" / "config.pbtxt")
    assert [e.name for e in config.input] == ["input", "times", "mask", "query_times"]
    assert [list(e.dims) for e in config.input] == [[6, 2], [6], [6, 2], [5]]
    assert [list(e.dims) for e in config.output] == [[5, 2]]
    _check_against_onnx(config, data)


def test_fixed_batch_and_float64_graphs(tmp_path: Path):
    fixed = _export(tmp_path, PLAIN % ", dynamic_batch: false", "f.onnx")
    text, max_batch = triton_config(fixed, "plain")
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert max_batch == 0 and config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(e.dims) for e in config.input] == [[1, 3]]
    _check_against_onnx(config, fixed)
    double = _export(tmp_path, PLAIN % "", "d.onnx", dtype="float64")
    config = text_format.Parse(triton_config(double, "plain")[0], model_config_pb2.ModelConfig())
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_FP64"
    _check_against_onnx(config, double)


def test_a_rebuild_replaces_the_model_directory_whole(tmp_path: Path):
    first = _export(tmp_path, PLAIN % "", "a.onnx")
    second = _export(tmp_path, (PLAIN % "").replace("steps: 2", "steps: 3"), "b.onnx")
    assert first != second
    repo = tmp_path / "repo"
    write_triton_repository(repo, "plain", first)
    (repo / "plain" / "stale.txt").write_text("from an older build")
    write_triton_repository(repo, "plain", second)
    assert (repo / "plain" / "1" / "model.onnx").read_bytes() == second
    assert not (repo / "plain" / "stale.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx", "repo"]
    onnx.checker.check_model(onnx.load_from_string((repo / "plain" / "1" / "model.onnx").read_bytes()))


def test_a_file_where_the_repository_should_be_is_a_clear_error(tmp_path: Path):
    (tmp_path / "repo").write_text("not a directory")
    with pytest.raises(ExportError, match="not a directory"):
        write_triton_repository(tmp_path / "repo", "plain", _export(tmp_path, PLAIN % ""))
