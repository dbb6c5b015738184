"""Training on the user's files end to end, by the data contract: the issue's data file (an
(N, 8, 8) array of images and integer class labels, no ``loss:``) trains with cross_entropy as the
README says, resumes with the same loss (the run's copy of the spec finds the data where the
original did), plots, and its inputs run through the exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from odespec.export.run import ModelInput, load_input
from odespec.spec import load_spec
from odespec.train import DataError
from odespec.train.loop import resume, train
from odespec.train.rundir import SPEC_FILE

from train_helpers import write

SPEC = """\
odespec: 1
name: digits
input: {shape: [1, 8, 8]}
model:
  - flatten
  - linear: 6
  - ode:
      t: [0, 1]
      dynamics: {layers: [{linear: 6}, tanh, {linear: 6}]}
      solver: {method: rk4, steps: 1}
  - linear: 3
train:
  data: {npz: data/digits.npz}
  iterations: 4
  batch_size: 4
  eval_every: 2
  checkpoint_every: 2
"""


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "digits.npz", x=rng.standard_normal((12, 8, 8)).astype(np.float32),
             y=rng.integers(0, 3, 12))
    return write(tmp_path, SPEC)


def test_integer_labels_without_a_loss_train_with_cross_entropy_and_resume(digits: Path, tmp_path: Path):
    run = tmp_path / "run"
    first = train(digits, run, iterations=2, progress=False)
    assert "accuracy" in first.last and "eval_accuracy" in first.evaluation
    # the run's copy of the spec resolves the data where the original spec did
    assert load_spec(run / SPEC_FILE, data_dir=digits.parent).train.loss.kind == "cross_entropy"
    done = resume(run, iterations=4, progress=False)
    assert done.iterations == 4 and "accuracy" in done.last


def test_the_training_file_runs_through_the_exported_model(digits: Path, tmp_path: Path):
    """odespec run takes the training file's x (N, 8, 8) for the (1, 8, 8) input."""
    x = load_input(digits.parent / "data" / "digits.npz", ModelInput("input", ("batch", 1, 8, 8), np.dtype(np.float32)))
    assert x.shape == (12, 1, 8, 8)


def test_training_refuses_nan_inputs_at_load_naming_the_file(digits: Path, tmp_path: Path):
    x = np.zeros((12, 8, 8), np.float32)
    x[5, 3, 2] = np.nan
    np.savez(tmp_path / "data" / "digits.npz", x=x, y=np.zeros(12, np.int64))
    with pytest.raises(DataError, match=r"digits.npz, array 'x': NaN at index \(5, 3, 2\)"):
        train(digits, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
