"""Data sources read from the user's files: ``npz`` (arrays ``x`` and ``y``), ``npy`` (a pair of
files), ``csv`` (a target column) and ``mnist`` (the IDX files in a directory; nothing is
downloaded). Relative paths are relative to the spec's directory.

Arrays are read without pickle (``allow_pickle=False``). Whether targets are class labels or
values follows the loss (cross_entropy: labels); :func:`fit` checks them against the model.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from odespec.components import alternatives
from odespec.layers.base import fmt_shape
from odespec.train.augment import RandomCrop
from odespec.train.data import DataShapes, DataSource, LoadedData, Need, register, resolve_path
from odespec.train.errors import DataError
from odespec.train.idx import read_idx
from odespec.fileio import is_number

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["fit", "MNIST_FILES"]

#: (training images, training labels, test images, test labels), each also accepted with .gz
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: a larger padding could crop an image to nothing but zeros
MAX_CROP_PADDING = 27
_PATH_HINT = "relative paths in train.data are relative to the spec file's directory"


def _path(description: str) -> dict:
    """A file or directory name; an optional one has no default (its description says what
    happens without it)."""
    return {"type": "string", "minLength": 1, "maxLength": 4096, "description": description}


def _existing(base_dir: Path, value: str, what: str) -> Path:
    p = resolve_path(base_dir, value)
    if not p.is_file():
        raise DataError(f"{what} {value!r} not found (looked for {p})", _PATH_HINT)
    return p


def _npy(path: Path) -> "np.ndarray":
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy array: {e}",
                        "save plain numeric arrays with numpy.save (object arrays need pickle, which is refused)") from None


def fit(x: "np.ndarray", y: "np.ndarray", need: Need, where: str) -> tuple["np.ndarray", "np.ndarray"]:
    """Check arrays against the model and shape them: x to (n, *input_shape); y to class labels
    (n,) int64 for cross_entropy, else to (n, *output_shape). ``where`` names the data in
    messages."""
    import numpy as np

    if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
        raise DataError(f"{where}: inputs and targets must be numeric arrays, got {x.dtype} and {y.dtype}")
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise DataError(f"{where}: inputs and targets need one row per sample; got shapes {fmt_shape(x.shape)} "
                        f"and {fmt_shape(y.shape)}")
    n, per = len(x), math.prod(need.input_shape)
    if n == 0:
        raise DataError(f"{where}: no samples")
    if x[0].size != per:
        raise DataError(f"{where}: a sample has {x[0].size} input values (shape {fmt_shape(x.shape[1:])}); the model's "
                        f"input {fmt_shape(need.input_shape)} takes {per}")
    x = x.reshape((n,) + need.input_shape)
    if need.labels:
        classes = need.output_shape[0] if len(need.output_shape) == 1 else 0
        labels = y.reshape(n, -1)
        if labels.shape[1] != 1:
            raise DataError(f"{where}: cross_entropy takes one class label per sample; targets have shape "
                            f"{fmt_shape(y.shape)}")
        labels = labels[:, 0]
        if labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels))):
            raise DataError(f"{where}: class labels must be whole numbers", "or use loss mse/l1 for values")
        labels = labels.astype(np.int64)
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            raise DataError(f"{where}: class label {int(labels[bad][0])} is outside 0..{classes - 1} "
                            f"(the model outputs {classes} class scores)")
        return x, labels
    if y[0].size != math.prod(need.output_shape):
        raise DataError(f"{where}: a target has {y[0].size} values (shape {fmt_shape(y.shape[1:])}); the model's "
                        f"output {fmt_shape(need.output_shape)} has {math.prod(need.output_shape)}")
    return x, y.reshape((n,) + need.output_shape).astype(np.float64)


@register
class Npz(DataSource):
    name = "npz"
    description = "A .npz file with arrays x (inputs, one row per sample) and y (targets)."
    shorthand = "path"
    required = ("path",)
    properties = {
        "path": _path("The .npz file (relative to the spec's directory)."),
        "eval_path": _path("A .npz file of evaluation data (default: evaluate on the training data)."),
    }

    def _read(self, base_dir: Path, value: str, need: Need) -> tuple["np.ndarray", "np.ndarray"]:
        import numpy as np

        p = _existing(base_dir, value, "data file")
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in ("x", "y") if k not in z.files]
                if missing:
                    raise DataError(f"{p} has no array {' or '.join(map(repr, missing))} (it has: "
                                    f"{', '.join(z.files) or 'none'})", "save with numpy.savez(FILE, x=inputs, y=targets)")
                x, y = z["x"], z["y"]
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"cannot read {p} as .npz: {e}") from None
        return fit(x, y, need, str(p))

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        x, y = self._read(base_dir, options["path"], need)
        xe, ye = self._read(base_dir, options["eval_path"], need) if options["eval_path"] else (None, None)
        return LoadedData(x, y, xe, ye)


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

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        def pair(kx: str, ky: str) -> tuple["np.ndarray", "np.ndarray"]:
            px, py = _existing(base_dir, options[kx], "data file"), _existing(base_dir, options[ky], "data file")
            return fit(_npy(px), _npy(py), need, f"{px} and {py}")

        x, y = pair("x", "y")
        if bool(options["eval_x"]) != bool(options["eval_y"]):
            raise DataError("train.data.npy: give eval_x and eval_y together")
        xe, ye = pair("eval_x", "eval_y") if options["eval_x"] else (None, None)
        return LoadedData(x, y, xe, ye)


def read_csv(path: Path, target: Any) -> tuple["np.ndarray", "np.ndarray"]:
    """Rows = samples. A first row that is not all numbers is a header; ``target`` is a column
    name (needs the header) or index (negative counts from the end). Returns (inputs, targets)."""
    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as CSV: {e}") from None
    header: Optional[list[str]] = None
    if rows and not all(is_number(c) for c in rows[0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} has no data rows")
    width = len(rows[0])
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} columns, the first has {width}")
    if isinstance(target, str):
        if header is None or target not in header:
            known = f"its columns: {', '.join(header)}" if header else "it has no header row"
            raise DataError(f"{path}: no column named {target!r} ({known})", "name the target column, or give its index")
        col = header.index(target)
    else:
        if not -width <= target < width:
            raise DataError(f"{path}: target column {target} does not exist ({width} columns)")
        col = target % width
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise DataError(f"{path}: every cell must be a number ({e})") from None
    return np.delete(table, col, axis=1), table[:, col]


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

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        p = _existing(base_dir, options["path"], "data file")
        x, y = fit(*read_csv(p, options["target"]), need, str(p))
        if not options["eval_path"]:
            return LoadedData(x, y)
        pe = _existing(base_dir, options["eval_path"], "data file")
        xe, ye = fit(*read_csv(pe, options["target"]), need, str(pe))
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
        x, y = fit(arrays[0][:, None], arrays[1], need, str(paths[0]))
        crop = options.get("random_crop") or {}
        augment = RandomCrop(crop["padding"]) if crop.get("padding") else None
        # pixels stay uint8 in memory (47 MB instead of 188 MB) and are scaled per batch
        if not options["eval"]:
            return LoadedData(x, y, x_scale=1 / 255, augment=augment)
        xe, ye = fit(arrays[2][:, None], arrays[3], need, str(paths[2]))
        return LoadedData(x, y, xe, ye, x_scale=1 / 255, augment=augment)
