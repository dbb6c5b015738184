"""``odespec run`` and ``odespec inspect``: the library functions and the commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import odespec
from odespec.cli import cli
from odespec.errors import InputFileError, RunError
from odespec.export.inspect import format_shape, inspect_onnx, render_inspect
from odespec.export.parity import ort_session
from odespec.export.run import load_input, open_model, run_onnx, save_outputs

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    model = odespec.build(DEMO)
    return {
        "unrolled": odespec.export_onnx(model, d / "demo.onnx", steps=4).path,
        "loop": odespec.export_onnx(model, d / "demo_loop.onnx", steps=4, loop=True).path,
    }


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def reference(model_path: Path, x: np.ndarray) -> np.ndarray:
    (y,) = ort_session(model_path.read_bytes()).run(None, {"input": x.astype(np.float32)})
    return y


# -- run: inputs and outputs ---------------------------------------------------------------------

@pytest.mark.parametrize("out_ext", [".npy", ".npz", ".csv"])
def test_npy_in_every_format_out(models, x, tmp_path: Path, out_ext: str):
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"y{out_ext}"
    r = invoke("run", models["unrolled"], "--input", tmp_path / "x.npy", "--output", out)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout and "(3, 6, 2)" in r.stdout
    want = reference(models["unrolled"], x)
    if out_ext == ".npy":
        got = np.load(out)
    elif out_ext == ".npz":
        with np.load(out) as z:
            assert z.files == ["output"]
            got = z["output"]
    else:
        lines = out.read_text().splitlines()
        assert lines[0].split(",")[:2] == ["output_0", "output_1"]
        got = np.loadtxt(out, delimiter=",", skiprows=1, dtype=np.float32).reshape(want.shape)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)  # CSV keeps enough digits to round-trip float32
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.npy", out.name])  # no temp files left


def test_npz_input_by_name_or_only_array(models, x, tmp_path: Path):
    np.savez(tmp_path / "named.npz", other=np.zeros(5), input=x)
    np.savez(tmp_path / "only.npz", samples=x)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    want = reference(models["unrolled"], x)
    for name in ("named", "only"):
        result = run_onnx(models["unrolled"], tmp_path / f"{name}.npz")
        np.testing.assert_array_equal(result.arrays[0], want)
    r = invoke("run", models["unrolled"], "-i", tmp_path / "two.npz")
    assert r.exit_code == 2
    assert "holds 2 arrays (a, b) and none is named 'input'" in r.stderr


def test_csv_input_with_and_without_header_and_cast_from_float64(models, x, tmp_path: Path):
    x64 = x.astype(np.float64)
    np.savetxt(tmp_path / "plain.csv", x64, delimiter=",", fmt="%.17g")
    np.savetxt(tmp_path / "header.csv", x64, delimiter=",", fmt="%.17g", header="a,b", comments="")
    want = reference(models["loop"], x)
    for name in ("plain", "header"):
        r = invoke("run", models["loop"], "--input", tmp_path / f"{name}.csv", "--format", "json")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        assert doc["input"] == {"name": "input", "model_shape": ["batch", 2], "dtype": "float32", "shape": [3, 2]}
        np.testing.assert_array_equal(np.array(doc["outputs"][0]["data"], dtype=np.float32), want)


def test_csv_round_trip_through_the_model_input_shape(models, x, tmp_path: Path):
    """A CSV written by run (header, flattened rows) is read back by run's CSV reader."""
    res = run_onnx(models["unrolled"], _npy(tmp_path, x))
    save_outputs(tmp_path / "y.csv", res)
    _, mi = open_model(models["unrolled"])
    # the output has 12 values per sample; read it as if it were a 12-value input
    from dataclasses import replace

    back = load_input(tmp_path / "y.csv", replace(mi, shape=("batch", 6, 2)))
    np.testing.assert_array_equal(back, res.arrays[0])


def _npy(tmp_path: Path, arr: np.ndarray, name: str = "x.npy") -> Path:
    np.save(tmp_path / name, arr)
    return tmp_path / name


