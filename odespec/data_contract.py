"""The data contract: how an array in a file becomes a model's inputs or its training targets.

Written once and used by every entry point that reads data, so that one file gets one verdict
everywhere: ``odespec train`` (the ``npz``, ``npy`` and ``csv`` sources, :mod:`odespec.train.files`),
``odespec validate`` (the train section's data checks, :mod:`odespec.train.check`, from the files'
headers), ``odespec run`` and ``--calibration-data`` (:mod:`odespec.export.run`). numpy only:
``odespec validate`` imports no torch. The README's "Data files" section states the rules for users:

* **Samples first.** An array's first axis counts samples; a CSV holds one sample per row.
* **Shape** (:func:`fits`). Samples of shape R feed a per-sample shape S when they hold the same
  number of values and either R and S differ only by axes of length 1 (an (N, 8, 8) array feeds
  ``input: {shape: [1, 8, 8]}``) or one of the two is flat, one axis (an (N, 64) array or a CSV
  row of 64 values feeds (1, 8, 8); an (N, 8, 8) array feeds (64,)). Values are taken in C order.
  Any other shape is refused, because feeding it would reorder values: (N, 2, 100) does not feed
  (100, 2).
* **dtype** (:func:`check_dtype`, :func:`cast`). Booleans, integers and floats are numbers;
  strings, Python objects, complex numbers and dates are refused. Numbers are converted to the
  model's dtype; a finite value beyond float32's range is refused for a float32 model.
* **Values** (:func:`check_finite`). NaN and infinity are refused, naming the file, the array and
  the first bad index.
* **Targets** (:func:`target_kind`, :func:`conform_targets`). Class labels (the ``cross_entropy``
  loss) are one whole number per sample in ``0..C-1`` for a model with C class scores, or one-hot
  rows of C values; rows of probabilities that are not one-hot are refused. Any other loss
  compares values: targets of the model's output shape, by the shape rule above.
* **Default loss** (:func:`default_loss`), as the README's training table says: ``cross_entropy``
  for class labels, else ``mse``. Targets are class labels when the model outputs C >= 2 scores
  and the targets hold one value per sample, or are one-hot rows of C values.

* **Series** (:func:`check_series`, :func:`conform_series`; issue #13). An irregularly sampled
  series adds arrays beside ``x`` (N, T, F): ``times`` (N, T), each sample's observation times,
  finite and non-decreasing (:func:`check_times`; a shorter series is padded by repeating its
  last time); ``mask`` (N, T, F), 1 where a value was observed and 0 where it is missing or
  padding, booleans or the numbers 0 and 1 (:func:`check_mask`; absent: every value observed);
  ``query_times`` (N, T'), the times the model's outputs are at, T' the model's query count, at
  or after the ODE block's start (:func:`check_query_start`; absent: the observation times, then
  T' = T); targets ``y`` (N, T', F_out) with ``y_mask`` (N, T', F_out) (absent ``y``: the targets
  are ``x`` with ``mask``, a reconstruction). NaN is allowed exactly where a value is masked
  (:func:`check_finite` with ``missing=``); masked values are set to 0 before they reach the
  model or the loss, so that no NaN can travel through a product with a mask.
"""

from __future__ import annotations

import csv
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from odespec.errors import DataFileError
from odespec.fileio import is_number

__all__ = [
    "Shape", "ErrorType", "ArrayInfo", "CsvTable", "fits", "expected_shapes", "check_dtype", "check_rows",
    "check_samples", "check_finite", "check_castable", "check_range", "cast", "conform_inputs", "target_kind",
    "default_loss", "check_pair",
    "conform_targets", "is_one_hot", "check_batch_size", "read_csv", "peek_csv", "csv_target", "npy_info",
    "npz_infos", "LABELS", "ONE_HOT", "VALUES", "SCORES", "SERIES_ARRAYS", "SeriesLayout", "check_times",
    "check_mask", "check_query_start", "check_series", "conform_series",
]

Shape = tuple[int, ...]
#: the entry point's own error class (``odespec.train.DataError``, ``odespec.errors.InputFileError``),
#: called with a message and a hint
ErrorType = Callable[[str, Optional[str]], DataFileError]
PathLike = Union[str, Path]

#: target kinds: one class index per sample; one-hot rows; values of the output's shape
LABELS, ONE_HOT, VALUES = "labels", "one-hot", "values"
#: with no loss given, rows of C values for C class scores: one-hot rows are labels, others values
SCORES = "scores"

_NUMERIC = "biuf"
_NONFINITE_HINT = "NaN and infinity are refused: drop those samples, or fill in the missing values"


