"""The NFE budget (train.max_nfe): adaptive solves get a step limit from it, a training forward
pass that needs more stops training with exit code 1 and is recorded in the metrics; a larger
budget on resume continues; fixed-step blocks over budget are refused before anything is
written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from odespec.cli import cli
from odespec.train import TrainError, TrainingFailed, TrainingInterrupted
from odespec.train.loop import resume, train
from odespec.train.regularise import NfeBudgetExceeded

from train_helpers import circles_spec, demo_spec, write


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_budget_that_is_met_changes_nothing(tmp_path: Path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(write(tmp_path, circles_spec(iterations=6)), ref, progress=False)
    train(write(tmp_path, circles_spec(iterations=6) + "  max_nfe: 1000\n", "b.yaml"), run, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records(run)) == strip(records(ref))
    assert json.loads((run / "run.json").read_text())["max_nfe"] == 1000


def test_an_exceeded_budget_stops_training_and_shows_in_the_metrics(tmp_path: Path):
    run = tmp_path / "run"
    spec = write(tmp_path, circles_spec(iterations=12) + "  max_nfe: 10\n")
    with pytest.raises(NfeBudgetExceeded) as e:
        train(spec, run, progress=False)
    assert isinstance(e.value, TrainingFailed) and e.value.exit_code == 1
    assert "needed more than max_nfe=10 function evaluations" in str(e.value)
    assert "--max-nfe 20" in str(e.value)  # the hint says how to go on
    last = records(run)[-1]
    assert last["nfe_budget_exceeded"] is True and last["max_nfe"] == 10 and last["loss"] is None
    assert 0 < last["nfe_forward"] <= 10  # the step limit stopped the solve within the budget
    # every iteration before it kept to the budget
    assert all(r["nfe_forward"] <= 10 for r in records(run)[:-1])
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "max_nfe=10" in info["failure"]
    assert info["last"]["nfe_budget_exceeded"] is True


def test_resume_with_another_budget(tmp_path: Path):
    """The tiny classifier's solves take 14 evaluations (bosh3: 2 to start, 3 per step).
    Stopped at iteration 5, resumed with a budget of 11 it stops at iteration 6; resumed again
    with a larger one it finishes, and its metrics are those of an unbudgeted run."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    text = circles_spec(iterations=8).replace("checkpoint_every: 5", "checkpoint_every: 1")
    train(write(tmp_path, text), ref, progress=False)

    def stop(record: dict) -> None:
        if record["iteration"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, text, "again.yaml"), run, callbacks=[stop], progress=False)
    with pytest.raises(NfeBudgetExceeded) as e:
        resume(run, max_nfe=11, progress=False)
    assert e.value.nfe == 11  # 3 steps were allowed, the 4th was not taken
    assert records(run)[-1]["iteration"] == 6 and records(run)[-1]["nfe_budget_exceeded"] is True
    assert json.loads((run / "run.json").read_text())["max_nfe"] == 11
    result = resume(run, max_nfe=100, progress=False)
    assert result.iterations == 8
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records(run)) == strip(records(ref))
    assert json.loads((run / "run.json").read_text())["max_nfe"] == 100


def test_fixed_step_blocks_over_budget_are_refused_before_writing(tmp_path: Path):
    run = tmp_path / "run"
    with pytest.raises(TrainError) as e:
        train(write(tmp_path, demo_spec() + "  max_nfe: 20\n"), run, progress=False)  # rk4 x 2 x 3 = 24
    message = str(e.value)
    assert "take 24 function evaluations per forward pass" in message and "raise train.max_nfe to 24" in message
    assert not run.exists()


def test_cli_max_nfe_exit_code_and_message(tmp_path: Path):
    spec = write(tmp_path, circles_spec(iterations=4))
    r = CliRunner().invoke(cli, ["train", str(spec), "-o", str(tmp_path / "run"), "--max-nfe", "10"])
    assert r.exit_code == 1, r.output
    assert "error: iteration 1: the forward pass needed more than max_nfe=10" in r.stderr
    assert "hint:" in r.stderr and "Traceback" not in r.output
