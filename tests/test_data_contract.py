"""The data contract (odespec/data_contract.py): one verdict per data file, whichever command
reads it. Every accepted and refused shape goes through the four entry points, training (the
npy/npz/csv sources' loaders), validation (the train section's checks, from the headers), ``odespec
run`` (load_input) and ``--calibration-data`` (data_input_set), which must agree; then NaN/inf,
dtypes, class labels and the default loss."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odespec import data_contract as dc
from odespec.errors import DataFileError, InputFileError, SpecError
from odespec.export.run import ModelInput, load_input
from odespec.spec import load_spec
from odespec.train import DataError
from odespec.train import data as sources
from odespec.train.data import Need

ROOT = Path(__file__).resolve().parents[1]
N = 3  # samples in every generated file


# -- the four entry points -------------------------------------------------------------------------
def spec_text(shape: tuple[int, ...], data: str, *, loss: Optional[str] = None, classes: int = 2,
              batch_size: int = N) -> str:
    """A classifier on inputs of ``shape`` (flatten, linear: classes) training on ``data``."""
    return (f"odespec: 1\nname: contract\ninput: {{shape: {list(shape)}}}\nmodel:\n  - flatten\n"
            f"  - linear: {classes}\ntrain:\n  data: {data}\n  iterations: 1\n  batch_size: {batch_size}\n"
            + (f"  loss: {loss}\n" if loss else ""))


def verdicts(d: Path, x_file: str, shape: tuple[int, ...]) -> dict[str, object]:
    """What each entry point makes of the inputs in ``d/x_file`` (labels 0 and 1 in ``d/y.npy``,
    or the CSV's last column) for a model taking ``shape``: the array it delivers, or the error."""
    import torch

    from odespec.export.inputs import data_input_set

    is_csv = x_file.endswith(".csv")
    data = f"{{csv: {x_file}}}" if is_csv else f"{{npy: {{x: {x_file}, y: y.npy}}}}"
    out: dict[str, object] = {}
    src = sources.get("csv" if is_csv else "npy")
    options = {"path": x_file} if is_csv else {"x": x_file, "y": "y.npy"}
    try:
        out["train"] = src.load(src.normalize(options), seed=0, base_dir=d, need=Need(shape, (2,), True)).x
    except DataError as e:
        out["train"] = e
    (d / "spec.yaml").write_text(spec_text(shape, data))
    try:
        out["validate"] = load_spec(d / "spec.yaml").train
    except SpecError as e:
        out["validate"] = e
    run_file = d / ("run.csv" if is_csv else x_file)
    try:
        out["run"] = load_input(run_file, ModelInput("input", ("batch", *shape), np.dtype(np.float32)))
    except InputFileError as e:
        out["run"] = e
    try:
        s = data_input_set(run_file, shape, dtype=torch.float32)
        out["calibration"] = torch.cat(s.batches).numpy()
    except InputFileError as e:
        out["calibration"] = e
    return out


def write_inputs(d: Path, x: np.ndarray, *, csv: bool = False) -> str:
    """``x`` as the inputs file (and, for CSV, run.csv without the target column)."""
    labels = np.arange(len(x)) % 2
    np.save(d / "y.npy", labels)
    if not csv:
        np.save(d / "x.npy", x)
        return "x.npy"
    flat = x.reshape(len(x), -1)
    np.savetxt(d / "x.csv", np.column_stack([flat, labels]), delimiter=",", fmt="%.17g")
    np.savetxt(d / "run.csv", flat, delimiter=",", fmt="%.17g")
    return "x.csv"


def assert_one_verdict(v: dict[str, object], x: np.ndarray, shape: tuple[int, ...], accepted: bool) -> None:
    refused = {k for k, r in v.items() if isinstance(r, Exception)}
    assert refused == (set() if accepted else set(v)), {k: str(r) for k, r in v.items()}
    if accepted:
        want = x.reshape((len(x), *shape))
        for k in ("train", "run", "calibration"):
            got = v[k]
            assert isinstance(got, np.ndarray) and got.shape == want.shape, k
            np.testing.assert_array_equal(got, want.astype(got.dtype))
    else:
        for k, e in v.items():
            text = str(e)
            assert "x.npy" in text or "x.csv" in text or "run.csv" in text, (k, text)


# -- the shape rule --------------------------------------------------------------------------------
SHAPES = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)


