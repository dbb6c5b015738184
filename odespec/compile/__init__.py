"""Compile stage: frozen spec objects -> torch modules."""

from odespec.compile.model import ModelOutput, ODENet, compile_spec, count_parameters
from odespec.compile.ode_block import ODEBlock, ResNetBlock

__all__ = ["ODENet", "ModelOutput", "ODEBlock", "ResNetBlock", "compile_spec", "count_parameters"]