def test_printing_shape_and_summary(models, tmp_path: Path):
    r = invoke("run", models["unrolled"], "-i", _npy(tmp_path, np.zeros((2, 2), np.float32)))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("output: shape (2, 6, 2), dtype float32\n[[[")
    big = invoke("run", models["unrolled"], "-i", _npy(tmp_path, np.zeros((500, 2), np.float32), "big.npy"))
    assert big.exit_code == 0 and "output: shape (500, 6, 2)" in big.stdout
    assert "..." in big.stdout and len(big.stdout.splitlines()) < 100  # summarised


def test_json_with_output_file_has_no_data(models, x, tmp_path: Path):
    r = invoke("run", models["unrolled"], "-i", _npy(tmp_path, x), "-o", tmp_path / "y.npz", "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["written"].endswith("y.npz")
    assert doc["outputs"] == [{"name": "output", "shape": [3, 6, 2], "dtype": "float32"}]


# -- run: errors ---------------------------------------------------------------------------------

def test_wrong_shape_exits_2_naming_both_shapes(models, tmp_path: Path):
    r = invoke("run", models["unrolled"], "--input", _npy(tmp_path, np.zeros((4, 3))))
    assert r.exit_code == 2
    assert "expected shape (batch, 2), got (4, 3)" in r.stderr
    assert "Traceback" not in r.output
    one = invoke("run", models["unrolled"], "--input", _npy(tmp_path, np.zeros(2), "one.npy"))
    assert one.exit_code == 2 and "got (2,)" in one.stderr and "batch dimension" in one.stderr
    np.savetxt(tmp_path / "wide.csv", np.zeros((2, 3)), delimiter=",")
    csv = invoke("run", models["unrolled"], "--input", tmp_path / "wide.csv")
    assert csv.exit_code == 2 and "expected 2 columns per row" in csv.stderr and "got 3" in csv.stderr


def test_bad_dtype_and_bad_files_exit_2(models, tmp_path: Path):
    r = invoke("run", models["unrolled"], "-i", _npy(tmp_path, np.zeros((2, 2), np.complex64)))
    assert r.exit_code == 2 and "expected float32, got complex64" in r.stderr
    np.save(tmp_path / "obj.npy", np.array([[None, 1]], dtype=object), allow_pickle=True)
    r = invoke("run", models["unrolled"], "-i", tmp_path / "obj.npy")
    assert r.exit_code == 2 and "cannot read it as .npy" in r.stderr
    (tmp_path / "text.csv").write_text("a,b\n1,x\n")
    r = invoke("run", models["unrolled"], "-i", tmp_path / "text.csv")
    assert r.exit_code == 2 and "'x' is not a number" in r.stderr
    r = invoke("run", models["unrolled"], "-i", tmp_path / "missing.npy")
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = invoke("run", models["unrolled"], "-i", tmp_path / "x.txt")
    assert r.exit_code == 2 and "unknown input format '.txt'" in r.stderr
    with pytest.raises(InputFileError) as info:
        load_input(tmp_path / "missing.npy", open_model(models["unrolled"])[1])
    assert info.value.exit_code == 2


def test_unknown_output_format_writes_nothing(models, x, tmp_path: Path):
    r = invoke("run", models["unrolled"], "-i", _npy(tmp_path, x), "-o", tmp_path / "y.json")
    assert r.exit_code == 2 and "unknown output format '.json'" in r.stderr
    assert not (tmp_path / "y.json").exists()


def test_non_onnx_and_missing_model_exit_1_without_traceback(x, tmp_path: Path):
    inp = _npy(tmp_path, x)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot a model at all")
    for model, words in ((tmp_path / "junk.onnx", "cannot load it as an ONNX model"),
                         (tmp_path / "nope.onnx", "no such file"), (inp, "cannot load it as an ONNX model")):
        r = invoke("run", model, "-i", inp)
        assert r.exit_code == 1, r.output
        assert words in r.stderr and "Traceback" not in r.output
    with pytest.raises(RunError):
        run_onnx(tmp_path / "junk.onnx", inp)


# -- inspect -------------------------------------------------------------------------------------

def test_inspect_text_shows_metadata_io_and_op_counts(models):
    r = invoke("inspect", models["unrolled"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    for needle in ("input   float32   (batch, 2)", "output  float32   (batch, 6, 2)", "opset 17", "Gemm",
                   f"({models['unrolled'].stat().st_size:,} bytes)"):
        assert needle in out, (needle, out)
    # metadata keys are padded to the longest key
    for key, value in (("spec_name", "ode_demo"), ("export_layout", "unrolled"), ("export_steps", "4"),
                       ("export_steps_source", "given")):
        assert re.search(rf"^  {key} +{value}$", out, re.M), (key, out)
    assert "initializers: " in out and "op counts:" in out


def test_inspect_json_counts_subgraphs_and_sorts_ops(models):
    r = invoke("inspect", models["loop"], "--format", "json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["metadata"]["export_layout"] == "loop"
    assert info["file_size_bytes"] == models["loop"].stat().st_size
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 2]}]
    assert info["subgraphs"] == 5 and info["op_counts"]["Loop"] == 5
    counts = list(info["op_counts"].values())
    assert counts == sorted(counts, reverse=True)
    assert info["op_counts"]["Tanh"] == 5 * 4  # rk4's four stages in each of the five bodies
    weights = sum(int(np.prod(t.dims)) * 4 for t in onnx.load(str(models["loop"])).graph.initializer)
    assert info["initializers"]["bytes"] >= weights > 0
    assert info["nodes"] == sum(counts)


def test_inspect_any_onnx_file(tmp_path: Path):
    node = helper.make_node("Add", ["a", "w"], ["c"])
    custom = helper.make_node("Frob", ["c"], ["d"], domain="com.example")
    graph = helper.make_graph(
        [node, custom], "g",
        [helper.make_tensor_value_info("a", TensorProto.DOUBLE, ["N", 3])],
        [helper.make_tensor_value_info("d", TensorProto.DOUBLE, None)],
        initializer=[helper.make_tensor("w", TensorProto.DOUBLE, [3], [1.0, 2.0, 3.0])],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(m, str(tmp_path / "plain.onnx"))
    info = inspect_onnx(tmp_path / "plain.onnx")
    assert info["metadata"] == {} and info["opset"] == 13 and info["opset_imports"]["com.example"] == 1
    assert info["inputs"][0] == {"name": "a", "dtype": "float64", "shape": ["N", 3]}
    assert info["outputs"][0]["shape"] is None
    assert info["op_counts"] == {"Add": 1, "com.example::Frob": 1}
    assert info["initializers"] == {"count": 1, "bytes": 24}
    text = render_inspect(info)
    assert "metadata:     (none)" in text and "(N, 3)" in text and "com.example 1" in text


def test_inspect_non_onnx_files_exit_1(tmp_path: Path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("hello, this is text\n")
    for name in ("empty.onnx", "text.onnx"):
        r = invoke("inspect", tmp_path / name)
        assert r.exit_code == 1, (name, r.output)
        assert "not an ONNX model" in r.stderr and "Traceback" not in r.output
    r = invoke("inspect", tmp_path / "missing.onnx")
    assert r.exit_code == 1 and "no such file" in r.stderr


def test_inspect_of_a_spec_points_at_the_commands_that_take_one(tmp_path: Path):
    spec = tmp_path / "model.yaml"
    spec.write_text("odespec: 1\nname: m\ninput: {shape: [2]}\nmodel: [linear: 2]\n")
    r = invoke("inspect", spec)
    assert r.exit_code == 1 and "not an ONNX model" in r.stderr
    assert "odespec validate" in r.stderr and "odespec build" in r.stderr


def test_format_shape():
    assert format_shape(["batch", 2]) == "(batch, 2)"
    assert format_shape([3]) == "(3,)"
    assert format_shape([None, 4]) == "(?, 4)"
    assert format_shape([]) == "()"


def test_run_and_inspect_import_no_torch(models, x, tmp_path: Path):
    import subprocess
    import sys

    inp = _npy(tmp_path, x)
    code = ("import sys\nfrom odespec.cli import main\n"
            f"for args in (['inspect', {str(models['loop'])!r}], ['run', {str(models['loop'])!r}, '-i', {str(inp)!r}]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
