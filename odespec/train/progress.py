"""The training progress display on stderr.

On a terminal: one line rewritten in place (at most ten times a second, and at every
evaluation), so a long run does not scroll. Elsewhere (a log file, CI): a plain line every
``every`` steps and at every evaluation, which reads well in a log.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Optional, TextIO

__all__ = ["Progress", "format_line"]


def _g(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def format_line(rec: Mapping[str, Any], total: int, rate: Optional[float]) -> str:
    """``it 120/2000  loss 0.0312  eval_loss 0.0298  nfe 26/0  lr 0.001  41.2 it/s``."""
    parts = [f"it {rec['iteration']}/{total}", f"loss {_g(rec['loss'])}"]
    parts += [f"{k} {_g(v)}" for k, v in rec.items() if k.startswith("eval_")]
    nfe = f"nfe {rec.get('nfe_forward', 0)}"
    if rec.get("nfe_backward") is not None:
        nfe += f"/{rec['nfe_backward']}"
    parts += [nfe, f"lr {rec['lr']:.3g}"]
    if rate is not None:
        parts.append(f"{rate:.1f} it/s")
    return "  ".join(parts)


class Progress:
    """Shows training records; ``enabled=False`` shows nothing."""

    def __init__(self, total: int, *, every: int, stream: Optional[TextIO] = None, tty: Optional[bool] = None,
                 enabled: bool = True):
        self.total = total
        self.every = max(1, every)
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.enabled = enabled
        self._last_time = time.perf_counter()
        self._last_step: Optional[int] = None
        self._last_draw = 0.0
        self._width = 0

    def _rate(self, step: int) -> Optional[float]:
        now = time.perf_counter()
        rate = None
        if self._last_step is not None and step > self._last_step and now > self._last_time:
            rate = (step - self._last_step) / (now - self._last_time)
        self._last_time, self._last_step = now, step
        return rate

    def update(self, rec: Mapping[str, Any], *, force: bool = False) -> None:
        """Show the record of a finished iteration if it is time to (``force``: always)."""
        if not self.enabled:
            return
        step = rec["iteration"]
        evaluated = any(k.startswith("eval_") for k in rec)
        if self.tty:
            now = time.perf_counter()
            if not (force or evaluated or now - self._last_draw >= 0.1 or step == self.total):
                return
            self._last_draw = now
            line = format_line(rec, self.total, self._rate(step))
            pad = max(0, self._width - len(line))
            self._width = len(line)
            self.stream.write("\r" + line + " " * pad)
        else:
            if not (force or evaluated or step % self.every == 0 or step == self.total):
                return
            self.stream.write(format_line(rec, self.total, self._rate(step)) + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (the in-place line, if any, is ended first)."""
        if not self.enabled:
            return
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the in-place line."""
        if self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