def _fmt(shape: Sequence[Union[int, str]]) -> str:
    """``(2, 3)``, ``(2,)``, ``()``: as the rest of odespec prints shapes."""
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass(frozen=True)
class ArrayInfo:
    """An array as its file describes it, before (or without) reading its values.

    ``where`` names the file and the array in messages (``d.npz, array 'x'``); ``shape`` has the
    samples first, ``-1`` where the count is unknown (a CSV whose rows were not all read);
    ``read`` loads the values; ``note`` is added to the hint of every error about this array (a
    CSV target says which column it is and how to choose another); ``csv`` marks a CSV's rows,
    whose shape errors speak of columns.
    """

    where: str
    shape: Shape
    dtype: np.dtype
    read: Optional[Callable[[], np.ndarray]] = field(default=None, compare=False, repr=False)
    note: Optional[str] = None
    csv: bool = False

    @classmethod
    def of(cls, array: np.ndarray, where: str, *, note: Optional[str] = None, csv: bool = False) -> "ArrayInfo":
        """The description of an array already in memory."""
        return cls(where, tuple(int(d) for d in array.shape), array.dtype, lambda: array, note, csv)

    @property
    def count(self) -> Optional[int]:
        """Samples, or None when unknown (or for a 0-d array, which has no samples axis)."""
        return self.shape[0] if self.shape and self.shape[0] >= 0 else None

    @property
    def sample(self) -> Shape:
        """One sample's shape."""
        return self.shape[1:]

    def hint(self, hint: Optional[str]) -> Optional[str]:
        """``hint`` with this array's note."""
        parts = [h for h in (hint, self.note) if h]
        return "; ".join(parts) if parts else None


# -- shapes ------------------------------------------------------------------------------------------
def _squeezed(shape: Sequence[int]) -> Shape:
    return tuple(d for d in shape if d != 1)


def fits(sample: Sequence[int], want: Sequence[int]) -> bool:
    """Whether samples of shape ``sample`` feed the per-sample shape ``want``: the same number of
    values, and equal up to axes of length 1 or one of them flat (see the module's rules)."""
    if math.prod(sample) != math.prod(want):
        return False
    a, b = _squeezed(sample), _squeezed(want)
    # a shape whose values lie along one axis (all others of length 1) is flat, whatever its
    # rank: C order reads it, or fills it, without reordering
    return a == b or len(a) <= 1 or len(b) <= 1


def expected_shapes(want: Sequence[int], count: str = "N") -> str:
    """The canonical array shapes that feed ``want``: ``(N, 1, 8, 8), (N, 8, 8) or (N, 64)``."""
    forms: list[Shape] = []
    for form in (tuple(want), _squeezed(want), (math.prod(want),)):
        if form not in forms:
            forms.append(form)
    text = [_fmt((count, *f)) for f in forms]
    return text[0] if len(text) == 1 else ", ".join(text[:-1]) + " or " + text[-1]


def check_dtype(info: ArrayInfo, error: ErrorType, what: str = "values") -> None:
    """Refuse an array whose dtype is not numbers (booleans, integers, floats)."""
    if info.dtype.kind not in _NUMERIC:
        raise error(f"{info.where}: holds {info.dtype} {what}; odespec reads numbers (booleans, integers, floats)",
                    info.hint("save a numeric array (numpy.save / numpy.savez); text, objects and complex "
                              "numbers are refused"))


def check_rows(arrays: Sequence[ArrayInfo], error: ErrorType) -> None:
    """The arrays of one set of samples (inputs first, then targets, or times and masks): each
    has a samples axis, all the same count, and there is at least one sample."""
    for info in arrays:
        if not info.shape:
            raise error(f"{info.where}: a single value, not one row per sample", info.hint(
                "the first axis counts samples: save an array of shape (N, ...)"))
    x = arrays[0]
    for y in arrays[1:]:
        if x.count is not None and y.count is not None and x.count != y.count:
            raise error(f"{x.where} holds {x.count} samples, {y.where} {y.count}: inputs and targets need one row "
                        f"per sample; got shapes {_fmt(x.shape)} and {_fmt(y.shape)}", None)
    if x.count == 0:
        raise error(f"{x.where}: holds no samples", "the first axis counts samples: save at least one")


