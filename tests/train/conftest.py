"""Shared settings of the training tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """The training tests' models are tiny: intra-op threads only add overhead, and on a busy
    2-core machine oversubscription made them 3x slower. Restored afterwards for other tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
