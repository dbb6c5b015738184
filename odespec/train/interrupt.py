"""Ctrl-C during training: stop at a consistent state, never in the middle of an update.

While an :class:`InterruptGuard` is installed, a SIGINT is held back everywhere except inside
:meth:`InterruptGuard.interruptible` blocks, which the loop puts around the work that changes no
state it keeps: the forward and backward passes, the evaluation's forward passes, the user's
callbacks. There it raises KeyboardInterrupt at once, so a long solve stops promptly; anywhere
else (the optimizer step, the counters, the metrics, the best weights, a checkpoint, entering and
leaving ``torch.no_grad`` or an RNG fork) it waits for the next interruptible block, which it
stops on entry.

Holding back by default, rather than around the updates only, leaves no gap between two held-back
regions: CPython runs a Python signal handler in the main thread at the next bytecode boundary it
checks, which may be any instruction between two statements, inside a context manager's
``__enter__`` or ``__exit__``, or (for a signal that arrived during C code) wherever that code
returns to Python.

Python runs signal handlers in the main thread alone (whichever thread the signal reaches), so
the handler is installed only there; in another thread the guard installs nothing and training
runs to the end. It is installed even
when SIGINT was ignored at startup (a background job of a shell script inherits that), so that
``kill -INT`` stops such a run with a checkpoint too; the previous handler is put back on exit.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Iterator, Optional

__all__ = ["InterruptGuard"]


class InterruptGuard:
    """A context manager installing the SIGINT handler that holds Ctrl-C back outside
    :meth:`interruptible` blocks; restores the previous handler on exit.

    A Ctrl-C still held back when the guarded block ends normally is passed on to that previous
    handler (a KeyboardInterrupt, by default): it is never lost. When the block ends with an
    exception, the run is stopping already and the Ctrl-C is dropped."""

    def __init__(self) -> None:
        #: inside an interruptible block (and not inside a deferred one within it)
        self._prompt = False
        self._pending = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, et: Optional[type], ev: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if not self._installed:
            return
        # None: the previous handler was not set from Python and cannot be put back; the default
        # disposition is the nearest one
        signal.signal(signal.SIGINT, signal.SIG_DFL if self._previous is None else self._previous)
        self._installed = False
        pending, self._pending = self._pending, False
        if pending and et is None:
            signal.raise_signal(signal.SIGINT)  # to the previous handler, now installed again

    def _handler(self, signum: int, frame: Optional[FrameType]) -> None:
        if not self._prompt:
            self._pending = True
            return
        # one KeyboardInterrupt: whatever runs while it unwinds (context managers' __exit__, the
        # interruption's checkpoint) is held back, a second Ctrl-C included
        self._prompt = False
        raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Let Ctrl-C stop the block at once (KeyboardInterrupt). One held back before the block
        stops it on entry, before anything in it runs."""
        if self._pending:
            self._pending = False
            raise KeyboardInterrupt
        outer, self._prompt = self._prompt, True
        try:
            yield
        finally:
            self._prompt = outer

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold Ctrl-C back inside an interruptible block until this block has finished; then
        raise KeyboardInterrupt, unless the block raised an exception (which then stops the run)."""
        outer, self._prompt = self._prompt, False
        try:
            yield
        finally:
            self._prompt = outer
        if outer and self._pending:
            self._pending = False
            raise KeyboardInterrupt