def check_samples(info: ArrayInfo, want: Shape, error: ErrorType, *, what: str = "input",
                  count: str = "N") -> None:
    """Refuse samples that do not feed the per-sample shape ``want`` (:func:`fits`); the message
    names the file, the expected and the actual shape."""
    if fits(info.sample, want):
        return
    n, p = math.prod(info.sample), math.prod(want)
    got = _fmt(tuple("?" if d < 0 else d for d in info.shape))
    expected = f"expected shape {expected_shapes(want, count)}, got {got}"
    if info.csv:
        raise error(f"{info.where}: expected {p} columns per row (a sample of the model's {what} has shape "
                    f"{_fmt(want)}), got {n}", info.hint("rows are samples; columns are one sample's values, "
                                                         "flattened in C order"))
    if n != p:
        message = (f"{info.where}: a sample has {n} {what} values (shape {_fmt(info.sample)}); the model's {what} "
                   f"{_fmt(want)} takes {p}: {expected}")
    else:
        message = (f"{info.where}: samples of shape {_fmt(info.sample)} do not fit the model's {what} {_fmt(want)} "
                   f"(the same {p} values, in another arrangement): {expected}")
    hint = None
    if len(info.shape) >= 1 and fits(info.shape, want):
        hint = "the array looks like one sample without the batch dimension: save x[None] (shape (1, ...))"
    elif n == p:
        hint = "feeding it would reorder the values; transpose the array to the model's axis order first"
    raise error(message, info.hint(hint))


# -- values ------------------------------------------------------------------------------------------
def check_finite(array: np.ndarray, where: str, error: ErrorType, *, missing: Optional[np.ndarray] = None,
                 note: Optional[str] = None, cell: Optional[Callable[[tuple[int, ...]], str]] = None) -> None:
    """Refuse NaN and infinity, naming ``where`` (file and array), the first bad index (in the
    file's own layout: ``cell`` turns an index into words, e.g. a CSV's line and column) and the
    count. ``missing``, broadcastable to ``array``, marks values allowed to be NaN (masked out)."""
    if array.dtype.kind not in "fc":
        return  # integers and booleans are always finite
    bad = ~np.isfinite(array)
    if missing is not None:
        bad &= ~np.broadcast_to(np.asarray(missing, dtype=bool), array.shape)
    if not bad.any():
        return
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    place = cell(first) if cell is not None else f"index {_fmt(first)}"
    total = int(bad.sum())
    others = f" (and {total - 1:,} more NaN/inf values)" if total > 1 else ""
    hint = _NONFINITE_HINT + (f"; {note}" if note else "")
    value = array[first]
    word = "NaN" if np.isnan(value) else ("-inf" if value < 0 else "inf")
    raise error(f"{where}: {word} at {place}{others}", hint)


def cast(array: np.ndarray, dtype: np.dtype, where: str, error: ErrorType) -> np.ndarray:
    """``array`` converted to ``dtype``: any number to a float; to an integer or boolean input only
    what converts without loss of kind. A finite value beyond a float dtype's range is refused."""
    check_castable(array.dtype, dtype, where, error)
    check_range(array, dtype, where, error)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def check_castable(have: np.dtype, dtype: np.dtype, where: str, error: ErrorType) -> None:
    """Refuse converting ``have`` to ``dtype``: anything but numbers, and for an integer or
    boolean ``dtype`` what changes kind (floats to integers)."""
    dtype = np.dtype(dtype)
    if have.kind not in _NUMERIC or (dtype.kind != "f" and not np.can_cast(have, dtype, casting="same_kind")):
        raise error(f"{where}: array of dtype {have} cannot be fed to an input of dtype {dtype}: expected {dtype}, "
                    f"got {have}", "odespec reads numbers (booleans, integers, floats); text, objects and complex "
                                   "numbers are refused")


