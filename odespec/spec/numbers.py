"""Numbers a spec may hold: finite, and within the range of the dtype they become.

JSON Schema cannot say "finite": YAML's ``.nan`` passes every bound (a comparison with NaN is
false), and ``.inf`` passes every lower bound. Every number of the spec language becomes a tensor
or a bound on one (times, tolerances, step sizes, rates, weights), so none may be NaN or
infinite, and in a ``float32`` spec none may lie outside float32's range: ``t: [0, 1e300]``
would become ``[0, inf]``, a tolerance of ``1e-50`` would become 0.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from odespec.errors import SpecIssue
from odespec.spec.load import LoadedDocument, Path, format_path

__all__ = ["number_issues", "FLOAT32_MAX", "FLOAT32_TINY"]

#: largest finite float32, and its smallest positive normal value
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
_FLOAT64_MAX = 1.7976931348623157e308
_FINITE_HINT = "write a finite number: every number in a spec becomes a tensor or a bound on one"


def _problem(x: Any, float32: bool) -> Optional[tuple[str, str]]:
    """(message, hint) when ``x`` cannot be one of the spec's numbers, else None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    if isinstance(x, float) and math.isnan(x):
        return "nan is not a number", _FINITE_HINT
    big = abs(x) > _FLOAT64_MAX if isinstance(x, int) else math.isinf(x)
    if big:
        shown = "inf" if isinstance(x, float) else f"an integer of {len(str(abs(x)))} digits"
        return f"{shown} is not a finite number", _FINITE_HINT
    if float32 and abs(x) > FLOAT32_MAX:
        return f"{float(x):g} is outside float32's range (largest {FLOAT32_MAX:.3g})", "use smaller values, or dtype: float64"
    if float32 and isinstance(x, float) and 0 < abs(x) < FLOAT32_TINY:
        return f"{x:g} is below float32's smallest normal number ({FLOAT32_TINY:.3g}) and would round to 0 or lose precision", \
            "use a larger value, or dtype: float64"
    return None


def number_issues(doc: LoadedDocument, skip: frozenset[str] = frozenset()) -> list[SpecIssue]:
    """One issue for every number in ``doc`` that is NaN, infinite or, in a float32 spec (the
    default dtype), outside float32's range; paths in ``skip`` (already reported) are left out."""
    data = doc.data
    float32 = not (isinstance(data, dict) and data.get("dtype") == "float64")
    issues: list[SpecIssue] = []

    def walk(node: Any, path: Path) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, path + (i,))
        else:
            problem = _problem(node, float32)
            where = format_path(path)
            if problem is not None and where not in skip:
                m = doc.mark(path)
                issues.append(SpecIssue(doc.filename, m.line, m.column, where, *problem))

    walk(data, ())
    return issues
