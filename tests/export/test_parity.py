"""The parity check's bound (odespec.export.parity)."""

from __future__ import annotations

import pytest


def test_the_absolute_bound_scales_with_outputs_above_one():
    """Rounding is relative: outputs of magnitude 7 may differ by 7x the tolerance; outputs
    below 1 keep the tolerance as it is, and a float16 graph's scaled measure is unchanged."""
    from odespec.export.parity import ParityResult

    big = ParityResult((1,), 5e-5, 1e-5, 1e-5, 5e-5 / 7, "abs", output_scale=7.0)
    assert big.bound == pytest.approx(7e-5) and big.ok and big.to_dict()["bound"] == pytest.approx(7e-5)
    assert not ParityResult((1,), 8e-5, 1e-5, 1e-5, 8e-5 / 7, "abs", output_scale=7.0).ok
    small = ParityResult((1,), 2e-5, 1e-5, 1e-5, 4e-5, "abs", output_scale=0.5)
    assert small.bound == 1e-5 and not small.ok and "bound" not in small.to_dict()
    half = ParityResult((1,), 5e-2, 1e-2, 1e-2, 5e-3, "scaled", output_scale=10.0)
    assert half.bound == 1e-2 and half.ok