def check_range(array: np.ndarray, dtype: np.dtype, where: str, error: ErrorType) -> None:
    """Refuse finite values that a narrower float ``dtype`` would turn into infinity."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or array.dtype.kind != "f" or array.dtype.itemsize <= dtype.itemsize or not array.size:
        return
    limit = np.finfo(dtype).max
    over = np.abs(array) > limit
    if over.any():
        first = tuple(int(i) for i in np.argwhere(over)[0])
        raise error(f"{where}: {array[first]} at index {_fmt(first)} is beyond {dtype}'s range (largest {limit:.4g})",
                    "rescale the data, or write dtype: float64 in the spec")


def conform_inputs(array: np.ndarray, info: ArrayInfo, want: Shape, error: ErrorType, *,
                   dtype: Optional[np.dtype] = None, count: str = "N",
                   cell: Optional[Callable[[tuple[int, ...]], str]] = None) -> np.ndarray:
    """Inputs by the contract: numbers, one row per sample, samples that feed ``want``, finite;
    returned as (N, *want), converted to ``dtype`` when given (else keeping their own dtype, as
    training does, to convert per batch)."""
    if dtype is not None:
        check_castable(info.dtype, dtype, info.where, error)
    check_dtype(info, error)
    check_rows([info], error)
    check_samples(info, want, error, count=count)
    check_finite(array, info.where, error, note=info.note, cell=cell)
    shaped = array.reshape((array.shape[0], *want))
    return shaped if dtype is None else cast(shaped, dtype, info.where, error)


# -- targets -----------------------------------------------------------------------------------------
def _classes(out: Shape) -> Optional[int]:
    return out[0] if len(out) == 1 and out[0] >= 2 else None


def target_kind(info: ArrayInfo, out: Shape, labels: Optional[bool], error: ErrorType) -> str:
    """How targets of ``info``'s shape meet a model that outputs ``out`` (per sample).
    ``labels``: True for the cross_entropy loss, False for a loss that compares values, None when
    no loss is given (then :data:`SCORES` means: one-hot rows are labels, other rows values).
    Returns :data:`LABELS`, :data:`ONE_HOT`, :data:`VALUES` or :data:`SCORES`; refuses the rest."""
    size, classes = math.prod(info.sample), _classes(out)
    rows = classes is not None and size == classes and len(_squeezed(info.sample)) <= 1
    if labels:
        if size == 1:
            return LABELS
        if rows:
            return ONE_HOT
        raise error(f"{info.where}: cross_entropy takes one class label per sample"
                    + (f", or one-hot rows of {classes}" if classes else "")
                    + f"; targets have shape {_fmt(info.shape)}", info.hint("or use loss mse/l1 for values"))
    if labels is None and classes is not None:
        if size == 1:
            return LABELS
        if rows:
            return SCORES
    if fits(info.sample, out):
        return VALUES
    hint = None
    if classes is not None and size == 1:
        hint = "one whole number per sample is a class label: write loss: cross_entropy (the default for labels)"
    elif size == math.prod(out):
        hint = "feeding them would reorder the values; transpose the array to the model's output axis order"
    values = f"{size} value" + ("s" if size != 1 else "")
    raise error(f"{info.where}: a target has {values} (shape {_fmt(info.sample)}); the model's output {_fmt(out)} "
                f"has {math.prod(out)}", info.hint(hint))


def is_one_hot(rows: np.ndarray) -> bool:
    """Whether every row is exactly one 1 among 0s."""
    return bool(rows.size) and bool(np.all((rows == 0) | (rows == 1))) and bool(np.all(rows.sum(axis=1) == 1))


def default_loss(y: ArrayInfo, out: Shape, error: ErrorType) -> str:
    """The loss when the spec names none: ``cross_entropy`` for class labels (one value per
    sample for a model with C >= 2 class scores, or one-hot rows of C), else ``mse``. Reads the
    values only for rows of C (to tell one-hot rows from values)."""
    kind = target_kind(y, out, None, error)
    if kind == LABELS:
        return "cross_entropy"
    if kind == SCORES and y.read is not None and y.dtype.kind in _NUMERIC:
        values = y.read()
        return "cross_entropy" if is_one_hot(values.reshape(len(values), -1)) else "mse"
    return "mse"


def check_pair(x: ArrayInfo, y: ArrayInfo, want: Shape, out: Shape, labels: Optional[bool],
               error: ErrorType) -> str:
    """Everything the headers of an (inputs, targets) pair can tell: numbers, rows, the inputs'
    shape, the targets against the output and the loss. Returns :func:`target_kind`'s kind."""
    check_dtype(x, error, "inputs")
    check_dtype(y, error, "targets")
    check_rows([x, y], error)
    check_samples(x, want, error)
    return target_kind(y, out, labels, error)


def conform_targets(array: np.ndarray, info: ArrayInfo, out: Shape, labels: bool, error: ErrorType) -> np.ndarray:
    """Targets by the contract: class labels as int64 (N,) (one-hot rows become their index),
    values as float64 (N, *out). Refuses NaN/inf, labels that are not whole numbers in range,
    rows that are not one-hot."""
    kind = target_kind(info, out, labels, error)
    check_finite(array, info.where, error, note=info.note)
    n = len(array)
    if kind == VALUES:
        return array.reshape((n, *out)).astype(np.float64)
    classes = _classes(out) or 1
    if kind == ONE_HOT:
        rows = array.reshape(n, classes)
        if not is_one_hot(rows):
            bad = int(np.argmax(~(np.all((rows == 0) | (rows == 1), axis=1) & (rows.sum(axis=1) == 1))))
            soft = bool(np.all(rows >= 0)) and np.allclose(rows.sum(axis=1), 1.0)
            what = "probabilities, not one-hot" if soft else "not one-hot (one 1 among 0s)"
            raise error(f"{info.where}: row {bad} of the targets is {what}: {rows[bad].tolist()}",
                        info.hint("cross_entropy takes class labels: one whole number per sample, or one-hot "
                                  "rows; give the index of the class (argmax), or use loss mse for values"))
        return np.argmax(rows, axis=1).astype(np.int64)
    values = array.reshape(n)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        bad = int(np.argmax(values != np.round(values)))
        raise error(f"{info.where}: class labels must be whole numbers; sample {bad} has {values[bad].item()!r}",
                    info.hint(f"class labels are 0..{classes - 1}; or use loss mse/l1 for values"))
    index = values.astype(np.int64)
    outside = (index < 0) | (index >= classes)
    if outside.any():
        bad = int(np.argmax(outside))
        raise error(f"{info.where}: class label {int(index[bad])} is outside 0..{classes - 1} (sample {bad}; the "
                    f"model outputs {classes} class scores)",
                    info.hint(f"end the model with linear: {int(index.max()) + 1} for labels up to {int(index.max())}"
                              if index.max() >= classes else None))
    return index


