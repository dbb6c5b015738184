"""torchdiffeq's own test suite, run against torchdiffeq and against odespec.solvers (issue #17).

Each test file of torchdiffeq's ``tests/`` runs in its own process, once with ``import torchdiffeq``
giving torchdiffeq itself (the source tree, not the venv's older wheel) and once with the one-line
alias ``sys.modules["torchdiffeq"] = odespec.solvers``. A *check* is one subTest, or one test
method without subTests (a test method that fails outside its subTests adds one failed check).
Prints checks passed/failed per file and target, and odespec's failures grouped by reason.

    python benchmarks/torchdiffeq_suite.py [--source /work/wt/torchdiffeq_src] [--only odespec]
           [--files odeint_tests api_tests] [--jobs 2] [--show 30]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DEFAULT_SOURCE = Path(os.environ.get("TORCHDIFFEQ_SRC", "/work/wt/torchdiffeq_src"))
FILES = ("api_tests", "event_tests", "gradient_tests", "norm_tests", "odeint_tests")
TARGETS = ("torchdiffeq", "odespec")


# -- the worker: one file, one target, in this process ------------------------------------------------


def _install(target: str, source: Path) -> None:
    sys.path.insert(0, str(source / "tests"))
    if target == "torchdiffeq":
        sys.path.insert(0, str(source))
    else:
        import importlib

        sys.path.insert(0, str(REPO))
        sys.modules["torchdiffeq"] = importlib.import_module("odespec.solvers")  # the alias


def _reason(err: tuple) -> str:
    """The exception's last line, with numbers and tensors blurred so that alike failures group."""
    etype, value, _ = err
    text = f"{etype.__name__}: {str(value).strip().splitlines()[0] if str(value).strip() else ''}"
    text = re.sub(r"tensor\([^)]*\)", "tensor(...)", text)
    text = re.sub(r"-?\d+\.\d+(e[-+]?\d+)?|-?\d+e[-+]?\d+", "<num>", text)
    return text[:160]


def _where(err: tuple) -> str:
    """The innermost frame outside the test files and unittest: who raised it."""
    frames = [f for f in traceback.extract_tb(err[2]) if "unittest" not in f.filename]
    inner = frames[-1] if frames else None
    return "" if inner is None else f"{Path(inner.filename).name}:{inner.lineno}"


def worker(target: str, name: str, source: Path) -> dict:
    import unittest

    import torch

    torch.set_num_threads(1)
    _install(target, source)
    checks: dict[str, dict] = {}

    class Result(unittest.TestResult):
        def _rec(self, test: unittest.TestCase) -> dict:
            return checks.setdefault(test.id(), {"sub_pass": 0, "sub_fail": [], "own": None})

        def addSubTest(self, test, subtest, err):  # noqa: N802 (unittest's name)
            super().addSubTest(test, subtest, err)
            rec = self._rec(test)
            if err is None:
                rec["sub_pass"] += 1
            else:
                rec["sub_fail"].append([_reason(err), _where(err), subtest._subDescription()])

        def addSuccess(self, test):  # noqa: N802
            self._rec(test)

        def addFailure(self, test, err):  # noqa: N802
            self._rec(test)["own"] = [_reason(err), _where(err), ""]

        addError = addFailure  # noqa: N815

        def addSkip(self, test, reason):  # noqa: N802
            self._rec(test)["skipped"] = reason

    module = __import__(name)
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    start = time.perf_counter()
    suite.run(Result())
    passed, failed = 0, []
    for test_id, rec in checks.items():
        if "skipped" in rec:
            continue
        if rec["sub_pass"] or rec["sub_fail"]:
            passed += rec["sub_pass"]
            failed += [[test_id, *f] for f in rec["sub_fail"]]
            if rec["own"] is not None:
                failed.append([test_id, *rec["own"]])
        elif rec["own"] is None:
            passed += 1
        else:
            failed.append([test_id, *rec["own"]])
    return {"target": target, "file": name, "passed": passed, "failed": failed,
            "seconds": time.perf_counter() - start}


# -- the driver ---------------------------------------------------------------------------------------


def _run(target: str, name: str, source: Path) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", target, name, "--source", str(source)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=source / "tests", env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"target": target, "file": name, "passed": 0, "failed": [[name, f"worker crashed: {tail[0]}", "", ""]],
                "seconds": 0.0}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="torchdiffeq's repository checkout")
    ap.add_argument("--only", choices=TARGETS, help="run one target")
    ap.add_argument("--files", nargs="+", default=list(FILES), choices=FILES)
    ap.add_argument("--jobs", type=int, default=2, help="files run at once")
    ap.add_argument("--show", type=int, default=40, help="failure reasons listed per target")
    ap.add_argument("--json", type=Path, help="also write every result here")
    ap.add_argument("--worker", nargs=2, metavar=("TARGET", "FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.source)))
        return
    targets = [args.only] if args.only else list(TARGETS)
    jobs = [(t, f) for t in targets for f in args.files]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: _run(j[0], j[1], args.source), jobs))
    wall = time.perf_counter() - start
    by = {(r["target"], r["file"]): r for r in results}

    head = f"{'file':<16}" + "".join(f"{t + ' pass':>18}{'fail':>7}{'s':>7}" for t in targets)
    print(head)
    print("-" * len(head))
    totals = {t: [0, 0] for t in targets}
    for f in args.files:
        row = f"{f:<16}"
        for t in targets:
            r = by[(t, f)]
            row += f"{r['passed']:>18}{len(r['failed']):>7}{r['seconds']:>7.0f}"
            totals[t][0] += r["passed"]
            totals[t][1] += len(r["failed"])
        print(row)
    print("-" * len(head))
    print(f"{'total':<16}" + "".join(f"{p:>18}{n:>7}{'':>7}" for p, n in totals.values()))
    print(f"wall time {wall:.0f} s")
    for t in targets:
        reasons = Counter()
        for f in args.files:
            for test_id, reason, where, _ in by[(t, f)]["failed"]:
                reasons[(f, test_id.split(".")[-1], reason, where)] += 1
        if not reasons:
            continue
        print(f"\n{t}: failures by reason (count, file, test, reason, raised at)")
        for (f, test, reason, where), n in reasons.most_common(args.show):
            print(f"{n:>5}  {f}.{test}  {reason}  [{where}]")
        if len(reasons) > args.show:
            print(f"  ... {len(reasons) - args.show} more reasons")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
