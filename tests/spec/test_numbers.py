"""Numbers in specs: finite, and within the range of the dtype they become (odespec.spec.numbers)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from odespec.errors import SpecError
from odespec.spec import parse_spec
from odespec.spec.load import format_path, load_text

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "specs").glob("*.yaml"))


def _numeric_paths(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _numeric_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _numeric_paths(v, path + (i,))
    elif isinstance(node, float) or (isinstance(node, int) and not isinstance(node, bool)):
        yield path


def _replaced(data, path, value):
    if not path:
        return value
    head, *rest = path
    if isinstance(data, dict):
        return {k: (_replaced(v, rest, value) if k == head else v) for k, v in data.items()}
    return [(_replaced(v, rest, value) if i == head else v) for i, v in enumerate(data)]


CASES = [(spec, path) for spec in SHIPPED for path in _numeric_paths(load_text(spec.read_bytes()).data)]


@settings(max_examples=80, deadline=None)
@given(case=st.sampled_from(CASES), value=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_any_number_of_a_shipped_spec_made_non_finite_is_refused_where_it_is(case, value):
    spec, path = case
    data = _replaced(load_text(spec.read_bytes()).data, path, value)
    with pytest.raises(SpecError) as info:
        parse_spec(yaml.safe_dump(data, sort_keys=False), spec.name)
    assert format_path(path) in [issue.path for issue in info.value.issues]
    # one diagnostic for the one mistake
    assert [issue.path for issue in info.value.issues].count(format_path(path)) == 1


def _ode_demo(**changes) -> str:
    text = (ROOT / "specs" / "ode_demo.yaml").read_text()
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


def test_times_beyond_float32_are_refused_in_float32_and_accepted_in_float64():
    text = _ode_demo(**{"t: [0, 0.5, 1.0, 1.5, 2.0, 2.5]": "t: [0, 1.0e+300]"})
    with pytest.raises(SpecError, match="outside float32's range"):
        parse_spec(text)
    spec = parse_spec(text.replace("input:", "dtype: float64\ninput:", 1))
    assert spec.ode_blocks[0].t[-1] == 1e300


def test_huge_integers_are_refused_before_anything_is_built():
    text = _ode_demo(**{"t: [0, 0.5, 1.0, 1.5, 2.0, 2.5]": "t: [0, " + "9" * 400 + "]"})
    with pytest.raises(SpecError, match="integer of 400 digits is not a finite number"):
        parse_spec(text)


def test_a_tolerance_that_would_round_to_zero_in_float32():
    text = _ode_demo(**{"atol: 1e-9": "atol: 1.0e-40"})
    with pytest.raises(SpecError, match="smallest normal number"):
        parse_spec(text)