def check_batch_size(batch_size: int, count: int, error: ErrorType) -> None:
    """A batch is drawn from the training samples: it cannot be larger than they are."""
    if batch_size > count:
        raise error(f"batch_size {batch_size} is larger than the {count} training samples",
                    f"use batch_size: {count} or less (or more data)")


# -- readers ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CsvTable:
    """A CSV file's rows (as text): a ``header`` when its first row is not all numbers, and each
    data row's line in the file (for messages). :meth:`numbers` converts them."""

    path: Path
    header: Optional[list[str]]
    rows: list[list[str]]
    lines: list[int]
    #: False when only the first data row was read (:func:`peek_csv`)
    complete: bool = True

    @property
    def width(self) -> int:
        """Columns per row."""
        return len(self.rows[0])

    def column(self, index: int) -> str:
        """``column 3 ('label')``, 1-based, with the header's name when there is one."""
        name = f" ({self.header[index]!r})" if self.header and index < len(self.header) else ""
        return f"column {index + 1}{name}"

    def cell(self, index: tuple[int, ...]) -> str:
        """A cell's place in words: its line and column."""
        return f"line {self.lines[index[0]]}, {self.column(index[1])}"

    def numbers(self, error: ErrorType) -> np.ndarray:
        """The cells as float64 (rows, columns); every cell must be a finite number."""
        try:
            data = np.array([[float(c) for c in r] for r in self.rows], dtype=np.float64)
        except ValueError:
            i, j = next((i, j) for i, r in enumerate(self.rows) for j, c in enumerate(r) if not is_number(c))
            raise error(f"{self.path}: {self.cell((i, j))}: {self.rows[i][j]!r} is not a number (every cell must be "
                        "a number)", None) from None
        check_finite(data, str(self.path), error, cell=self.cell)
        return data


def _csv_table(path: Path, error: ErrorType, limit: Optional[int]) -> CsvTable:
    rows: list[list[str]] = []
    lines: list[int] = []
    header: Optional[list[str]] = None
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for r in reader:
                if not r or not any(c.strip() for c in r):
                    continue
                if header is None and not rows and not all(is_number(c) for c in r):
                    header = [c.strip() for c in r]
                    continue
                rows.append(r)
                lines.append(reader.line_num)
                if limit is not None and len(rows) >= limit:
                    break
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise error(f"{path}: cannot read it as .csv: {e}", None) from None
    if not rows:
        raise error(f"{path} has no data rows", None)
    for r, line in zip(rows, lines, strict=True):
        if len(r) != len(rows[0]):
            raise error(f"{path}: line {line} has {len(r)} columns, the first data row has {len(rows[0])}",
                        "every row holds one sample: the same number of columns")
    return CsvTable(path, header, rows, lines, complete=limit is None)


def read_csv(path: PathLike, error: ErrorType) -> CsvTable:
    """Every row of a CSV file: rows are samples; a first row that is not all numbers is a header;
    blank rows are skipped; every row must be as wide as the first."""
    return _csv_table(Path(path), error, None)


def peek_csv(path: PathLike, error: ErrorType) -> CsvTable:
    """The header and the first data row only (the columns), for ``odespec validate``."""
    return _csv_table(Path(path), error, 1)


def csv_target(table: CsvTable, target: Union[int, str], error: ErrorType) -> tuple[int, str]:
    """The target column's index and its description for messages, which names the column and how
    to choose another (a column name needs the header row; an index may count from the end)."""
    width = table.width
    if isinstance(target, str):
        if table.header is None or target not in table.header:
            known = f"its columns: {', '.join(table.header)}" if table.header else "it has no header row"
            raise error(f"{table.path}: no column named {target!r} ({known})",
                        "name the target column, or give its index")
        col = table.header.index(target)
    else:
        if not -width <= target < width:
            raise error(f"{table.path}: target column {target} does not exist ({width} columns)",
                        "target: counts columns from 0, or from the end when negative (-1: the last)")
        col = target % width
    chosen = "the last column, the default" if target == -1 else f"target: {target!r}"
    return col, (f"the target is {table.column(col)} ({chosen}); choose the target column with "
                 "train.data.csv.target: NAME or INDEX")


