"""A reader for IDX files, the format the MNIST files come in (optionally gzip-compressed).

The header says the element type and the dimensions; the reader checks that the data are all
there before making an array, and reads no more than the header promises (a gzip bomb is not
decompressed past that).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from odespec.train.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["read_idx", "write_idx", "MAX_IDX_BYTES"]

#: a larger file is refused (MNIST's training images are 47 MB)
MAX_IDX_BYTES = 2_000_000_000
# IDX type code -> big-endian numpy dtype
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> "np.ndarray":
    """The array an IDX file holds (native byte order). Raises :class:`DataError` if the file is
    not IDX, is truncated, or is not valid gzip."""
    import numpy as np

    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _TYPES or head[3] == 0:
                raise DataError(f"{path} is not an IDX file (its first 4 bytes are not an IDX magic number)",
                                "MNIST files are the IDX files train-images-idx3-ubyte etc., optionally .gz")
            dtype = np.dtype(_TYPES[head[2]])
            raw_dims = f.read(4 * head[3])
            if len(raw_dims) != 4 * head[3]:
                raise DataError(f"{path} is truncated (its header ends early)")
            dims = struct.unpack(">" + "I" * head[3], raw_dims)
            size = math.prod(dims) * dtype.itemsize
            if size > MAX_IDX_BYTES:
                raise DataError(f"{path} declares {size:,} bytes of data; the limit is {MAX_IDX_BYTES:,}")
            data = f.read(size)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {e}") from None
    if len(data) != size:
        raise DataError(f"{path} is truncated: its header promises {size:,} bytes of data, it has {len(data):,}")
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: Path, array: "np.ndarray") -> None:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in .gz); for tests and
    for making small data sets."""
    import numpy as np

    codes = {np.dtype(v).newbyteorder("="): k for k, v in _TYPES.items()}
    code = codes[array.dtype.newbyteorder("=")]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    body = array.astype(np.dtype(_TYPES[code])).tobytes()
    data = head + body
    from odespec.fileio import atomic_write_bytes

    atomic_write_bytes(path, gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
