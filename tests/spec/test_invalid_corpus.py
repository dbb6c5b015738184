"""Every malformed or hostile spec under tests/spec/invalid/ is rejected by ``odespec validate``
with exit code 2, exactly the golden message (file:line:column, path, message, hint), no
traceback, no file written, and quickly.

Regenerate goldens after a deliberate message change with ODESPEC_UPDATE_GOLDEN=1, then review
the diff: the goldens are the specification of what users read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from odespec.cli import cli

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted((ROOT / "tests" / "spec" / "invalid").glob("*.yaml"))


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40


def _validate(rel: str) -> tuple[int, str, float]:
    runner = CliRunner()
    start = time.perf_counter()
    result = runner.invoke(cli, ["validate", rel])
    return result.exit_code, result.stderr, time.perf_counter() - start


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_invalid_spec_is_rejected_with_golden_message(path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    rel = path.relative_to(ROOT).as_posix()
    before = sorted(p.name for p in path.parent.iterdir())
    code, err, elapsed = _validate(rel)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith(rel + ":") or err.startswith(rel + ": error"), err
    assert sorted(p.name for p in path.parent.iterdir()) == before  # nothing written
    # (how fast validate answers is measured by benchmarks/validate_time.py, not asserted here)
    golden = path.with_suffix(".expected")
    if os.environ.get("ODESPEC_UPDATE_GOLDEN"):
        golden.write_text(err, encoding="utf-8")
    assert golden.exists(), f"no golden file {golden.name}; run with ODESPEC_UPDATE_GOLDEN=1 and review it"
    assert err == golden.read_text(encoding="utf-8")


def test_oversized_input_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import odespec.spec.load as load

    def no_parsing(*args, **kwargs):
        raise AssertionError("the YAML parser ran on an oversized file")

    monkeypatch.setattr(load, "_compose", no_parsing)
    monkeypatch.chdir(tmp_path)
    Path("huge.yaml").write_text("odespec: 1\n" + "# padding\n" * 200_000, encoding="utf-8")
    code, err, _ = _validate("huge.yaml")
    assert code == 2
    assert "huge.yaml" in err and "limit is 1048576" in err


def test_missing_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    code, err, _ = _validate("nope.yaml")
    assert code == 2
    assert "nope.yaml" in err and "Traceback" not in err


def test_all_problems_are_reported_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(ROOT)
    code, err, _ = _validate("tests/spec/invalid/many_errors.yaml")
    assert code == 2
    assert err.count(": error: ") >= 5