def _non_unit(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


@st.composite
def accepted_forms(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(S, R): R made from S by adding or dropping axes of length 1, or by flattening."""
    s = draw(SHAPES)
    if draw(st.booleans()):
        return s, (math.prod(s),)
    core = list(_non_unit(s))
    for _ in range(draw(st.integers(0, 2))):
        core.insert(draw(st.integers(0, len(core))), 1)
    return s, tuple(core)


def test_the_readme_examples_of_the_shape_rule():
    assert dc.fits((1, 8, 8), (1, 8, 8)) and dc.fits((8, 8), (1, 8, 8)) and dc.fits((64,), (1, 8, 8))
    assert dc.fits((8, 8), (64,)) and dc.fits((8, 8, 1), (1, 8, 8)) and dc.fits((), (1,))
    assert not dc.fits((2, 100), (100, 2)) and not dc.fits((7, 7), (1, 8, 8)) and not dc.fits((64, 2), (8, 8, 2))
    assert dc.expected_shapes((1, 8, 8)) == "(N, 1, 8, 8), (N, 8, 8) or (N, 64)"
    assert dc.expected_shapes((2,), "batch") == "(batch, 2)"


@settings(max_examples=300, deadline=None)
@given(SHAPES, SHAPES)
def test_an_accepted_shape_never_reorders_values(r: tuple[int, ...], s: tuple[int, ...]):
    """Accepted: the values in C order are the model's values in C order, and, unless one side is
    flat, every axis longer than 1 keeps its length and its place among the others."""
    if not dc.fits(r, s):
        same = math.prod(r) == math.prod(s)
        assert not same or (_non_unit(r) != _non_unit(s) and len(_non_unit(r)) > 1 and len(_non_unit(s)) > 1)
        return
    a = np.arange(math.prod(r)).reshape(r)
    b = a.reshape(s)
    if len(_non_unit(r)) > 1 and len(_non_unit(s)) > 1:
        np.testing.assert_array_equal(np.squeeze(a), np.squeeze(b))  # the same array, axes of 1 aside


@settings(max_examples=200, deadline=None)
@given(accepted_forms())
def test_every_form_of_the_rule_is_accepted(pair: tuple[tuple[int, ...], tuple[int, ...]]):
    s, r = pair
    assert dc.fits(r, s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(accepted_forms(), st.tuples(SHAPES, SHAPES)), st.booleans())
def test_one_file_one_verdict_in_train_validate_run_and_calibration(pair: tuple, csv: bool):
    """The same inputs file, for the same per-sample shape, is accepted or refused by all four
    entry points, and those that accept deliver the same array."""
    s, r = pair
    x = np.random.default_rng(0).standard_normal((N, *r))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        name = write_inputs(d, x, csv=csv)
        accepted = math.prod(r) == math.prod(s) if csv else dc.fits(r, s)
        assert_one_verdict(verdicts(d, name, s), x, s, accepted)


@pytest.mark.parametrize("r, accepted", [((1, 8, 8), True), ((8, 8), True), ((64,), True), ((8, 8, 1), True),
                                         ((7, 7), False), ((8, 9), False), ((64, 1, 2), False)])
def test_the_issues_shapes_through_every_entry_point(tmp_path: Path, r: tuple, accepted: bool):
    """The issue's case: (N, 8, 8) for input (1, 8, 8) trained but did not run; now it does both,
    and so does a flat (N, 64) .npy, which the CSV reader already took."""
    x = np.random.default_rng(1).standard_normal((N, *r))
    assert_one_verdict(verdicts(tmp_path, write_inputs(tmp_path, x), (1, 8, 8)), x, (1, 8, 8), accepted)


def test_reordering_shapes_are_refused_with_the_shapes_that_fit(tmp_path: Path):
    x = np.zeros((N, 2, 100))
    v = verdicts(tmp_path, write_inputs(tmp_path, x), (100, 2))
    for e in v.values():
        assert isinstance(e, DataFileError | SpecError)
        assert "samples of shape (2, 100) do not fit the model's input (100, 2)" in str(e), str(e)
        assert "transpose" in str(e)


# -- dtypes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64])
def test_numbers_of_any_kind_are_converted(tmp_path: Path, dtype):
    x = (np.arange(N * 2) % 2).reshape(N, 2).astype(dtype)
    v = verdicts(tmp_path, write_inputs(tmp_path, x), (2,))
    assert_one_verdict(v, x, (2,), True)
    assert v["run"].dtype == np.float32  # type: ignore[union-attr]


@pytest.mark.parametrize("array, words", [
    (np.array([["a", "b"]] * N), "holds <U1 inputs"),
    (np.zeros((N, 2), np.complex64), "holds complex64 inputs"),
    (np.zeros((N, 2), "datetime64[s]"), "holds datetime64[s] inputs"),
])
def test_what_is_not_numbers_is_refused_everywhere(tmp_path: Path, array: np.ndarray, words: str):
    v = verdicts(tmp_path, write_inputs(tmp_path, array), (2,))
    assert all(isinstance(e, Exception) for e in v.values()), v
    assert words in str(v["train"]) and words in str(v["validate"])
    assert f"cannot be fed to an input of dtype float32: expected float32, got {array.dtype}" in str(v["run"])


def test_object_and_truncated_files_are_refused_before_reading(tmp_path: Path):
    np.save(tmp_path / "y.npy", np.arange(N) % 2)
    np.save(tmp_path / "x.npy", np.array([[None, 1]] * N, dtype=object), allow_pickle=True)
    v = verdicts(tmp_path, "x.npy", (2,))
    assert all("pickle" in str(e) for e in v.values()), v
    np.save(tmp_path / "x.npy", np.zeros((N, 2)))
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-8])
    v = verdicts(tmp_path, "x.npy", (2,))
    assert all("the file is truncated" in str(e) for e in v.values()), v


def test_a_finite_value_beyond_float32_is_refused_for_a_float32_model(tmp_path: Path):
    import torch

    from odespec.train.batches import Batches
    from odespec.train.data import LoadedData

    x = np.zeros((N, 2))
    x[1, 0] = 1e300
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputFileError, match=r"1e\+300 at index \(1, 0\) is beyond float32's range"):
        load_input(tmp_path / "x.npy", ModelInput("input", ("batch", 2), np.dtype(np.float32)))
    assert load_input(tmp_path / "x.npy", ModelInput("input", ("batch", 2), np.dtype(np.float64)))[1, 0] == 1e300
    with pytest.raises(DataError, match="the training inputs: 1e.300 at index .1, 0. is beyond float32's range"):
        Batches(LoadedData(x, np.zeros(N)), 2, seed=0, device=torch.device("cpu"), dtype=torch.float32, labels=False)


# -- NaN and infinity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_nan_and_inf_are_refused_naming_file_array_and_first_index(tmp_path: Path, value: float, word: str):
    import torch

    from odespec.export.inputs import data_input_set

    x = np.zeros((4, 2, 3))
    x[2, 1, 0] = value
    x[3, 0, 0] = value
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(4) % 2)
    want = rf"d.npz, array 'x': {re.escape(word)} at index \(2, 1, 0\) \(and 1 more NaN/inf values\)"
    src = sources.get("npz")
    with pytest.raises(DataError, match=want):
        src.load(src.normalize("d.npz"), seed=0, base_dir=tmp_path, need=Need((2, 3), (2,), True))
    with pytest.raises(InputFileError, match=want):
        load_input(tmp_path / "d.npz", ModelInput("input", ("batch", 2, 3), np.dtype(np.float32)))
    with pytest.raises(InputFileError, match=want):
        data_input_set(tmp_path / "d.npz", (2, 3), dtype=torch.float32)


def test_nan_targets_are_refused_naming_the_targets(tmp_path: Path):
    y = np.zeros((4, 2))
    y[1, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=y)
    src = sources.get("npz")
    with pytest.raises(DataError, match=r"d.npz, array 'y': NaN at index \(1, 1\)"):
        src.load(src.normalize("d.npz"), seed=0, base_dir=tmp_path, need=Need((2,), (2,), False))
    labels = np.array([0.0, np.nan, 1.0, 0.0])
    np.savez(tmp_path / "l.npz", x=np.zeros((4, 2)), y=labels)
    with pytest.raises(DataError, match=r"l.npz, array 'y': NaN at index \(1,\)"):
        src.load(src.normalize("l.npz"), seed=0, base_dir=tmp_path, need=Need((2,), (2,), True))


def test_nan_in_a_csv_names_its_line_and_column(tmp_path: Path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n\n3,nan,1\n")
    src = sources.get("csv")
    with pytest.raises(DataError, match=r"d.csv: NaN at line 4, column 2 \('b'\)"):
        src.load(src.normalize("d.csv"), seed=0, base_dir=tmp_path, need=Need((2,), (2,), True))
    (tmp_path / "r.csv").write_text("1,2\n3,inf\n")
    with pytest.raises(InputFileError, match=r"r.csv: inf at line 2, column 2"):
        load_input(tmp_path / "r.csv", ModelInput("input", ("batch", 2), np.dtype(np.float32)))


def test_nan_is_allowed_where_a_mask_says_the_value_is_missing():
    """The extension point for time series: NaN only where masked."""
    x = np.ones((2, 3, 1))
    x[0, 1, 0] = np.nan
    mask = np.ones_like(x)
    mask[0, 1, 0] = 0
    dc.check_finite(x, "x", DataError, missing=mask == 0)
    x[1, 2, 0] = np.inf
    with pytest.raises(DataError, match=r"x: inf at index \(1, 2, 0\)\n"):
        dc.check_finite(x, "x", DataError, missing=mask == 0)


# -- class labels and the default loss -----------------------------------------------------------
def _validated(tmp_path: Path, y: np.ndarray, *, loss: Optional[str] = None, classes: int = 3,
               data: str = "{npz: d.npz}", x: Optional[np.ndarray] = None):
    np.savez(tmp_path / "d.npz", x=np.zeros((len(y), 2)) if x is None else x, y=y)
    (tmp_path / "spec.yaml").write_text(spec_text((2,), data, loss=loss, classes=classes, batch_size=2))
    return load_spec(tmp_path / "spec.yaml").train


def test_the_default_loss_is_the_readmes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "`cross_entropy` for class labels, else `mse`" in readme
    assert "With no `loss:`, `cross_entropy` for class labels, else `mse`." in readme


@pytest.mark.parametrize("y, loss", [
    (np.array([0, 2, 1, 1]), "cross_entropy"),                        # integer labels (the issue's case)
    (np.array([[0], [2], [1], [1]], np.uint8), "cross_entropy"),      # (N, 1)
    (np.array([0.0, 2.0, 1.0, 1.0], np.float32), "cross_entropy"),    # whole numbers saved as floats
    (np.array([True, False, True, True]), "cross_entropy"),
    (np.eye(3)[[0, 2, 1, 1]], "cross_entropy"),                         # one-hot rows (trained with mse before)
    (np.eye(3, dtype=np.int64)[[0, 2, 1, 1]], "cross_entropy"),
    (np.full((4, 3), 0.5), "mse"),                                     # rows of values
])
def test_the_default_loss_follows_the_targets(tmp_path: Path, y: np.ndarray, loss: str):
    ts = _validated(tmp_path, y)
    assert ts is not None and ts.loss.kind == loss


def test_the_default_loss_of_a_csv_follows_the_models_output(tmp_path: Path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,4,2\n")
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{csv: d.csv}", classes=3, batch_size=2))
    assert load_spec(tmp_path / "spec.yaml").train.loss.kind == "cross_entropy"
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{csv: d.csv}", classes=1, batch_size=2))
    assert load_spec(tmp_path / "spec.yaml").train.loss.kind == "mse"


def test_a_spec_without_its_data_file_validates_and_training_reports_it(tmp_path: Path):
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{npz: later.npz}"))
    assert load_spec(tmp_path / "spec.yaml").train.loss.kind == "mse"  # nothing to tell labels by yet


def test_one_hot_rows_become_class_indices():
    y = np.eye(3)[[2, 0, 1]]
    out = dc.conform_targets(y, dc.ArrayInfo.of(y, "y"), (3,), True, DataError)
    assert out.dtype == np.int64 and out.tolist() == [2, 0, 1]


@pytest.mark.parametrize("y, words", [
    (np.array([0, 3, 1, 1]), r"class label 3 is outside 0..2 \(sample 1; the model outputs 3 class scores\)"),
    (np.array([0, -1, 1, 1]), r"class label -1 is outside 0..2"),
    (np.array([0, 0.5, 1, 1]), r"class labels must be whole numbers; sample 1 has 0.5"),
    (np.array([[0.2, 0.3, 0.5]] * 4), r"row 0 of the targets is probabilities, not one-hot"),
    (np.array([[1, 1, 0]] * 4), r"row 0 of the targets is not one-hot"),
    (np.zeros((4, 2)), r"cross_entropy takes one class label per sample, or one-hot rows of 3; targets have "
                       r"shape \(4, 2\)"),
])
def test_bad_class_labels_are_refused_by_validate_and_by_training(tmp_path: Path, y: np.ndarray, words: str):
    with pytest.raises(SpecError, match=words):
        _validated(tmp_path, y, loss="cross_entropy")
    src = sources.get("npz")
    with pytest.raises(DataError, match=words):
        src.load(src.normalize("d.npz"), seed=0, base_dir=tmp_path, need=Need((2,), (3,), True))


def test_labels_with_a_loss_that_compares_values_are_told_to_use_cross_entropy(tmp_path: Path):
    with pytest.raises(SpecError, match=r"(?s)a target has 1 value \(shape \(\)\); the model's output \(3,\) has 3"
                                        r".*hint: one whole number per sample is a class label: write loss: "
                                        r"cross_entropy"):
        _validated(tmp_path, np.array([0, 1, 2, 0]), loss="mse")


# -- validation reads the headers ----------------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda d: np.savez(d / "d.npz", inputs=np.zeros((4, 2)), y=np.zeros(4)),
     r"has no array 'x' \(it has: inputs, y\)"),
    (lambda d: (d / "d.npz").write_bytes(b"not a zip file"), r"d.npz: cannot read it as .npz"),
    (lambda d: np.savez(d / "d.npz", x=np.zeros((4, 2)), y=np.zeros(5, np.int64)),
     r"holds 4 samples, .*d.npz, array 'y' 5: inputs and targets need one row per sample"),
    (lambda d: np.savez(d / "d.npz", x=np.zeros((1, 2)), y=np.zeros(1, np.int64)),
     r"batch_size 2 is larger than the 1 training samples"),
    (lambda d: np.savez(d / "d.npz", x=np.zeros((0, 2)), y=np.zeros(0, np.int64)), r"holds no samples"),
    (lambda d: np.savez(d / "d.npz", x=np.float64(1), y=np.zeros(4, np.int64)), r"a single value, not one row"),
])
def test_validate_reports_what_a_data_files_headers_tell(tmp_path: Path, make, words: str):
    make(tmp_path)
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{npz: d.npz}", loss="cross_entropy", batch_size=2))
    with pytest.raises(SpecError, match=words) as e:
        load_spec(tmp_path / "spec.yaml")
    assert len(e.value.issues) == 1 and e.value.issues[0].path == "train.data"


def test_validate_reads_no_torch_and_not_the_inputs_values(tmp_path: Path):
    x = np.zeros((4, 1, 8, 8))
    x[0, 0, 0, 0] = np.nan  # a value: training's to find, not validate's
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 1]))
    (tmp_path / "spec.yaml").write_text(spec_text((1, 8, 8), "{npz: d.npz}", classes=3, batch_size=2))
    code = ("import sys; from odespec.spec import load_spec; "
            f"ts = load_spec({str(tmp_path / 'spec.yaml')!r}).train; print(ts.loss.kind, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cross_entropy", "False"]


# -- CSV targets and file names in messages ---------------------------------------------------------
def test_an_error_about_a_csv_target_names_the_column_used_and_how_to_choose(tmp_path: Path):
    """The label in the first column: the default target (the last column) holds pixel values."""
    (tmp_path / "d.csv").write_text("label,p1,p2\n0,0.25,0.5\n2,0.75,1.0\n")
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{csv: d.csv}", classes=3, batch_size=2))
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "spec.yaml")
    text = str(e.value)
    assert "d.csv, target column 3 ('p2'): class labels must be whole numbers; sample 0 has 0.5" in text
    assert "the target is column 3 ('p2') (the last column, the default)" in text
    assert "choose the target column with train.data.csv.target: NAME or INDEX" in text
    (tmp_path / "spec.yaml").write_text(spec_text((2,), "{csv: {path: d.csv, target: label}}", classes=3, batch_size=2))
    assert load_spec(tmp_path / "spec.yaml").train.loss.kind == "cross_entropy"


def test_a_shape_error_names_only_the_file_at_fault(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.zeros((4, 5)))
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    src = sources.get("npy")
    with pytest.raises(DataError) as e:
        src.load(src.normalize({"x": "x.npy", "y": "y.npy"}), seed=0, base_dir=tmp_path, need=Need((2,), (3,), True))
    assert "x.npy: a sample has 5 input values" in str(e.value) and "y.npy" not in str(e.value)
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    np.save(tmp_path / "y.npy", np.zeros((4, 2, 2)))
    with pytest.raises(DataError) as e:
        src.load(src.normalize({"x": "x.npy", "y": "y.npy"}), seed=0, base_dir=tmp_path, need=Need((2,), (3,), False))
    assert "y.npy: a target has 4 values" in str(e.value) and "x.npy" not in str(e.value)


# -- irregular series (issue #13) ------------------------------------------------------------------
def _series(n: int = 4, t: int = 5, f: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A valid series file's arrays: sorted times, a random mask with NaN where masked."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0, 3, (n, t)), axis=1)
    mask = rng.random((n, t, f)) > 0.3
    x = np.where(mask, rng.standard_normal((n, t, f)), np.nan)
    return {"x": x, "times": times, "mask": mask}


def _conform(arrays: dict[str, np.ndarray], *, times: bool = True, mask: bool = True, query: Optional[int] = 5,
             out: tuple[int, ...] = (5, 2), labels: bool = False, start: Optional[float] = 0.0,
             shape: tuple[int, ...] = (5, 2)) -> dict[str, np.ndarray]:
    infos = {k: dc.ArrayInfo.of(v, f"s.npz, array {k!r}") for k, v in arrays.items()}
    layout = dc.check_series(infos, "s.npz", DataError, input_shape=shape, output_shape=out, labels=labels,
                             times=times, mask=mask, query=query)
    return dc.conform_series(layout, DataError, input_shape=shape, output_shape=out, labels=labels, query=query,
                             start=start)


def test_series_reconstruction_by_default_nan_only_where_masked_and_zeroed():
    a = _series()
    got = _conform(a)
    # no query_times: the outputs are at the observation times; no y: the targets are x, masked by mask
    np.testing.assert_array_equal(got["query_times"], a["times"])
    np.testing.assert_array_equal(got["y_mask"], a["mask"].astype(float))
    assert not np.isnan(got["x"]).any() and not np.isnan(got["y"]).any()
    np.testing.assert_array_equal(got["x"][a["mask"]], a["x"][a["mask"]])
    assert (got["x"][~a["mask"]] == 0).all() and (got["y"][~a["mask"]] == 0).all()
    assert set(got) == {"x", "y", "y_mask", "times", "mask", "query_times"}
    # a model that reads only times gets no mask (but x is still zeroed where masked)
    assert set(_conform(a, mask=False, query=None)) == {"x", "y", "y_mask", "times"}


def test_series_nan_where_observed_names_file_array_and_index():
    a = _series()
    a["x"][2, 3, 1] = np.nan
    a["mask"][2, 3, 1] = True
    with pytest.raises(DataError, match=r"s\.npz, array 'x': NaN at index \(2, 3, 1\)") as e:
        _conform(a)
    assert "mask is 0" in str(e.value)
    no_mask = _series()
    del no_mask["mask"]
    with pytest.raises(DataError, match="array 'x': NaN"):
        _conform(no_mask)


def test_series_times_must_not_go_back():
    a = _series()
    a["times"][1, 3] = a["times"][1, 2] - 0.5
    with pytest.raises(DataError, match=r"array 'times': sample 1 goes back in time at index 3") as e:
        _conform(a)
    assert "pad a shorter series by repeating its last time" in str(e.value)
    a = _series()
    a["times"][0, 4] = np.inf
    with pytest.raises(DataError, match=r"array 'times': inf at index \(0, 4\)"):
        _conform(a)
    tied = _series()
    tied["times"][:, 3:] = tied["times"][:, 2:3]  # padding: the last time repeated
    _conform(tied)


def test_series_mask_values_and_query_start():
    a = _series()
    a["mask"] = a["mask"].astype(float)
    a["mask"][0, 0, 0] = 0.5
    with pytest.raises(DataError, match=r"array 'mask': 0\.5 at index \(0, 0, 0\) is not 0 or 1"):
        _conform(a)
    b = _series()
    b["mask"] = b["mask"].astype(np.int8)  # numbers 0/1 work as booleans do
    _conform(b)
    with pytest.raises(DataError, match=r"sample 0 asks for an output at time .* before the ODE block's start 1\.0"):
        _conform(_series(), start=1.0)


def test_series_missing_and_mismatched_arrays():
    a = _series()
    no_times = {k: v for k, v in a.items() if k != "times"}
    with pytest.raises(DataError, match=r"s\.npz has no array 'times', which the model reads") as e:
        _conform(no_times)
    assert "numpy.savez" in str(e.value)
    # without query_times the outputs are at the T observation times: T' must equal T
    with pytest.raises(DataError, match="has no array 'query_times'.* the model reads 7 query times") as e:
        _conform(a, query=7, out=(7, 2))
    assert "query_times (N, 7)" in str(e.value)
    with pytest.raises(DataError, match="array 'times': shape \\(4, 6\\)"):
        _conform({**a, "times": np.zeros((4, 6))})
    with pytest.raises(DataError, match="array 'mask': shape"):
        _conform({**a, "mask": np.ones((4, 5, 3))})
    with pytest.raises(DataError, match="gives the output times, but the model reads none"):
        _conform({**a, "query_times": np.ones((4, 3)), "y": np.zeros((4, 3, 2))}, query=None)
    with pytest.raises(DataError, match="'query_times' without targets 'y'"):
        _conform({**a, "query_times": np.ones((4, 3))}, query=3, out=(3, 2))
    with pytest.raises(DataError, match="holds 4 samples, s.npz, array 'times' 3"):
        _conform({**a, "times": a["times"][:3]})


def test_series_forecast_targets_with_their_own_mask():
    a = _series()
    rng = np.random.default_rng(1)
    q = np.sort(rng.uniform(3, 6, (4, 3)), axis=1)
    y_mask = rng.random((4, 3, 1)) > 0.4
    y = np.where(y_mask, rng.standard_normal((4, 3, 1)), np.nan)
    got = _conform({**a, "query_times": q, "y": y, "y_mask": y_mask}, query=3, out=(3, 1))
    np.testing.assert_array_equal(got["query_times"], q)
    assert not np.isnan(got["y"]).any() and (got["y"][~y_mask] == 0).all()
    y[0, 0, 0], y_mask[0, 0, 0] = np.nan, True
    with pytest.raises(DataError, match=r"array 'y': NaN at index \(0, 0, 0\)") as e:
        _conform({**a, "query_times": q, "y": y, "y_mask": y_mask}, query=3, out=(3, 1))
    assert "y_mask is 0" in str(e.value)
    with pytest.raises(DataError, match=r"array 'query_times': sample 0 asks for an output at time"):
        _conform({**a, "query_times": q, "y": np.zeros((4, 3, 1))}, query=3, out=(3, 1), start=5.0)


def test_series_labels_take_no_mask():
    a = _series()
    labels = np.array([0, 1, 1, 0])
    got = _conform({**a, "y": labels}, query=None, out=(2,), labels=True)
    np.testing.assert_array_equal(got["y"], labels)
    with pytest.raises(DataError, match="masks values, but the targets are class labels"):
        _conform({**a, "y": labels, "y_mask": np.ones((4, 1))}, query=None, out=(2,), labels=True)
    with pytest.raises(DataError, match="cross_entropy needs class labels in an array 'y'"):
        _conform(a, query=None, out=(2,), labels=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 3), st.floats(0, 1), st.integers(0, 2**31 - 1),
       st.booleans())
def test_series_any_sorted_padded_masked_file_is_accepted_and_shuffled_times_are_not(n, t, f, missing, seed,
                                                                                  shuffle):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, n)
    real = np.arange(t)[None, :] < lengths[:, None]
    times = np.sort(np.where(real, rng.uniform(-2, 2, (n, t)), np.inf), axis=1)
    times = np.where(real, times, times[np.arange(n), lengths - 1][:, None])
    mask = (rng.random((n, t, f)) >= missing) & real[..., None]
    x = np.where(mask, rng.standard_normal((n, t, f)), np.nan)
    arrays = {"x": x, "times": times, "mask": mask}
    decreasing = bool((np.diff(times[:, ::-1], axis=1) < 0).any())
    if shuffle and decreasing:
        arrays["times"] = times[:, ::-1]
        with pytest.raises(DataError, match="goes back in time"):
            _conform(arrays, shape=(t, f), out=(t, f), query=t, start=None)
        return
    got = _conform(arrays, shape=(t, f), out=(t, f), query=t, start=None)
    assert np.isfinite(got["x"]).all() and np.isfinite(got["y"]).all()
    np.testing.assert_array_equal(got["y_mask"], mask)
    np.testing.assert_array_equal(got["x"], np.where(mask, x, 0.0))
