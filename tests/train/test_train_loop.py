"""The training loop: it learns, it writes the run directory, and an interrupted-then-resumed
run equals an uninterrupted one bit for bit (Ctrl-C from a callback, inside a forward pass,
and as a real SIGINT during an optimizer step; test_train_interrupt.py sends one at every point of
an iteration)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import odespec
from odespec.api import load_weights
from odespec.train import TrainError, TrainingInterrupted
from odespec.train.files import MNIST_FILES
from odespec.train.idx import write_idx
from odespec.train.loop import resume, train

from train_helpers import ROOT, circles_spec, demo_spec, latent_spec, stop_at, write

SPECS: dict[str, Callable[..., str]] = {"demo": demo_spec, "latent": latent_spec, "circles": circles_spec}


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def curve(run: Path) -> list[dict[str, Any]]:
    """Every record without its wall-clock time: what must be identical after a resume."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records(run)]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def quiet(**kw: Any) -> dict[str, Any]:
    return {"progress": False, **kw}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One uninterrupted run of each tiny spec."""
    out = {}
    for name, make in SPECS.items():
        tmp = tmp_path_factory.mktemp(f"ref-{name}")
        train(write(tmp, make()), tmp / "run", **quiet())
        out[name] = tmp / "run"
    return out


def assert_same_run(run: Path, ref: Path) -> None:
    """Same records, same weights (the kept and the last iterate's), the same choice between them."""
    assert curve(run) == curve(ref)
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = "model.last.safetensors"
    assert (run / last).is_file() == (ref / last).is_file()
    if (ref / last).is_file():
        a, b = load_file(str(run / last)), load_file(str(ref / last))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kept = [json.loads((r / "run.json").read_text()).get("kept") for r in (run, ref)]
    assert kept[0] == kept[1]


@pytest.mark.parametrize("name", list(SPECS))
def test_interrupted_then_resumed_equals_uninterrupted(name: str, tmp_path: Path, reference: dict[str, Path]):
    spec = write(tmp_path, SPECS[name]())
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(spec, run, callbacks=[stop_at(7)], **quiet())
    assert (e.value.iteration, e.value.total, e.value.run_dir) == (7, 12, run)
    assert e.value.checkpoint == run / "checkpoints" / "iter-00000007.json"
    assert "resume with: odespec train --resume" in str(e.value) and e.value.exit_code == 130
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert [r["iteration"] for r in records(run)] == list(range(1, 8))
    assert not (run / "model.safetensors").exists()
    result = resume(run, **quiet())
    assert result.iterations == 12
    assert_same_run(run, reference[name])


def test_interrupt_inside_a_forward_pass_restores_the_rng_of_that_iteration(
        tmp_path: Path, reference: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    """The gaussian layer has drawn its noise when the ODE block is interrupted: the checkpoint
    (of iteration 7) must hold the RNG state from before iteration 8 began, not after."""
    import odespec.train.loop as loop

    calls = {"n": 0}
    compile_spec = loop.compile_spec

    def with_hook(spec: Any, **kw: Any) -> Any:
        model = compile_spec(spec, **kw)

        def pre_hook(module: Any, args: Any) -> None:
            if torch.is_grad_enabled():  # training forwards only
                calls["n"] += 1
                if calls["n"] == 8:
                    raise KeyboardInterrupt

        model[3].register_forward_pre_hook(pre_hook)  # the ODE block, after the gaussian layer
        return model

    monkeypatch.setattr(loop, "compile_spec", with_hook)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(write(tmp_path, latent_spec()), run, **quiet())
    assert e.value.iteration == 7
    monkeypatch.setattr(loop, "compile_spec", compile_spec)
    resume(run, **quiet())
    assert_same_run(run, reference["latent"])


def test_sigint_during_an_optimizer_step_waits_for_the_step(
        tmp_path: Path, reference: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    step = torch.optim.RMSprop.step
    calls = {"n": 0}

    def step_with_sigint(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives while the weights are being updated
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.RMSprop, "step", step_with_sigint)
    run = tmp_path / "run"
    # Python's default handler, or SIG_IGN where pytest runs as a background job of a shell script
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as e:
        train(write(tmp_path, demo_spec()), run, **quiet())
    assert e.value.iteration == 3  # the update finished and was counted, then training stopped
    monkeypatch.setattr(torch.optim.RMSprop, "step", step)
    resume(run, **quiet())
    assert_same_run(run, reference["demo"])
    assert signal.getsignal(signal.SIGINT) is before  # the handler was put back


def test_sigint_from_a_callback(tmp_path: Path, reference: dict[str, Path]):
    def callback(record: dict) -> None:
        if record["iteration"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(write(tmp_path, circles_spec()), run, callbacks=[callback], **quiet())
    assert e.value.iteration == 5
    resume(run, **quiet())
    assert_same_run(run, reference["circles"])


def test_ode_demo_training_reduces_the_loss(tmp_path: Path):
    """The shipped spec, with torchdiffeq's settings, for 60 of its 2000 iterations."""
    result = train(ROOT / "specs" / "ode_demo_train.yaml", tmp_path / "run", iterations=60, **quiet())
    evals = {r["iteration"]: r["eval_loss"] for r in records(tmp_path / "run") if "eval_loss" in r}
    assert sorted(evals) == [20, 40, 60]  # eval_every: 20 (torchdiffeq's test_freq)
    assert evals[60] < 0.7 * evals[20]
    assert result.evaluation["eval_loss"] == evals[60]
    first = records(tmp_path / "run")[0]
    assert first["nfe_forward"] > 0 and first["nfe_backward"] == 0 and first["lr"] == 1e-3


def test_run_directory(tmp_path: Path):
    spec = write(tmp_path, demo_spec(iterations=6))
    run = tmp_path / "run"
    result = train(spec, run, **quiet())
    # eval_every 4: model.safetensors holds the best evaluation's weights, the last iterate is beside it
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.jsonl", "model.last.safetensors",
                                                     "model.safetensors", "run.json", "spec.yaml"]
    assert (run / "spec.yaml").read_bytes() == spec.read_bytes()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "iter-00000005.json", "iter-00000005.safetensors", "iter-00000006.json", "iter-00000006.safetensors"]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["completed"] == 6 and info["data_base_dir"] == str(tmp_path.resolve())
    ckpt = json.loads((run / "checkpoints" / "iter-00000005.json").read_text())
    assert ckpt["iteration"] == 5 and ckpt["data_cursor"] == {"samples_seen": 40, "epoch": 0, "position": 40}
    assert len(base64.b64decode(ckpt["rng"]["torch"])) == torch.get_rng_state().numel()
    tensors = load_file(str(run / "checkpoints" / "iter-00000005.safetensors"))
    assert any(k.startswith("optimizer.0.square_avg") for k in tensors)  # RMSprop's state, flattened
    rec = records(run)
    assert [r["iteration"] for r in rec] == [1, 2, 3, 4, 5, 6]
    assert set(rec[3]) == {"iteration", "loss", "lr", "nfe_forward", "nfe_backward", "seconds", "eval_loss"}
    assert rec[3]["nfe_forward"] == 2 * 4 * 3  # rk4, 2 steps per interval, 3 intervals
    # the final weights load, without pickle, into a freshly built model
    model = odespec.build(spec)
    load_weights(model, result.weights)
    trained = weights(run)
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_train_init_is_torchdiffeqs(tmp_path: Path):
    """init: {weights: normal, std: 0.1} draws every dynamics linear from N(0, 0.1), biases 0."""
    from odespec.spec.model import InitSpec
    from odespec.train.reinit import apply_init

    spec = odespec.load_spec(write(tmp_path, demo_spec()))
    model = odespec.build(spec)
    assert apply_init(model, InitSpec("normal", 0.1), seed=0) == 2
    w = model[0].dynamics.layers[1].weight.detach()
    assert model[0].dynamics.layers[1].bias.abs().sum() == 0
    assert 0.05 < float(w.std()) < 0.15


def test_resume_can_extend_a_finished_run(tmp_path: Path, reference: dict[str, Path]):
    run = tmp_path / "run"
    train(write(tmp_path, demo_spec(iterations=6)), run, **quiet())
    resume(run, iterations=12, **quiet())
    losses = [(r["iteration"], r["loss"]) for r in records(run)]
    assert losses == [(r["iteration"], r["loss"]) for r in records(reference["demo"])]  # a constant rate


def test_training_leaves_the_callers_rng_alone(tmp_path: Path):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    train(write(tmp_path, latent_spec(iterations=2)), tmp_path / "run", **quiet())
    assert torch.equal(torch.rand(3), want)


def test_epochs(tmp_path: Path):
    text = circles_spec().replace("iterations: 12", "epochs: 2")
    result = train(write(tmp_path, text), tmp_path / "run", **quiet())
    assert result.iterations == 5  # 2 passes over 40 samples in batches of 16


def _digits(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = tmp_path / "digits"
    d.mkdir()
    write_idx(d / (MNIST_FILES[0] + ".gz"), rng.integers(0, 256, (16, 28, 28), dtype=np.uint8))
    write_idx(d / (MNIST_FILES[1] + ".gz"), rng.integers(0, 10, 16, dtype=np.uint8))
    write_idx(d / MNIST_FILES[2], rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    write_idx(d / MNIST_FILES[3], rng.integers(0, 10, 8, dtype=np.uint8))


MNIST_SPEC = """\
odespec: 1
name: tiny-mnist
input: {shape: [1, 28, 28]}
model:
  - avgpool: {kernel: 4}
  - flatten
  - ode: {dynamics: {layers: [{linear: 8}, tanh, {linear: 49}]}, solver: {method: euler, steps: 2}}
  - linear: 10
train: {data: {mnist: DATA}, iterations: ITERATIONS, batch_size: 4, optimizer: {method: adamw}, checkpoint_every: 2}
"""


def test_mnist_from_tiny_idx_files(tmp_path: Path):
    _digits(tmp_path)
    text = MNIST_SPEC.replace("DATA", "digits").replace("ITERATIONS", "3")
    result = train(write(tmp_path, text), tmp_path / "run", **quiet())
    assert set(result.evaluation) == {"eval_loss", "eval_accuracy"}
    assert 0 <= result.last["accuracy"] <= 1


def test_mnist_random_crops_in_a_run_and_its_resume(tmp_path: Path):
    _digits(tmp_path)
    cropped = write(tmp_path, MNIST_SPEC.replace("DATA", "{dir: digits, random_crop: {padding: 4}}")
                    .replace("ITERATIONS", "6"), "cropped.yaml")
    plain = write(tmp_path, MNIST_SPEC.replace("DATA", "digits").replace("ITERATIONS", "6"), "plain.yaml")
    train(cropped, tmp_path / "ref", **quiet())
    train(plain, tmp_path / "plain", **quiet())
    assert records(tmp_path / "ref")[0]["loss"] != records(tmp_path / "plain")[0]["loss"]  # the crops are used
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cropped, run, callbacks=[stop_at(3)], **quiet())
    resume(run, **quiet())
    assert_same_run(run, tmp_path / "ref")  # the resumed run saw the same cropped batches


def test_refusals(tmp_path: Path):
    spec = write(tmp_path, demo_spec(iterations=2))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(TrainError, match="already exists and is not an empty directory"):
        train(spec, tmp_path / "busy", **quiet())
    with pytest.raises(TrainError, match="is not a training run"):
        resume(tmp_path, **quiet())
    no_train = write(tmp_path, demo_spec().split("train:")[0], "plain.yaml")
    with pytest.raises(TrainError, match="has no train section"):
        train(no_train, tmp_path / "r", **quiet())
    missing = write(tmp_path, circles_spec().replace("{circles: {count: 40, eval_count: 20}}", "{npz: nope.npz}"), "m.yaml")
    with pytest.raises(TrainError, match="'nope.npz' not found"):
        train(missing, tmp_path / "r2", **quiet())
    assert not (tmp_path / "r2").exists()  # nothing is written before the data are loaded


def test_progress_display(tmp_path: Path):
    from odespec.train.progress import Progress

    rec = {"iteration": 4, "loss": 0.5, "lr": 0.001, "nfe_forward": 26, "nfe_backward": 0}
    log = io.StringIO()
    p = Progress(8, every=4, stream=log, tty=False)
    p.update({**rec, "iteration": 3})
    p.update(rec)
    assert log.getvalue() == "it 4/8  loss 0.5  nfe 26/0  lr 0.001\n"
    term = io.StringIO()
    p = Progress(8, every=4, stream=term, tty=True)
    p.update({**rec, "eval_loss": 0.25})
    p.close()
    assert term.getvalue() == "\rit 4/8  loss 0.5  eval_loss 0.25  nfe 26/0  lr 0.001\n"
    run = tmp_path / "run"
    out = io.StringIO()
    train(write(tmp_path, demo_spec(iterations=4)), run, stream=out)
    assert out.getvalue().count("\n") == 4 and "it 4/4" in out.getvalue()


def test_a_diverged_loss_stops_with_the_metrics_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import odespec.train.loop as loop
    from odespec.train import TrainingFailed

    make_loss = loop.make_loss

    def nan_at_3(spec: Any, model: Any) -> Any:
        fn = make_loss(spec, model)
        calls = {"n": 0}

        def loss(out: torch.Tensor, y: torch.Tensor, y_mask: Any = None) -> Any:
            calls["n"] += 1
            value, extra = fn(out, y, y_mask)
            return (value * float("nan") if calls["n"] == 3 else value), extra

        return loss

    monkeypatch.setattr(loop, "make_loss", nan_at_3)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match="the loss is nan at iteration 3") as e:
        train(write(tmp_path, demo_spec()), run, **quiet())
    assert e.value.exit_code == 1
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert [r["iteration"] for r in records(run)] == [1, 2]


def test_an_evaluation_cut_short_is_redone_on_resume(tmp_path: Path, reference: dict[str, Path],
                                                     monkeypatch: pytest.MonkeyPatch):
    from odespec.train.loop import _Trainer

    evaluate = _Trainer._evaluate

    def interrupted_at_8(self: Any) -> Any:
        if self.done == 8:
            raise KeyboardInterrupt
        return evaluate(self)

    monkeypatch.setattr(_Trainer, "_evaluate", interrupted_at_8)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as e:
        train(write(tmp_path, demo_spec()), run, **quiet())
    assert e.value.iteration == 8 and "eval_loss" not in records(run)[-1]
    monkeypatch.setattr(_Trainer, "_evaluate", evaluate)
    resume(run, **quiet())
    assert_same_run(run, reference["demo"])
