"""Ctrl-C during training: stop at a consistent state, never in the middle of an update.

Inside :meth:`InterruptGuard.deferred` (the optimizer step and its bookkeeping) a SIGINT is held
back and raised as KeyboardInterrupt when the block ends; elsewhere (the forward and backward
passes, which change no weight) it raises at once, as usual, so a long solve stops promptly.
The handler is installed only in the main thread (Python delivers signals there alone).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Iterator, Optional

__all__ = ["InterruptGuard"]


class InterruptGuard:
    """A context manager installing the SIGINT handler; restores the previous one on exit."""

    def __init__(self) -> None:
        self._depth = 0
        self._pending = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, et: Optional[type], ev: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold Ctrl-C back until the block has finished (then raise KeyboardInterrupt)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self._pending:
            self._pending = False
            raise KeyboardInterrupt
