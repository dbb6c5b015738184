"""The inputs an export is checked on, and the one place for the parity check's batch sizes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import odespec
from odespec.errors import InputFileError
from odespec.export.inputs import SEEDED_BATCHES, data_input_set, model_dtype, seeded_input_set, seeded_inputs
from odespec.export.parity import parity_batches

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "specs" / "ode_demo.yaml"


def test_seeded_inputs_are_the_parity_batches_and_the_same_in_both_dtypes():
    assert parity_batches(True) == SEEDED_BATCHES
    assert parity_batches(False) == (1,)  # a graph with a fixed batch of 1
    x32 = seeded_inputs((3,), dtype=torch.float32, seed=4)
    x64 = seeded_inputs((3,), dtype=torch.float64, seed=4)
    assert [int(b.shape[0]) for b in x32] == list(SEEDED_BATCHES)
    for a, b in zip(x32, x64):
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        torch.testing.assert_close(a, b.float())
    s = seeded_input_set((3,), dtype=torch.float32, seed=4)
    assert s.samples == sum(SEEDED_BATCHES)
    assert s.description == "seeded random (seed 4), batches " + ", ".join(map(str, SEEDED_BATCHES))


def test_the_export_checks_on_the_seeded_batches(tmp_path: Path):
    r = odespec.export_onnx(odespec.build(DEMO), tmp_path / "d.onnx", steps=2)
    assert tuple(r.parity["batch_sizes"]) == SEEDED_BATCHES
    assert r.deployment_error["samples"] == sum(SEEDED_BATCHES)


def test_the_batch_sizes_are_written_once():
    literal = re.compile(r"\(\s*1\s*,\s*7\s*,\s*256\s*\)")
    holders = sorted(p.relative_to(ROOT / "odespec").as_posix() for p in (ROOT / "odespec").rglob("*.py")
                     if literal.search(p.read_text()))
    assert holders == ["export/inputs.py"]


def test_data_file_inputs_are_batched_and_named_without_their_directory(tmp_path: Path):
    np.save(tmp_path / "x.npy", np.arange(600, dtype=np.float64).reshape(300, 2))
    s = data_input_set(tmp_path / "x.npy", (2,), dtype=torch.float32, batch_size=256)
    assert [int(b.shape[0]) for b in s.batches] == [256, 44]
    assert s.batches[0].dtype == torch.float32 and s.description == "x.npy (300 samples)"
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    with pytest.raises(InputFileError, match="holds no samples"):
        data_input_set(tmp_path / "empty.npy", (2,), dtype=torch.float32)


def test_model_dtype():
    assert model_dtype(torch.nn.Linear(2, 2).double()) == torch.float64
    assert model_dtype(torch.nn.Tanh()) == torch.float32


def test_subset_keeps_samples_and_labels_in_order_and_rebatches():
    from odespec.export.inputs import InputSet

    x = torch.arange(20.0).reshape(10, 2)
    labels = np.arange(10) % 3
    inputs = InputSet((x[:4], x[4:]), "ten", labels=(labels[:4], labels[4:]))
    part = inputs.subset(np.array([1, 3, 4, 8, 9]), "five", batch=2)
    assert [b.shape[0] for b in part.batches] == [2, 2, 1] and part.description == "five"
    assert torch.equal(torch.cat(part.batches), x[[1, 3, 4, 8, 9]])
    assert np.array_equal(np.concatenate(part.labels), labels[[1, 3, 4, 8, 9]])
    assert InputSet((x,), "unlabelled").subset(np.array([0]), "one").labels == ()
