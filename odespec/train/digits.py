"""The ``digits`` data source: scikit-learn's bundled handwritten digits, shipped inside odespec.

1,797 grey-scale images of 8x8 pixels (values 0..16) of the digits 0..9, about 180 of each: the
test part of the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin and
C. Kaynak, 1998; https://archive.ics.uci.edu/dataset/80, CC BY 4.0), as scikit-learn
redistributes it (``sklearn.datasets.load_digits``). ``odespec/data/digits.npz`` holds them
(``images`` (1797, 8, 8) uint8, ``labels`` (1797,) uint8), written once by
``benchmarks/make_digits.py``: nothing downloads, and scikit-learn is not a dependency.

A real-data classification task small enough to train convolutional ODE-Nets on two CPU cores
in minutes (issue #16: the paper's MNIST comparison, scaled down). The evaluation split is a
stratified random fraction of each class, drawn from the ``split_seed`` option (not
``train.seed``: runs with different seeds are evaluated on the same images).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from odespec.train.data import DataShapes, DataSource, LoadedData, Need, register
from odespec.train.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["Digits", "digits", "digits_split", "DIGITS_FILE"]

#: the shipped file, relative to the package
DIGITS_FILE = "data/digits.npz"
#: pixel values are 0..16: scaled to [0, 1] per batch
_PIXEL_MAX = 16


def digits() -> tuple["np.ndarray", "np.ndarray"]:
    """The shipped digits: images (1797, 8, 8) uint8 in 0..16 and labels (1797,) int64."""
    import numpy as np

    ref = resources.files("odespec").joinpath(DIGITS_FILE)
    try:
        with ref.open("rb") as f, np.load(f) as z:
            return z["images"], z["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"odespec's shipped digits ({DIGITS_FILE}) cannot be read: {e}",
                        "reinstall odespec; benchmarks/make_digits.py writes the file in a checkout") from e


def digits_split(labels: "np.ndarray", eval_fraction: float, seed: Any) -> tuple["np.ndarray", "np.ndarray"]:
    """Indices (training, evaluation): ``round(eval_fraction * n_c)`` random images of each
    class c for evaluation (stratified, so every class is evaluated in proportion), the rest
    for training; each sorted. Drawn from ``seed`` only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: int(round(eval_fraction * len(idx)))])
    evaluation = np.sort(np.concatenate(held))
    training = np.setdiff1d(np.arange(len(labels)), evaluation)
    return training, evaluation


@register
class Digits(DataSource):
    name = "digits"
    description = ("scikit-learn's handwritten digits, shipped with odespec (nothing downloads): 1,797 images "
                   "of 8x8 pixels, 10 classes (the UCI optdigits test set, CC BY 4.0). Pixels scaled to [0, 1]; "
                   "a stratified `eval_fraction` of each class, drawn from `split_seed`, is the evaluation set.")
    properties = {
        "eval_fraction": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.2,
                          "description": "Fraction of each class held out for evaluation (0: evaluate on the "
                                         "training images)."},
        "split_seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1, "default": 0,
                       "description": "Seed of the evaluation split (independent of train.seed, so that runs "
                                      "with different seeds are evaluated on the same images)."},
        "shape": {"enum": ["image", "flat"], "default": "image",
                  "description": "image: inputs (1, 8, 8) for convolutions; flat: inputs (64,)."},
    }

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(1, 8, 8) if options["shape"] == "image" else (64,), classes=10)

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        from odespec.train.files import fit

        images, labels = digits()
        x = images.reshape((len(images), *self.shapes(options).input))
        where = f"odespec's digits ({DIGITS_FILE})"
        if options["eval_fraction"] == 0:
            return LoadedData(*fit(x, labels, need, where), x_scale=1 / _PIXEL_MAX)
        train, held = digits_split(labels, options["eval_fraction"], options["split_seed"])
        xt, yt = fit(x[train], labels[train], need, where)
        xe, ye = fit(x[held], labels[held], need, where)
        return LoadedData(xt, yt, xe, ye, x_scale=1 / _PIXEL_MAX)