def _npy_header(f: IO[bytes], size: int, where: str, error: ErrorType) -> tuple[Shape, np.dtype]:
    """Shape and dtype from an .npy stream's header; refuses what the data cannot hold."""
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f)
        offset = f.tell()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise error(f"{where}: cannot read it as .npy: {e}", None) from None
    if dtype.hasobject:
        raise error(f"{where}: cannot read it as .npy: it holds Python objects, which need pickle (refused)",
                    "save plain numeric arrays with numpy.save (object arrays need pickle, which is refused)")
    need = offset + math.prod(shape) * dtype.itemsize
    if size < need:
        raise error(f"{where}: cannot read it as .npy: the file is truncated ({size:,} bytes; its header "
                    f"promises {need:,})",
                    "write the file again")
    return tuple(int(d) for d in shape), dtype


def _load_npy(path: Path, where: str, error: ErrorType) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{where}: cannot read it as .npy: {e}",
                    "save plain numeric arrays with numpy.save (object arrays need pickle, which is refused)") from None


def npy_info(path: PathLike, error: ErrorType, *, where: Optional[str] = None) -> ArrayInfo:
    """An .npy file's array from its header; ``read`` loads it (without pickle)."""
    p = Path(path)
    name = where or str(p)
    try:
        with open(p, "rb") as f:
            shape, dtype = _npy_header(f, p.stat().st_size, name, error)
    except OSError as e:
        raise error(f"{name}: cannot read it: {e}", None) from None
    return ArrayInfo(name, shape, dtype, lambda: _load_npy(p, name, error))


def npz_infos(path: PathLike, error: ErrorType) -> dict[str, ArrayInfo]:
    """Every array of an .npz file, by name, from the headers of its members; each ``read``
    loads that array alone (without pickle)."""
    p = Path(path)
    infos: dict[str, ArrayInfo] = {}
    try:
        with zipfile.ZipFile(p) as z:
            for member in z.infolist():
                if not member.filename.endswith(".npy"):
                    continue
                name = member.filename[: -len(".npy")]
                where = f"{p}, array {name!r}"
                with z.open(member) as f:
                    shape, dtype = _npy_header(f, member.file_size, where, error)
                infos[name] = ArrayInfo(where, shape, dtype, _npz_reader(p, name, where, error))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise error(f"{p}: cannot read it as .npz: {e}", "save arrays with numpy.savez") from None
    return infos


def _npz_reader(path: Path, name: str, where: str, error: ErrorType) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as z:
                return z[name]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise error(f"{where}: cannot read it: {e}", None) from None

    return read


# -- series (irregularly sampled time series) --------------------------------------------------------
#: the arrays of a series file, in the order messages list them
SERIES_ARRAYS = ("x", "times", "mask", "query_times", "y", "y_mask")
_SERIES_SAVE = "save them with numpy.savez(FILE, x=..., times=..., mask=..., query_times=..., y=..., y_mask=...)"


@dataclass(frozen=True)
class SeriesLayout:
    """Which arrays of a series file feed what, as their headers describe them (values unread):
    :func:`check_series`'s verdict, which :func:`conform_series` reads by.

    ``times``, ``mask`` and ``query_times`` are the files' arrays (None when absent); ``y`` is
    None when the targets are ``x`` (with ``mask`` as their mask); ``reads`` names the model
    inputs beside ``input`` that the model takes (``times``, ``mask``, ``query_times``)."""

    x: ArrayInfo
    times: Optional[ArrayInfo]
    mask: Optional[ArrayInfo]
    query_times: Optional[ArrayInfo]
    y: Optional[ArrayInfo]
    y_mask: Optional[ArrayInfo]
    reads: tuple[str, ...]
    #: :func:`target_kind` of ``y`` (:data:`VALUES` when the targets are ``x``)
    kind: str

    @property
    def targets(self) -> ArrayInfo:
        """The targets' array: ``y``, or ``x`` for a reconstruction."""
        return self.y if self.y is not None else self.x


def check_times(times: np.ndarray, where: str, error: ErrorType, *, what: str = "times") -> None:
    """Times (N, K): finite, and non-decreasing within each sample (ties are padding). The
    message names ``where``, the sample and the index."""
    check_finite(times, where, error, note=f"every {what} value must be a number")
    if times.ndim < 2 or times.shape[1] < 2:
        return
    t = times.reshape(len(times), -1)
    down = np.diff(t, axis=1) < 0
    if down.any():
        i, j = (int(v) for v in np.argwhere(down)[0])
        raise error(f"{where}: sample {i} goes back in time at index {j + 1}: {t[i, j + 1].item()!r} after {t[i, j].item()!r}",
                    f"each sample's {what} must be non-decreasing: sort each sample's values by time (and "
                    "their mask and values with them); pad a shorter series by repeating its last time, with mask 0")


