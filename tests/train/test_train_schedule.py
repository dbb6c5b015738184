"""Learning-rate schedules: multistep equals torch's MultiStepLR, step and multistep count epochs
in a run given in epochs, and a resumed run repeats the rates of an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from odespec.spec import parse_spec
from odespec.spec.model import ScheduleSpec
from odespec.train import TrainingInterrupted
from odespec.train.loop import resume, train
from odespec.train.optim import lr_at

from train_helpers import circles_spec, write

MULTISTEP = "{kind: multistep, milestones: [1, 3], gamma: 0.5}"


def lrs(run: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_multistep_equals_torchs_multisteplr():
    """The paper's MNIST schedule (lr 0.1, times 0.1 at 60, 100 and 140), step by step."""
    schedule = ScheduleSpec(kind="multistep", milestones=(60, 100, 140), gamma=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 100, 140], gamma=0.1)
    for step in range(170):
        assert lr_at(schedule, 0.1, step, 160) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), step
        opt.step()
        ref.step()
    assert lr_at(schedule, 0.1, 59, 160) == 0.1 and lr_at(schedule, 0.1, 60, 160) == pytest.approx(0.01)
    assert lr_at(schedule, 0.1, 10_000, 160) == pytest.approx(1e-4)  # past the last milestone: stays


def test_epoch_schedules_follow_the_epoch_not_the_step():
    multi = ScheduleSpec(kind="multistep", milestones=(2, 5), gamma=0.5, unit="epochs")
    assert [lr_at(multi, 1.0, 100, 200, epoch=e) for e in range(7)] == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    step = ScheduleSpec(kind="step", every=3, gamma=0.5, unit="epochs")
    assert [lr_at(step, 1.0, 0, 200, epoch=e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="counts epochs"):
        lr_at(multi, 1.0, 3, 10)


def test_the_unit_is_the_runs():
    head = circles_spec().split("train:")[0]
    by_iterations = parse_spec(head + f"train: {{data: circles, iterations: 9, schedule: {MULTISTEP}}}\n").train
    by_epochs = parse_spec(head + f"train: {{data: circles, epochs: 9, schedule: {MULTISTEP}}}\n").train
    assert by_iterations.schedule == ScheduleSpec("multistep", gamma=0.5, milestones=(1, 3), unit="iterations")
    assert by_epochs.schedule.unit == "epochs" and by_epochs.schedule.milestones == (1, 3)
    step = parse_spec(head + "train: {data: circles, epochs: 9, schedule: {kind: step, every: 2}}\n").train
    assert step.schedule.unit == "epochs"
    # a milestone beyond the run is allowed (a resumed run may be made longer)
    long = parse_spec(head + "train: {data: circles, epochs: 2, schedule: {kind: multistep, milestones: [5]}}\n")
    assert long.train.schedule.milestones == (5,)


def test_multistep_over_iterations_in_a_run(tmp_path: Path):
    text = circles_spec(iterations=6).replace("{kind: step, every: 4, gamma: 0.5}", MULTISTEP)
    train(write(tmp_path, text), tmp_path / "run", progress=False)
    assert lrs(tmp_path / "run") == [0.05, 0.025, 0.025, 0.0125, 0.0125, 0.0125]


def test_multistep_over_epochs_and_resume(tmp_path: Path):
    """40 samples in batches of 16: iteration k's batch starts at sample 16 (k - 1), in epoch
    16 (k - 1) // 40, so the rate halves from iteration 4 (epoch 1) and again from 9 (epoch 3)."""
    text = circles_spec().replace("iterations: 12", "epochs: 4").replace("{kind: step, every: 4, gamma: 0.5}",
                                                                         MULTISTEP)
    spec = write(tmp_path, text)
    ref = tmp_path / "ref"
    result = train(spec, ref, progress=False)
    assert result.iterations == 10
    assert lrs(ref) == [0.05] * 3 + [0.025] * 5 + [0.0125] * 2

    def stop_at_6(record: dict) -> None:
        if record["iteration"] == 6:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(spec, run, callbacks=[stop_at_6], progress=False)
    resume(run, progress=False)

    def curve(r: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (r / "metrics.jsonl").read_text().splitlines()]

    assert curve(run) == curve(ref)
