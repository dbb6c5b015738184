"""odespec: a declarative compiler for neural ODE networks.

YAML spec -> validated, frozen spec objects -> PyTorch ODE-Net -> fixed-step ONNX graph.

The heavy parts (torch) are imported lazily so that ``odespec validate`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "load_spec", "build", "export_onnx", "OdespecError"]

from odespec.errors import OdespecError
from odespec.spec import load_spec

# Registers the spec's `train:` section with odespec.spec.sections. Here, in the package every
# caller imports first (CLI, api, `from odespec.spec import load_spec`), because spec/ must not
# import train/; the module is small and torch-free, its schema and checks load on first use.
from odespec.train import section as _train_section  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    from odespec.api import build, export_onnx


def __getattr__(name: str) -> Any:
    # PEP 562: torch-backed names are resolved on first use only.
    if name in ("build", "export_onnx"):
        from odespec import api

        return getattr(api, name)
    raise AttributeError(f"module 'odespec' has no attribute {name!r}")