def check_mask(mask: np.ndarray, where: str, error: ErrorType) -> None:
    """A mask: booleans, or the numbers 0 (missing or padding) and 1 (observed)."""
    if mask.dtype.kind == "b":
        return
    bad = ~((mask == 0) | (mask == 1))
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise error(f"{where}: {mask[first].item()!r} at index {_fmt(first)} is not 0 or 1"
                    + (f" (and {int(bad.sum()) - 1:,} more)" if int(bad.sum()) > 1 else ""),
                    "a mask holds 1 where a value was observed and 0 where it is missing or padding (booleans "
                    "work too)")


def check_query_start(query: np.ndarray, start: float, where: str, error: ErrorType) -> None:
    """The query times are where the model's ODE block outputs; it solves forward from
    ``start``, so none may lie before it."""
    early = query < start
    if early.any():
        i, j = (int(v) for v in np.argwhere(early.reshape(len(query), -1))[0])
        raise error(f"{where}: sample {i} asks for an output at time {query.reshape(len(query), -1)[i, j].item()!r} (index "
                    f"{j}), before the ODE block's start {start!r}",
                    "the ODE block solves forward from its start: write an earlier start: in the ODE block "
                    f"(at most {query.min().item()!r}), or shift the times")


def _need_array(infos: Mapping[str, ArrayInfo], file: str, name: str, why: str, error: ErrorType) -> ArrayInfo:
    if name not in infos:
        have = ", ".join(repr(k) for k in infos) or "none"
        raise error(f"{file} has no array {name!r}, which {why} (it has: {have})", _SERIES_SAVE)
    return infos[name]


def _series_shape(info: ArrayInfo, want: Shape, what: str, error: ErrorType) -> None:
    """``info``'s samples feed ``want`` by :func:`fits`; else a message saying what ``want`` is."""
    if not fits(info.sample, want):
        raise error(f"{info.where}: shape {_fmt(info.shape)}; {what}: expected {expected_shapes(want)}",
                    info.hint("the first axis counts samples; the others must match the model's input (T, F) or "
                              "its output (T', F_out)"))


def check_series(infos: Mapping[str, ArrayInfo], file: str, error: ErrorType, *, input_shape: Shape,
                 output_shape: Shape, labels: Optional[bool], times: bool, mask: bool,
                 query: Optional[int]) -> SeriesLayout:
    """Everything the headers of a series file can tell, for a model taking ``input_shape`` (T,
    F) and giving ``output_shape``; ``times``/``mask``/``query`` say what the model reads (the
    spec's ``input: {times, mask, query}``; ``query`` is T'). Missing-but-needed arrays, dtypes,
    sample counts and every array's shape. ``labels`` as for :func:`target_kind`."""
    if len(input_shape) != 2:
        raise error(f"{file}: a series model's input is (T, F); this one is {_fmt(input_shape)}", None)
    steps = input_shape[0]
    x = _need_array(infos, file, "x", "holds the observed values (N, T, F)", error)
    has = {k: infos.get(k) for k in SERIES_ARRAYS[1:]}
    if has["query_times"] is not None and query is None:
        raise error(f"{file}: array 'query_times' gives the output times, but the model reads none",
                    f"write query: {has['query_times'].sample[0] if has['query_times'].sample else 'T'} in the "
                    "spec's input (the model then outputs at each sample's query times)")
    if has["y"] is None and has["y_mask"] is not None:
        raise error(f"{file}: array 'y_mask' masks targets, but there is no array 'y'",
                    "save the targets as y, or drop y_mask (without y the targets are x, masked by mask)")
    if has["y"] is None and has["query_times"] is not None:
        raise error(f"{file}: array 'query_times' without targets 'y' at those times",
                    "save y (N, T', F_out), the values at the query times; without query_times and y the model "
                    "reconstructs x at the observation times")
    need_times = times or (query is not None and has["query_times"] is None)
    if need_times:
        why = ("the model reads (input.times)" if times else
               "gives the output times when there is no query_times (the model reads query times)")
        _need_array(infos, file, "times", why, error)
    reads = tuple(n for n, on in (("times", times), ("mask", mask), ("query_times", query is not None)) if on)
    used = [x] + [info for info in has.values() if info is not None]
    for info in used:
        check_dtype(info, error)
    check_rows(used, error)
    _series_shape(x, input_shape, f"x holds the model's input {_fmt(input_shape)} per sample", error)
    if has["mask"] is not None:
        _series_shape(has["mask"], input_shape, "mask has one entry per value of x", error)
    if has["times"] is not None:
        _series_shape(has["times"], (steps,), f"times holds one time per observation slot of x ({steps})", error)
    if query is not None:
        q = has["query_times"]
        if q is not None:
            _series_shape(q, (query,), f"query_times holds the model's {query} query times per sample "
                                       "(input.query)", error)
        elif query != steps:
            raise error(f"{file} has no array 'query_times', so the outputs are at the {steps} observation times; "
                        f"the model reads {query} query times (input.query)",
                        f"save query_times (N, {query}) and y at those times, or write query: {steps}")
    y = has["y"]
    if y is None:
        if labels:
            raise error(f"{file}: cross_entropy needs class labels in an array 'y'", _SERIES_SAVE)
        if not fits(input_shape, output_shape):
            raise error(f"{file} has no array 'y', so the targets are x {_fmt(input_shape)} per sample; the model "
                        f"outputs {_fmt(output_shape)}", "save the targets as y, of the model's output shape")
        return SeriesLayout(x, has["times"], has["mask"], has["query_times"], None, None, reads, VALUES)
    kind = target_kind(y, output_shape, labels, error)
    if has["y_mask"] is not None:
        if kind != VALUES:
            raise error(f"{has['y_mask'].where}: masks values, but the targets are class labels",
                        "drop y_mask (cross_entropy takes one label per sample), or use loss mse/l1 for values")
        _series_shape(has["y_mask"], output_shape, "y_mask has one entry per target value", error)
    return SeriesLayout(x, has["times"], has["mask"], has["query_times"], y, has["y_mask"], reads, kind)


