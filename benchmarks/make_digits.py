"""Write ``odespec/data/digits.npz``, the handwritten digits the ``digits`` data source ships.

The data are scikit-learn's bundled digits (``sklearn.datasets.load_digits``): 1,797 images
of 8x8 pixels with values 0..16 and their labels 0..9. They are the test part of the UCI
"Optical Recognition of Handwritten Digits" data set (E. Alpaydin and C. Kaynak, 1998;
https://archive.ics.uci.edu/dataset/80, licensed CC BY 4.0), which scikit-learn redistributes
as ``sklearn/datasets/data/digits.csv.gz`` (64 pixel columns, then the label).

odespec does not depend on scikit-learn: this script reads that CSV once, from an installed
scikit-learn or from a scikit-learn wheel (a zip), e.g.::

    pip download --no-deps scikit-learn -d /tmp/skl
    python benchmarks/make_digits.py --wheel /tmp/skl/scikit_learn-*.whl

and writes images (1797, 8, 8) uint8 and labels (1797,) uint8, compressed (~30 kB).
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

CSV = "sklearn/datasets/data/digits.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "odespec" / "data" / "digits.npz"


def read_csv(wheel: Path | None) -> bytes:
    """The gzipped CSV's bytes, from the wheel or the installed scikit-learn."""
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            return z.read(CSV)
    import sklearn  # noqa: PLC0415  (only for generating)

    return (Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz").read_bytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, help="a scikit-learn wheel to read the CSV from")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    table = np.loadtxt(io.BytesIO(gzip.decompress(read_csv(args.wheel))), delimiter=",", dtype=np.int64)
    assert table.shape == (1797, 65) and table[:, :64].max() <= 16 and set(table[:, 64]) == set(range(10))
    images = table[:, :64].reshape(-1, 8, 8).astype(np.uint8)
    labels = table[:, 64].astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    print(f"{args.out}: {len(images)} images, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
