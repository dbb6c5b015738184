"""matplotlib, imported on demand, and PNG files written atomically.

Figures are made with ``matplotlib.figure.Figure`` and drawn by the Agg canvas directly: no
pyplot, so no global backend or figure registry is touched (plotting works without a display
and inside other programs).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from odespec.fileio import atomic_write_bytes
from odespec.train.errors import TrainError

__all__ = ["PlotUnavailable", "require_matplotlib", "figure", "save_png", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'odespec[plot]'"


class PlotUnavailable(TrainError):
    """matplotlib is not installed (an environment problem: exit code 2)."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable`, naming the install command, if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("odespec plot needs matplotlib, which is not installed",
                              f"install it with: {INSTALL_HINT}") from None


def figure(width: float = 6.4, height: float = 4.8) -> Any:
    """A new figure (inches)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_png(fig: Any, path: Path, dpi: int = 120) -> Path:
    """Render ``fig`` as PNG and write it atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return atomic_write_bytes(path, buf.getvalue())
