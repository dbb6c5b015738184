"""Data sources read from the user's files: ``npz`` (arrays ``x`` and ``y``; for a model that
reads irregular series also ``times``, ``mask``, ``query_times`` and ``y_mask``), ``npy`` (a pair
of files), ``csv`` (a target column) and ``mnist`` (the IDX files in a directory; nothing is
downloaded). Relative paths are relative to the spec's directory.

Every array goes through the data contract (:mod:`odespec.data_contract`), as ``odespec run``'s
inputs do: the shapes that feed the model, numbers only, no NaN or infinity, class labels or
values by the loss. :meth:`DataSource.inspect` describes the same files from their headers, so
``odespec validate`` gives the verdict training would. Arrays are read without pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from odespec.components import alternatives
from odespec.layers.base import fmt_shape
from odespec.train.augment import RandomCrop
from odespec.train.data import DataShapes, DataSource, FileSplit, LoadedData, Need, register, resolve_path
from odespec.train.errors import DataError
from odespec.train.idx import read_idx

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from odespec.data_contract import ArrayInfo, CsvTable, SeriesLayout

__all__ = ["fit", "fit_files", "fit_series", "read_csv", "MNIST_FILES"]

#: (training images, training labels, test images, test labels), each also accepted with .gz
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: a larger padding could crop an image to nothing but zeros
MAX_CROP_PADDING = 27
_PATH_HINT = "relative paths in train.data are relative to the spec file's directory"
#: the splits a file source may have, and the option naming each one's file
_SPLITS = (("training", "path"), ("evaluation", "eval_path"))


def _path(description: str) -> dict:
    """A file or directory name; an optional one has no default (its description says what
    happens without it)."""
    return {"type": "string", "minLength": 1, "maxLength": 4096, "description": description}


def _existing(base_dir: Path, value: str, what: str) -> Path:
    p = resolve_path(base_dir, value)
    if not p.is_file():
        raise DataError(f"{what} {value!r} not found (looked for {p})", _PATH_HINT)
    return p


def _present(base_dir: Path, value: Optional[str]) -> Optional[Path]:
    """The file an option names, if given and there (validation leaves a missing one to training)."""
    if not value:
        return None
    p = resolve_path(base_dir, value)
    return p if p.is_file() else None


def fit_files(x: "ArrayInfo", y: "ArrayInfo", need: Need) -> tuple["np.ndarray", "np.ndarray"]:
    """Read a split's arrays and shape them by the data contract: x to (n, *input_shape) in its
    own dtype (batches convert it), y to class labels (n,) int64 for cross_entropy, else to
    (n, *output_shape) float64. Errors name the file and array at fault."""
    from odespec import data_contract as dc

    dc.check_pair(x, y, need.input_shape, need.output_shape, need.labels, DataError)
    assert x.read is not None and y.read is not None
    xs = dc.conform_inputs(x.read(), x, need.input_shape, DataError)
    return xs, dc.conform_targets(y.read(), y, need.output_shape, need.labels, DataError)


def fit(x: "np.ndarray", y: "np.ndarray", need: Need,
        where: Union[str, tuple[str, str]]) -> tuple["np.ndarray", "np.ndarray"]:
    """:func:`fit_files` for arrays in memory; ``where`` names both in messages, or each (inputs,
    targets). For data sources that make or read their own arrays."""
    from odespec.data_contract import ArrayInfo

    xw, yw = (where, where) if isinstance(where, str) else where
    return fit_files(ArrayInfo.of(x, xw), ArrayInfo.of(y, yw), need)


def series_layout(infos: Mapping[str, "ArrayInfo"], file: str, need: Need) -> "SeriesLayout":
    """:func:`odespec.data_contract.check_series` of a series file's arrays for the model ``need``
    describes (which must read series)."""
    from odespec.data_contract import check_series

    assert need.series is not None
    s = need.series
    return check_series(infos, file, DataError, input_shape=need.input_shape, output_shape=need.output_shape,
                        labels=need.labels, times=s.times, mask=s.mask, query=s.query)


def fit_series(infos: Mapping[str, "ArrayInfo"], file: str,
               need: Need) -> tuple["np.ndarray", "np.ndarray", dict[str, "np.ndarray"]]:
    """A series file's arrays, checked and read by the data contract for the model ``need``
    describes: (x, y, the rest for :attr:`LoadedData.series`: the model's other inputs and the
    targets' ``y_mask``). For sources that make their series in memory, ``infos`` are
    ``ArrayInfo.of`` their arrays."""
    from odespec.data_contract import conform_series

    assert need.series is not None
    layout = series_layout(infos, file, need)
    arrays = conform_series(layout, DataError, input_shape=need.input_shape, output_shape=need.output_shape,
                            labels=need.labels, query=need.series.query, start=need.query_start)
    return arrays.pop("x"), arrays.pop("y"), arrays


#: arrays that make a file a series file (beside x and y)
SERIES_ONLY = ("times", "mask", "query_times", "y_mask")


def refuse_series(file: str, names: Sequence[str]) -> None:
    """A file of series arrays for a model that reads no series: say how the model reads them."""
    found = [n for n in SERIES_ONLY if n in names]
    if found:
        raise DataError(f"{file} holds irregular-series arrays ({', '.join(map(repr, found))}), but the model reads "
                        "no times or masks",
                        "declare them in the spec's input, e.g. input: {shape: [T, F], times: true, mask: true, "
                        "query: T'} (see the README's Irregular time series), or save only x and y")


def _xy(path: Path, infos: Mapping[str, "ArrayInfo"]) -> tuple["ArrayInfo", "ArrayInfo"]:
    refuse_series(str(path), list(infos))
    missing = [k for k in ("x", "y") if k not in infos]
    if missing:
        raise DataError(f"{path} has no array {' or '.join(map(repr, missing))} (it has: {', '.join(infos) or 'none'})",
                        "save with numpy.savez(FILE, x=inputs, y=targets)")
    return infos["x"], infos["y"]


@register
class Npz(DataSource):
    name = "npz"
    description = ("A .npz file with arrays x (inputs, one row per sample) and y (targets); for a model that "
                   "reads irregular series also times, mask, query_times and y_mask (see the README's Data "
                   "files).")
    shorthand = "path"
    required = ("path",)
    series_arrays = True
    properties = {
        "path": _path("The .npz file (relative to the spec's directory)."),
        "eval_path": _path("A .npz file of evaluation data (default: evaluate on the training data)."),
    }

    def inspect(self, options: Mapping[str, Any], *, base_dir: Path) -> list[FileSplit]:
        from odespec.data_contract import npz_infos

        splits = []
        for split, key in _SPLITS:
            p = _present(base_dir, options[key])
            if p is not None:
                infos = npz_infos(p, DataError)
                if any(k in infos for k in SERIES_ONLY) and "x" in infos:
                    # a series file: checked as a whole against the model (no y: the targets are x)
                    splits.append(FileSplit(split, infos["x"], infos.get("y", infos["x"]), arrays=infos, file=str(p)))
                else:
                    splits.append(FileSplit(split, *_xy(p, infos)))
        return splits

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        from odespec.data_contract import npz_infos

        def read(value: str) -> tuple["np.ndarray", "np.ndarray", Optional[dict[str, "np.ndarray"]]]:
            p = _existing(base_dir, value, "data file")
            infos = npz_infos(p, DataError)
            if need.series is not None:
                return fit_series(infos, str(p), need)
            return (*fit_files(*_xy(p, infos), need), None)

        x, y, series = read(options["path"])
        if not options["eval_path"]:
            return LoadedData(x, y, series=series)
        xe, ye, series_eval = read(options["eval_path"])
        return LoadedData(x, y, xe, ye, series=series, series_eval=series_eval)


@register
class Npy(DataSource):
    name = "npy"
    description = "A pair of .npy files: x (inputs, one row per sample) and y (targets)."
    required = ("x", "y")
    properties = {
        "x": _path("The inputs' .npy file."),
        "y": _path("The targets' .npy file."),
        "eval_x": _path("Evaluation inputs (.npy); with eval_y (default: evaluate on the training data)."),
        "eval_y": _path("Evaluation targets (.npy); with eval_x (default: evaluate on the training data)."),
    }
    _PAIRS = (("training", "x", "y"), ("evaluation", "eval_x", "eval_y"))

    @staticmethod
    def _together(options: Mapping[str, Any]) -> None:
        if bool(options["eval_x"]) != bool(options["eval_y"]):
            raise DataError("train.data.npy: give eval_x and eval_y together")

    def inspect(self, options: Mapping[str, Any], *, base_dir: Path) -> list[FileSplit]:
        from odespec.data_contract import npy_info

        self._together(options)
        splits = []
        for split, kx, ky in self._PAIRS:
            px, py = _present(base_dir, options[kx]), _present(base_dir, options[ky])
            if px is not None and py is not None:
                splits.append(FileSplit(split, npy_info(px, DataError), npy_info(py, DataError)))
        return splits

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        from odespec.data_contract import npy_info

        self._together(options)

        def pair(kx: str, ky: str) -> tuple["np.ndarray", "np.ndarray"]:
            # each file is looked for before either is read: an error names only files that exist
            px, py = _existing(base_dir, options[kx], "data file"), _existing(base_dir, options[ky], "data file")
            return fit_files(npy_info(px, DataError), npy_info(py, DataError), need)

        x, y = pair("x", "y")
        xe, ye = pair("eval_x", "eval_y") if options["eval_x"] else (None, None)
        return LoadedData(x, y, xe, ye)


def _csv_split(table: "CsvTable", target: Any) -> tuple["ArrayInfo", "ArrayInfo"]:
    """A CSV's inputs (every column but the target) and targets (the target column), named in
    messages by file and column; every message about them says which column is the target and
    how to choose another."""
    import numpy as np

    from odespec import data_contract as dc

    col, note = dc.csv_target(table, target, DataError)
    where_y = f"{table.path}, target {table.column(col)}"
    data = table.numbers(DataError)
    x, y = np.delete(data, col, axis=1), data[:, col]
    if table.complete:
        return dc.ArrayInfo.of(x, str(table.path), note=note, csv=True), dc.ArrayInfo.of(y, where_y, note=note)
    # the first rows only: the count is unknown, the values are those rows'
    return (dc.ArrayInfo(str(table.path), (-1, *x.shape[1:]), x.dtype, lambda: x, note, csv=True),
            dc.ArrayInfo(where_y, (-1,), y.dtype, lambda: y, note))


def read_csv(path: Path, target: Any) -> tuple["np.ndarray", "np.ndarray"]:
    """Rows = samples. A first row that is not all numbers is a header; ``target`` is a column
    name (needs the header) or index (negative counts from the end). Returns (inputs, targets)."""
    from odespec import data_contract as dc

    x, y = _csv_split(dc.read_csv(path, DataError), target)
    assert x.read is not None and y.read is not None
    return x.read(), y.read()


@register
class Csv(DataSource):
    name = "csv"
    description = ("A CSV file, one sample per row: the target column and the input values (flattened); a first "
                   "row that is not numeric is a header.")
    shorthand = "path"
    required = ("path",)
    properties = {
        "path": _path("The CSV file (relative to the spec's directory)."),
        "target": alternatives(
            {"type": "integer", "minimum": -100_000, "maximum": 100_000, "description": "The target column's index."},
            {"type": "string", "minLength": 1, "description": "The target column's header name."},
            description="The target column: its header name, or its index (negative counts from the end).",
            default=-1),
        "eval_path": _path("A CSV file of evaluation data, same columns (default: evaluate on the training data)."),
    }

    def inspect(self, options: Mapping[str, Any], *, base_dir: Path) -> list[FileSplit]:
        from odespec.data_contract import peek_csv

        splits = []
        for split, key in _SPLITS:
            p = _present(base_dir, options[key])
            if p is not None:
                splits.append(FileSplit(split, *_csv_split(peek_csv(p, DataError), options["target"])))
        return splits

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        from odespec.data_contract import read_csv as read_table

        def read(value: str) -> tuple["np.ndarray", "np.ndarray"]:
            p = _existing(base_dir, value, "data file")
            return fit_files(*_csv_split(read_table(p, DataError), options["target"]), need)

        x, y = read(options["path"])
        xe, ye = read(options["eval_path"]) if options["eval_path"] else (None, None)
        return LoadedData(x, y, xe, ye)


def find_mnist(directory: Path) -> list[Path]:
    """The four MNIST files in ``directory`` (or torchvision's ``directory/MNIST/raw``), each
    plain or .gz; a :class:`DataError` naming every missing file otherwise."""
    places = [directory, directory / "MNIST" / "raw"]
    found: list[Path] = []
    missing: list[str] = []
    for name in MNIST_FILES:
        hit = next((d / (name + ext) for d in places for ext in ("", ".gz") if (d / (name + ext)).is_file()), None)
        if hit is None:
            missing.append(name)
        else:
            found.append(hit)
    if missing:
        raise DataError(
            f"MNIST files missing in {directory}: {', '.join(m + '[.gz]' for m in missing)}",
            "put the four IDX files " + ", ".join(MNIST_FILES) + " (optionally .gz) in that directory "
            "(or its MNIST/raw/); odespec never downloads data. " + _PATH_HINT,
        )
    return found


@register
class Mnist(DataSource):
    name = "mnist"
    description = ("MNIST from the four IDX files (train-images-idx3-ubyte, ..., optionally .gz) in a local "
                   "directory; pixels scaled to [0, 1]; the 10,000 test images are the evaluation set; "
                   "optionally randomly cropped training images.")
    shorthand = "dir"
    required = ("dir",)
    properties = {
        "dir": _path("Directory holding the IDX files (relative to the spec's directory)."),
        "eval": {"type": "boolean", "default": True,
                 "description": "Evaluate on the test files (false: on the training images)."},
        "random_crop": {
            "type": "object",
            "description": "Random-crop augmentation of the training images, as torchdiffeq's odenet_mnist.py "
                           "(torchvision's RandomCrop(28, padding=4)): each image of a training batch is padded "
                           "with `padding` zero pixels on every side and a 28x28 window is cut out at a random "
                           "offset. Drawn from train.seed and the iteration (a resumed run sees the same "
                           "batches); evaluation images are never cropped. Default: no augmentation.",
            "properties": {
                "padding": {"type": "integer", "minimum": 0, "maximum": MAX_CROP_PADDING,
                            "description": "Zero pixels added on each side before cropping (torchdiffeq: 4; "
                                           "0: images unchanged)."},
            },
            "required": ["padding"],
            "additionalProperties": False,
        },
    }

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(1, 28, 28), classes=10)

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        directory = resolve_path(base_dir, options["dir"])
        paths = find_mnist(directory)
        arrays = [read_idx(p) for p in paths]
        for (images, labels), split in ((arrays[0:2], "training"), (arrays[2:4], "test")):
            if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"the MNIST {split} files do not fit: images {fmt_shape(images.shape)}, labels "
                                f"{fmt_shape(labels.shape)} (want (N, 28, 28) and (N,))")
        x, y = fit(arrays[0], arrays[1], need, (str(paths[0]), str(paths[1])))
        crop = options.get("random_crop") or {}
        augment = RandomCrop(crop["padding"]) if crop.get("padding") else None
        # pixels stay uint8 in memory (47 MB instead of 188 MB) and are scaled per batch
        if not options["eval"]:
            return LoadedData(x, y, x_scale=1 / 255, augment=augment)
        xe, ye = fit(arrays[2], arrays[3], need, (str(paths[2]), str(paths[3])))
        return LoadedData(x, y, xe, ye, x_scale=1 / 255, augment=augment)