def _masked(array: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    """``array`` with its masked-out values 0 (NaN there must not reach a model or a loss)."""
    if mask is None:
        return array
    return np.where(mask, array, np.zeros((), dtype=array.dtype)) if array.dtype.kind == "f" else array


def conform_series(layout: SeriesLayout, error: ErrorType, *, input_shape: Shape, output_shape: Shape,
                   labels: bool, query: Optional[int], start: Optional[float] = None) -> dict[str, np.ndarray]:
    """Read a series file's values by ``layout`` and the contract: masks of 0/1, times finite and
    non-decreasing per sample, query times at or after ``start``, NaN only where masked (then
    0). Returns ``x`` (N, T, F) in its own dtype; ``y`` (float64 values (N, *output_shape), or
    int64 labels); ``y_mask`` (float64, when the targets have one); and the model's other inputs
    it reads (``times``, ``mask``, ``query_times``; float64)."""
    def read(info: ArrayInfo) -> np.ndarray:
        assert info.read is not None
        return info.read()

    n = layout.x.count or 0
    mask = None
    if layout.mask is not None:
        mask = read(layout.mask)
        check_mask(mask, layout.mask.where, error)
        mask = mask.reshape((n, *input_shape)).astype(bool)
    x = read(layout.x).reshape((n, *input_shape))
    check_finite(x, layout.x.where, error, missing=None if mask is None else ~mask,
                 note="NaN marks a missing value only where mask is 0")
    x = _masked(x, mask)
    out: dict[str, np.ndarray] = {"x": np.ascontiguousarray(x)}
    times = None
    if layout.times is not None:
        times = read(layout.times).reshape(n, input_shape[0]).astype(np.float64)
        check_times(times, layout.times.where, error)
    if query is not None:
        qinfo = layout.query_times or layout.times
        assert qinfo is not None  # check_series asked for times
        q = times if layout.query_times is None else read(layout.query_times).reshape(n, query).astype(np.float64)
        assert q is not None
        check_times(q, qinfo.where, error, what="query times")
        if start is not None:
            check_query_start(q, start, qinfo.where, error)
        out["query_times"] = q
    if "times" in layout.reads:
        assert times is not None
        out["times"] = times
    if "mask" in layout.reads:
        out["mask"] = (np.ones(x.shape) if mask is None else mask).astype(np.float64)
    if layout.y is None:
        out["y"] = x.astype(np.float64).reshape((n, *output_shape))
        if mask is not None:
            out["y_mask"] = mask.reshape((n, *output_shape)).astype(np.float64)
        return out
    y_mask = None
    if layout.y_mask is not None:
        y_mask = read(layout.y_mask)
        check_mask(y_mask, layout.y_mask.where, error)
        y_mask = y_mask.reshape((n, *output_shape)).astype(bool)
    y = read(layout.y)
    if layout.kind != VALUES:
        out["y"] = conform_targets(y, layout.y, output_shape, labels, error)
        return out
    y = y.reshape((n, *output_shape))
    check_finite(y, layout.y.where, error, missing=None if y_mask is None else ~y_mask,
                 note="NaN marks a missing target only where y_mask is 0")
    out["y"] = _masked(y, y_mask).astype(np.float64)
    if y_mask is not None:
        out["y_mask"] = y_mask.astype(np.float64)
    return out
