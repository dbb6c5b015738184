"""Static checks over ``odespec/``, configured in pyproject.toml: ruff (pyflakes and bugbear)
and mypy. They find what no test reaches, e.g. a name used before it is bound on a branch only
a CUDA machine takes. Each is skipped, with the reason, where it is not installed; the ``test``
extra installs both (and the stubs mypy reads), so CI runs them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e '.[test]'"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in the repository root, where pyproject.toml configures the tool."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def missing_distributions(*names: str) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason=f"ruff is not installed ({INSTALL})")
def test_ruff_finds_nothing():
    proc = run_tool("ruff", "check", "--no-cache", "odespec")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason=f"mypy is not installed ({INSTALL})")
def test_mypy_finds_nothing():
    # without the stubs every yaml and jsonschema import is an error, which says nothing of odespec
    missing = missing_distributions("types-PyYAML", "types-jsonschema")
    if missing:
        pytest.skip(f"mypy needs the stubs {', '.join(missing)} ({INSTALL})")
    proc = run_tool("mypy", "odespec")
    assert proc.returncode == 0, proc.stdout + proc.stderr
