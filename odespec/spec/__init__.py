"""Spec stage: text -> data with source positions -> validation -> frozen spec objects.

Nothing here imports torch, so ``odespec validate`` starts fast.
"""

from __future__ import annotations

import os
from typing import Union

from odespec.spec.model import Spec

__all__ = ["Spec", "load_spec", "parse_spec"]


def load_spec(path: Union[str, "os.PathLike[str]"], *, data_dir: Union[str, "os.PathLike[str]", None] = None) -> Spec:
    """Read, parse and validate a spec file. Raises :class:`odespec.errors.SpecError`.
    ``data_dir``: where the train section's relative data paths resolve (default: the spec
    file's directory; a run's copy of its spec gives the original's)."""
    from pathlib import Path

    from odespec.spec.load import load_file
    from odespec.spec.validate import validate

    return validate(load_file(path), base_dir=Path(data_dir).resolve() if data_dir is not None else None)


def parse_spec(text: Union[str, bytes], filename: str = "<string>") -> Spec:
    """Parse and validate spec text (for tests and tools). Raises :class:`SpecError`."""
    from odespec.spec.load import load_text
    from odespec.spec.validate import validate

    return validate(load_text(text, filename))
