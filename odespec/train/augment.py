"""Augmentations of training batches (:class:`~odespec.train.data.Augmentation`).

The batcher draws a batch's random parameters from a generator seeded with the run's seed and
the iteration, so an augmented batch is, like the batch itself, a pure function of the iteration:
a resumed run sees exactly the batches of the uninterrupted one, and data-parallel processes cut
their shares out of the same augmented global batch. Transforms are torch ops on whole batches.

Imports neither torch nor numpy at import time (the MNIST source, which the validator imports,
names :class:`RandomCrop`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from odespec.train.data import Augmentation

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["RandomCrop"]


class RandomCrop(Augmentation):
    """torchvision's ``RandomCrop(size, padding=p)`` with the size of the input, on whole
    batches: every image (the last two axes) is padded with ``p`` zero pixels on each side and a
    window of its own size is cut out at a random offset, drawn per sample uniformly from
    ``0 .. 2p`` along each axis (the same for all channels). So each crop is a copy of the image
    shifted by ``offset - p`` pixels, with zeros shifted in."""

    def __init__(self, padding: int):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def draw(self, n: int, rng: "np.random.Generator") -> "np.ndarray":
        """(n, 2) offsets (top, left) into the padded images, each in 0 .. 2 * padding."""
        import numpy as np

        return rng.integers(0, 2 * self.padding + 1, size=(n, 2), dtype=np.int64)

    def apply(self, x: "torch.Tensor", params: "torch.Tensor") -> "torch.Tensor":
        """Crops of ``x`` (samples first, images in the last two axes) at ``params``' offsets."""
        import torch
        import torch.nn.functional as F

        p = self.padding
        if p == 0:
            return x
        if x.ndim < 3:
            raise ValueError(f"random crops take images (samples, ..., height, width); got shape {tuple(x.shape)}")
        n, (h, w) = x.shape[0], x.shape[-2:]
        # channels and any other middle axes as one, so that two gathers do every sample at once
        padded = F.pad(x.reshape(n, -1, h, w), (p, p, p, p))
        m = padded.shape[1]
        offsets = params.to(device=x.device, dtype=torch.int64)
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (n, h): padded rows to keep
        cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (n, w)
        out = padded.gather(2, rows[:, None, :, None].expand(n, m, h, w + 2 * p))
        out = out.gather(3, cols[:, None, None, :].expand(n, m, h, w))
        return out.reshape(x.shape)
