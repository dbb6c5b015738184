"""Compile stage: frozen spec objects -> torch modules."""

from odespec.compile.model import ODENet, compile_spec, count_parameters
from odespec.compile.ode_block import ODEBlock, ResNetBlock

__all__ = ["ODENet", "ODEBlock", "ResNetBlock", "compile_spec", "count_parameters"]
