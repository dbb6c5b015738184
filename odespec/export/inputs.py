"""The inputs an export is checked on: seeded random batches, or samples read from a data file.

The parity check (:mod:`odespec.export.parity`) feeds the seeded batches; the deployment error
and calibration (:mod:`odespec.export.metrics`, :mod:`odespec.export.calibrate`) measure on the
same ones unless a calibration data file replaces them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch

from odespec.errors import InputFileError

__all__ = ["SEEDED_BATCHES", "InputSet", "model_dtype", "seeded_inputs", "seeded_input_set", "data_input_set"]

#: batch sizes of the seeded inputs, hence of the parity check of a graph with a dynamic batch
SEEDED_BATCHES: tuple[int, ...] = (1, 7, 256)


@dataclass(frozen=True)
class InputSet:
    """The inputs accuracy is measured on, in batches, and how to describe them in a report."""

    batches: tuple[torch.Tensor, ...]
    description: str

    @property
    def samples(self) -> int:
        """Samples over all batches."""
        return sum(int(b.shape[0]) for b in self.batches)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model``'s inputs: its parameters' (float32 for a model without any)."""
    param = next(model.parameters(), None)
    return param.dtype if param is not None else torch.float32


def seeded_inputs(input_shape: Sequence[int], *, dtype: torch.dtype, batch_sizes: Sequence[int] = SEEDED_BATCHES,
                  seed: int = 0) -> list[torch.Tensor]:
    """Standard-normal input batches drawn from ``seed`` (in float64, then cast, so that both
    dtypes see the same values): the inputs of the parity check and of the deployment error."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((b, *input_shape), generator=gen, dtype=torch.float64).to(dtype) for b in batch_sizes]


def seeded_input_set(input_shape: Sequence[int], *, dtype: torch.dtype, seed: int,
                     batch_sizes: Sequence[int] = SEEDED_BATCHES) -> InputSet:
    """Standard-normal inputs from ``seed``: the very batches the parity check feeds."""
    batches = seeded_inputs(input_shape, dtype=dtype, batch_sizes=batch_sizes, seed=seed)
    return InputSet(tuple(batches), f"seeded random (seed {seed}), batches {', '.join(map(str, batch_sizes))}")


def data_input_set(path: Union[str, "os.PathLike[str]"], input_shape: Sequence[int], *, dtype: torch.dtype,
                   batch_size: int = 256) -> InputSet:
    """Inputs read from a ``.npy``, ``.npz`` or ``.csv`` file by ``odespec run``'s readers
    (rows = samples), split into batches of ``batch_size``."""
    from odespec.export.onnx_export import INPUT_NAME
    from odespec.export.run import ModelInput, load_input

    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = load_input(path, ModelInput(INPUT_NAME, ("batch", *input_shape), np.dtype(np_dtype)))
    if x.shape[0] == 0:
        raise InputFileError(f"{path}: holds no samples")
    t = torch.from_numpy(np.ascontiguousarray(x))
    batches = tuple(t[i:i + batch_size] for i in range(0, t.shape[0], batch_size))
    # the file's name only: reports and ONNX metadata must not carry machine paths
    return InputSet(batches, f"{Path(path).name} ({t.shape[0]} samples)")
