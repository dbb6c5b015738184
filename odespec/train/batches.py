"""Batches from loaded arrays, as a pure function of the step number.

The training samples form one endless stream: epoch e is a permutation of the samples drawn
from a generator seeded by (seed, e), and step k takes stream positions k*B .. k*B+B-1 (a batch
may span two epochs; none is ever short). So the data cursor of a checkpoint is just the step
count, and a resumed run draws exactly the batches the uninterrupted run would have drawn. A
source's augmentation (MNIST's random crops) is drawn from a generator seeded by (seed, step),
so augmented batches are a function of the step too.

A batch is a :class:`Batch`: inputs, targets, the model's other inputs (an irregular series'
``times``, ``mask``, ``query_times``, cut with the same rows) and the targets' mask. Times and
masks are in the model's dtype (masks as 0 and 1).
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional, Union

import numpy as np
import torch

from odespec.data_contract import check_batch_size, check_range
from odespec.train.data import LoadedData
from odespec.train.errors import DataError

__all__ = ["Batches", "Batch", "EVAL_CHUNK", "TARGET_MASK"]

#: evaluation runs in chunks of at least this many samples (it needs no gradients)
EVAL_CHUNK = 1024
# seeds (seed, 0) and (seed, 1) make the generated data; (seed, 2, epoch) the order; (seed, 3, step)
# the augmentation of step's batch
_STREAM = 2
_AUGMENT = 3
#: the name of the targets' mask among a source's series arrays (the others are model inputs)
TARGET_MASK = "y_mask"


class Batch(NamedTuple):
    """One training batch or evaluation chunk, on the device."""

    #: inputs (samples first), in the model's dtype
    x: torch.Tensor
    #: targets: values in the model's dtype, or class labels (int64)
    y: torch.Tensor
    #: the model's other inputs by keyword (``times``, ``mask``, ``query_times``: those it reads);
    #: empty for a model that reads only ``x``
    inputs: dict[str, torch.Tensor]
    #: 1 where a target was observed, 0 where it is missing or padding; None: every target counts
    y_mask: Optional[torch.Tensor]


class Batches:
    """Training batches and evaluation chunks on a device, in the model's dtype."""

    def __init__(self, data: LoadedData, batch_size: int, *, seed: int, device: torch.device, dtype: torch.dtype,
                 labels: bool):
        self.n = len(data.x)
        check_batch_size(batch_size, self.n, DataError)
        # the files were checked when read; what they cannot know is the model's dtype
        np_dtype = np.dtype(np.float64 if dtype == torch.float64 else np.float32)
        series, series_eval = data.series or {}, data.series_eval
        if data.x_eval is not None and data.series is not None and series_eval is None:
            raise DataError("the data source gave evaluation series without their times and masks",
                            "a series source gives series_eval beside x_eval")
        for array, what in ((data.x, "training inputs"), (data.y, "training targets"),
                            (data.x_eval, "evaluation inputs"), (data.y_eval, "evaluation targets"),
                            *((a, f"training {k}") for k, a in series.items()),
                            *((a, f"evaluation {k}") for k, a in (series_eval or {}).items())):
            if array is not None:
                check_range(array, np_dtype, f"the {what}", DataError)
        self.batch_size = batch_size
        self.seed = seed
        self.dtype = dtype
        self.scale = data.x_scale
        self.augment = data.augment
        self.x = self._inputs(data.x, device)
        self.y = self._targets(data.y, device, labels)
        self.has_eval = data.x_eval is not None
        self.x_eval = self._inputs(data.x_eval, device) if data.x_eval is not None else self.x
        self.y_eval = self._targets(data.y_eval, device, labels) if data.y_eval is not None else self.y
        self.series = {k: self._series(a, device) for k, a in series.items()}
        self.series_eval = ({k: self._series(a, device) for k, a in series_eval.items()}
                            if series_eval is not None else self.series)
        self._perms: dict[int, np.ndarray] = {}

    def _inputs(self, x: np.ndarray, device: torch.device) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        # scaled inputs (MNIST's uint8 pixels) are converted per batch, to keep memory small
        return t.to(device) if self.scale is not None else t.to(device=device, dtype=self.dtype)

    def _targets(self, y: np.ndarray, device: torch.device, labels: bool) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(y))
        return t.to(device=device, dtype=torch.int64 if labels else self.dtype)

    def _series(self, a: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=self.dtype)

    @staticmethod
    def _make(x: torch.Tensor, y: torch.Tensor, series: dict[str, torch.Tensor], rows: Union[torch.Tensor, slice]) -> Batch:
        """A :class:`Batch` of ``x``/``y`` with the series arrays' ``rows`` (an index or a slice)."""
        cut = {k: v[rows] for k, v in series.items()}
        return Batch(x, y, {k: v for k, v in cut.items() if k != TARGET_MASK}, cut.get(TARGET_MASK))

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.scale is None else x.to(self.dtype) * self.scale

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of ``epoch`` (the last two are cached)."""
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, _STREAM, epoch]).permutation(self.n)
        return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Sample indices of the batch of step ``step`` (0-based)."""
        start = step * self.batch_size
        out = np.empty(self.batch_size, dtype=np.int64)
        filled = 0
        while filled < self.batch_size:
            epoch, pos = divmod(start + filled, self.n)
            take = min(self.batch_size - filled, self.n - pos)
            out[filled:filled + take] = self.permutation(epoch)[pos:pos + take]
            filled += take
        return out

    def batch(self, step: int, shard: Optional[tuple[int, int]] = None) -> Batch:
        """The batch of step ``step``, augmented if the source says so; ``shard = (start,
        stop)``: only those rows of the batch (a data-parallel rank's share)."""
        rows = self.indices(step)
        params = None
        if self.augment is not None:
            # drawn for the whole global batch, so that every shard cuts its rows from the same batch
            params = self.augment.draw(len(rows), np.random.default_rng([self.seed, _AUGMENT, step]))
        if shard is not None:
            rows = rows[shard[0]:shard[1]]
            params = params[shard[0]:shard[1]] if params is not None else None
        idx = torch.from_numpy(rows).to(self.x.device)
        x = self._convert(self.x[idx])
        if params is not None:
            assert self.augment is not None
            x = self.augment.apply(x, torch.from_numpy(np.ascontiguousarray(params)).to(x.device))
        return self._make(x, self.y[idx], self.series, idx)

    def cursor(self, steps_done: int) -> dict[str, int]:
        """Where the stream stands after ``steps_done`` steps (recorded in checkpoints)."""
        seen = steps_done * self.batch_size
        return {"samples_seen": seen, "epoch": seen // self.n, "position": seen % self.n}

    def steps_for_epochs(self, epochs: int) -> int:
        """Steps that cover ``epochs`` passes over the training data (the last may be partial)."""
        return -(-epochs * self.n // self.batch_size)

    def eval_chunks(self, chunk: Optional[int] = None) -> Iterator[Batch]:
        """The evaluation set (the training set when the source has none), in order, never
        augmented."""
        size = chunk or max(self.batch_size, EVAL_CHUNK)
        for s in range(0, len(self.x_eval), size):
            rows = slice(s, s + size)
            yield self._make(self._convert(self.x_eval[rows]), self.y_eval[rows], self.series_eval, rows)
