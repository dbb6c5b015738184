"""Wall time of `odespec validate` as a user runs it (a fresh process each time).

Issue #2's figures: median under 0.3 s for a shipped spec; every malformed or hostile input in
tests/spec/invalid/ rejected in under 1 s. Prints a table; run from the repository root:

    .venv/bin/python benchmarks/validate_time.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    exe = shutil.which("odespec", path=str(Path(sys.executable).parent)) or "odespec"
    rows = []
    # interleave the commands so that machine noise hits them alike
    cmds = {
        "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"],
        "python -c 'import torch' (what validate avoids)": [sys.executable, "-c", "import torch"],
    }
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        cmds[f"odespec validate specs/{spec.name}"] = [exe, "validate", str(spec.relative_to(ROOT))]
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.repeat):
        for name, cmd in cmds.items():
            t, code = wall(cmd)
            times[name].append(t)
    for name, ts in times.items():
        rows.append((name, statistics.median(ts), max(ts)))
    invalid = sorted((ROOT / "tests" / "spec" / "invalid").glob("*.yaml"))
    worst = (0.0, "")
    codes = set()
    for path in invalid:
        t, code = wall([exe, "validate", str(path.relative_to(ROOT))])
        codes.add(code)
        worst = max(worst, (t, path.name))
    print(f"{'command':58s} {'median s':>9s} {'max s':>7s}")
    for name, med, mx in rows:
        print(f"{name:58s} {med:9.3f} {mx:7.3f}")
    print(f"\n{len(invalid)} invalid specs: exit codes {sorted(codes)}, slowest {worst[0]:.3f} s ({worst[1]})")


if __name__ == "__main__":
    main()
