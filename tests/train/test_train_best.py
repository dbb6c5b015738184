"""Runs that end well: a run that evaluates keeps its best evaluation's weights in
model.safetensors (the last iterate beside it), records the choice, and chooses exactly the
same after an interruption; gradient-norm clipping; ``--resume`` of a finished run; training
errors that name only files that exist."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import odespec
from odespec.api import load_weights
from odespec.cli import cli
from odespec.errors import SpecError
from odespec.spec import parse_spec
from odespec.train import TrainError, TrainingFailed, TrainingInterrupted
from odespec.train.best import BestWeights, Criterion, criterion_for
from odespec.train.loop import resume, train

from train_helpers import circles_spec, demo_spec, stop_at, write


def quiet(**kw: Any) -> dict[str, Any]:
    return {"progress": False, **kw}


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def info(run: Path) -> dict[str, Any]:
    return json.loads((run / "run.json").read_text())


def checkpoint_model(run: Path, iteration: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run / "checkpoints" / f"iter-{iteration:08d}.safetensors"))
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the rule -------------------------------------------------------------------------------------------
def test_the_rule_per_loss():
    assert criterion_for("cross_entropy") == Criterion("eval_accuracy", True, "eval_loss")
    for kind in ("mse", "l1", "elbo"):
        assert criterion_for(kind) == Criterion("eval_loss", False)
    assert criterion_for("cross_entropy").describe() == "highest eval_accuracy, ties to the lowest eval_loss"


def test_only_a_strictly_better_finite_evaluation_replaces_the_best():
    model = torch.nn.Linear(1, 1)
    best = BestWeights(criterion_for("cross_entropy"))
    assert not best.offer(1, {"eval_loss": float("nan"), "eval_accuracy": 0.9}, model)  # not finite
    assert best.to_json() is None
    assert best.offer(2, {"eval_loss": 0.5, "eval_accuracy": 0.8}, model)
    assert best.offer(3, {"eval_loss": 0.9, "eval_accuracy": 0.9}, model)  # accuracy decides
    assert not best.offer(4, {"eval_loss": 0.9, "eval_accuracy": 0.9}, model)  # equal: the earlier stays
    assert best.offer(5, {"eval_loss": 0.4, "eval_accuracy": 0.9}, model)  # a tie goes to the lower loss
    assert not best.offer(6, {"eval_loss": 0.1, "eval_accuracy": 0.85}, model)
    assert best.to_json() == {"iteration": 5, "evaluation": {"eval_loss": 0.4, "eval_accuracy": 0.9}}
    with torch.no_grad():
        model.weight.fill_(7.0)  # the kept weights are a copy
    assert best.state is not None and float(best.state["weight"]) != 7.0


# -- a run whose last evaluation spikes -----------------------------------------------------------------
def spiking_eval(monkeypatch: pytest.MonkeyPatch, spike_at: int) -> None:
    """Make the evaluation loss of the weights after ``spike_at`` iterations 1000 times larger,
    as a loss spike would; training itself is untouched."""
    from odespec.train.loop import _Trainer

    evaluate = _Trainer._evaluate
    loss_fn: dict[str, Callable] = {}

    def wrapped(self: Any) -> Any:
        if "fn" not in loss_fn:
            loss_fn["fn"] = self.loss_fn
        real = loss_fn["fn"]
        self.loss_fn = (lambda out, y, m: ((lambda v: (v[0] * 1000, v[1]))(real(out, y, m)))) if self.done == spike_at \
            else real
        try:
            return evaluate(self)
        finally:
            self.loss_fn = real

    monkeypatch.setattr(_Trainer, "_evaluate", wrapped)


SPIKY = demo_spec(iterations=12).replace("checkpoint_every: 5", "checkpoint_every: 4")  # evaluates at 4, 8, 12


def test_the_best_evaluation_is_kept_and_the_last_iterate_beside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spiking_eval(monkeypatch, 12)
    run = tmp_path / "run"
    result = train(write(tmp_path, SPIKY), run, **quiet())
    evals = {r["iteration"]: r["eval_loss"] for r in records(run) if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12] and evals[12] > 100 * max(evals[4], evals[8])
    best = min(evals, key=evals.__getitem__)
    assert same(load_file(str(run / "model.safetensors")), checkpoint_model(run, best))
    assert same(load_file(str(run / "model.last.safetensors")), checkpoint_model(run, 12))
    kept = info(run)["kept"]
    assert kept["choice"] == "best" and kept["iteration"] == best and kept["metric"] == "eval_loss"
    assert kept["value"] == evals[best] and kept["rule"] == "lowest eval_loss"
    assert kept["last"] == {"file": "model.last.safetensors", "iteration": 12, "value": evals[12],
                            "evaluation": {"eval_loss": evals[12]}}
    assert result.kept == kept and result.weights == run / "model.safetensors"
    assert result.evaluation == {"eval_loss": evals[12]}  # the last evaluation, as before
    # the file's metadata says which iteration it is
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert f.metadata()["iterations"] == str(best) and f.metadata()["kept"] == "best"
    # the kept weights are the ones build exports
    model = odespec.build(run / "spec.yaml")
    load_weights(model, run / "model.safetensors")


@pytest.mark.parametrize("stop", [6, 9, 12])
def test_an_interrupted_run_keeps_the_same_best(stop: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Interrupted after the best evaluation (6, 9) or at the spiking last one (12), then
    resumed: the best weights come from the checkpoint and the choice is the uninterrupted one."""
    spiking_eval(monkeypatch, 12)
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(write(tmp_path, SPIKY), ref, **quiet())
    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, SPIKY, "again.yaml"), run, callbacks=[stop_at(stop)], **quiet())
    resumed = resume(run, **quiet())
    assert resumed.kept == info(ref)["kept"] and resumed.kept["iteration"] < 12
    for name in ("model.safetensors", "model.last.safetensors"):
        assert same(load_file(str(run / name)), load_file(str(ref / name)))
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in records(d)] for d in (run, ref)]
    assert strip[0] == strip[1]


def test_the_last_evaluation_cut_short_is_redone_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C during the evaluation after the last iteration: the resumed run makes it, logs it
    and lets it compete, as the uninterrupted run did."""
    from odespec.train.loop import _Trainer

    ref, run = tmp_path / "ref", tmp_path / "run"
    train(write(tmp_path, SPIKY), ref, **quiet())
    evaluate = _Trainer._evaluate

    def interrupted_at_12(self: Any) -> Any:
        if self.done == 12:
            raise KeyboardInterrupt
        return evaluate(self)

    monkeypatch.setattr(_Trainer, "_evaluate", interrupted_at_12)
    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, SPIKY, "again.yaml"), run, **quiet())
    assert "eval_loss" not in records(run)[-1] and records(run)[-1]["iteration"] == 12
    monkeypatch.setattr(_Trainer, "_evaluate", evaluate)
    resume(run, **quiet())
    assert records(run)[-1]["eval_loss"] == records(ref)[-1]["eval_loss"]
    assert info(run)["kept"] == info(ref)["kept"]
    assert same(load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors")))


def test_checkpoints_hold_the_best_so_far(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spiking_eval(monkeypatch, 12)
    run = tmp_path / "run"
    train(write(tmp_path, SPIKY), run, **quiet())
    doc = json.loads((run / "checkpoints" / "iter-00000012.json").read_text())
    best = doc["best"]["iteration"]
    assert best in (4, 8) and doc["best"]["evaluation"]["eval_loss"] == info(run)["kept"]["value"]
    tensors = load_file(str(run / "checkpoints" / "iter-00000012.safetensors"))
    kept = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    assert same(kept, checkpoint_model(run, best))


def test_a_run_evaluated_only_at_the_end_keeps_its_last_iterate(tmp_path: Path):
    run = tmp_path / "run"
    result = train(write(tmp_path, demo_spec(iterations=6).replace("eval_every: 4", "eval_every: 0")), run, **quiet())
    assert not (run / "model.last.safetensors").exists()
    assert same(load_file(str(run / "model.safetensors")), checkpoint_model(run, 6))
    assert result.kept == {"choice": "last", "file": "model.safetensors", "iteration": 6,
                           "evaluation": result.evaluation}
    assert "best" not in info(run)
    assert "best" not in json.loads((run / "checkpoints" / "iter-00000006.json").read_text())


def test_classifiers_keep_the_best_accuracy(tmp_path: Path):
    run = tmp_path / "run"
    train(write(tmp_path, circles_spec(iterations=12)), run, **quiet())
    evals = [(r["iteration"], r["eval_accuracy"], r["eval_loss"]) for r in records(run) if "eval_loss" in r]
    want = min(evals, key=lambda e: (-e[1], e[2], e[0]))  # highest accuracy, then lowest loss, then earliest
    kept = info(run)["kept"]
    assert (kept["iteration"], kept["value"], kept["metric"]) == (want[0], want[1], "eval_accuracy")


def test_the_command_says_which_weights_it_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spiking_eval(monkeypatch, 12)
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(write(tmp_path, SPIKY)), "-o", str(run)])
    assert r.exit_code == 0, r.output
    kept = info(run)["kept"]
    line = r.stdout.splitlines()[3]
    assert line.startswith(f"model.safetensors holds the best evaluation (lowest eval_loss): iteration "
                           f"{kept['iteration']}, eval_loss {kept['value']:.4g}; the last iterate, iteration 12, "
                           f"eval_loss {kept['last']['value']:.4g}, is in {run / 'model.last.safetensors'}")
    r = CliRunner().invoke(cli, ["train", str(write(tmp_path, SPIKY, "b.yaml")), "-o", str(tmp_path / "b"),
                                 "--format", "json"])
    assert json.loads(r.stdout)["kept"]["iteration"] == kept["iteration"]


# -- gradient clipping ------------------------------------------------------------------------------------
def test_clip_grad_norm_is_checked():
    for value, message in (("0", "clip_grad_norm"), ("-1", "clip_grad_norm"), ("big", "clip_grad_norm")):
        with pytest.raises(SpecError, match=message):
            parse_spec(demo_spec() + f"  clip_grad_norm: {value}\n")
    spec = parse_spec(demo_spec() + "  clip_grad_norm: 2.5\n")
    assert spec.train.clip_grad_norm == 2.5 and parse_spec(demo_spec()).train.clip_grad_norm is None


def _initial_weights(spec_path: Path) -> dict[str, torch.Tensor]:
    from odespec.train.reinit import apply_init

    spec = odespec.load_spec(spec_path)
    model = odespec.build(spec)
    apply_init(model, spec.train.init, spec.seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_clipping_bounds_the_step_and_logs_the_norm_before(tmp_path: Path):
    """Plain SGD: one step moves the weights by lr times the clipped gradient, whose norm is
    the limit; the record holds the norm before clipping."""
    text = demo_spec(iterations=1).replace("optimizer: rmsprop", "optimizer: sgd")
    limit = 1e-3
    spec = write(tmp_path, text + f"  clip_grad_norm: {limit}\n")
    train(spec, tmp_path / "run", **quiet())
    (rec,) = records(tmp_path / "run")
    assert rec["grad_norm"] > 10 * limit
    w0, w1 = _initial_weights(spec), load_file(str(tmp_path / "run" / "model.last.safetensors"))
    step = torch.sqrt(sum(((w1[k].double() - w0[k].double()) ** 2).sum() for k in w0))
    assert float(step) == pytest.approx(0.01 * limit, rel=1e-3)  # lr 0.01
    # without clipping: no grad_norm, and a step of lr times the logged norm
    plain = write(tmp_path, text, "plain.yaml")
    train(plain, tmp_path / "plain", **quiet())
    assert "grad_norm" not in records(tmp_path / "plain")[0]
    w1 = load_file(str(tmp_path / "plain" / "model.last.safetensors"))
    step = torch.sqrt(sum(((w1[k].double() - w0[k].double()) ** 2).sum() for k in w0))
    assert float(step) == pytest.approx(0.01 * rec["grad_norm"], rel=1e-3)


def test_a_limit_never_reached_changes_nothing(tmp_path: Path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(write(tmp_path, demo_spec(iterations=6)), ref, **quiet())
    train(write(tmp_path, demo_spec(iterations=6) + "  clip_grad_norm: 1.0e+6\n", "c.yaml"), run, **quiet())
    assert [{k: v for k, v in r.items() if k not in ("seconds", "grad_norm")} for r in records(run)] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in records(ref)]
    assert same(load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors")))


def test_clipping_survives_an_interruption(tmp_path: Path):
    text = demo_spec(iterations=12) + "  clip_grad_norm: 0.05\n"
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(write(tmp_path, text), ref, **quiet())
    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, text, "again.yaml"), run, callbacks=[stop_at(7)], **quiet())
    resume(run, **quiet())
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in records(run)] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in records(ref)]
    assert any(r["grad_norm"] > 0.05 for r in records(ref))  # the limit did clip
    assert same(load_file(str(run / "model.safetensors")), load_file(str(ref / "model.safetensors")))


# -- --resume of a finished run ---------------------------------------------------------------------------
def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file()}


def test_resuming_a_finished_run_does_nothing(tmp_path: Path):
    run = tmp_path / "run"
    done = train(write(tmp_path, demo_spec(iterations=6)), run, **quiet())
    before = _snapshot(run)
    result = resume(run, **quiet())
    assert result.already_finished and not done.already_finished
    assert (result.iterations, result.weights, result.kept, result.evaluation) == \
        (6, run / "model.safetensors", done.kept, done.evaluation)
    assert resume(run, iterations=6, **quiet()).already_finished  # not an extension either
    assert _snapshot(run) == before  # not a byte rewritten
    with pytest.raises(TrainError, match="--iterations 4 cannot shorten it"):
        resume(run, iterations=4, **quiet())
    assert _snapshot(run) == before


def test_resume_on_the_command_line_of_a_finished_run(tmp_path: Path):
    run = tmp_path / "run"
    spec = write(tmp_path, demo_spec(iterations=6))
    assert CliRunner().invoke(cli, ["train", str(spec), "-o", str(run)]).exit_code == 0
    before = _snapshot(run)
    r = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == (f"{run} is already finished (6 iterations); nothing was trained. To train "
                                        f"longer: odespec train --resume {run} --iterations N (N above 6)")
    assert "model.safetensors holds the best evaluation" in r.stdout
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["already_finished"] is True
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--iterations", "3"])
    assert r.exit_code == 2 and "cannot shorten it" in r.stderr
    assert _snapshot(run) == before
    r = CliRunner().invoke(cli, ["train", "--resume", str(run), "--iterations", "8", "--format", "json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["iterations"] == 8  # an extension trains


def test_resume_refuses_to_end_before_its_checkpoint(tmp_path: Path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, demo_spec()), run, callbacks=[stop_at(7)], **quiet())
    with pytest.raises(TrainError, match="--iterations 5 would end the run before its latest checkpoint, of "
                                         "iteration 7"):
        resume(run, iterations=5, **quiet())
    assert resume(run, iterations=7, **quiet()).iterations == 7


# -- errors name only files that exist --------------------------------------------------------------------
def _nan_loss_at(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    import odespec.train.loop as loop

    make_loss = loop.make_loss

    def nan_loss(spec: Any, model: Any) -> Any:
        fn = make_loss(spec, model)
        calls = {"n": 0}

        def loss(out: torch.Tensor, y: torch.Tensor, y_mask: Any = None) -> Any:
            if torch.is_grad_enabled():
                calls["n"] += 1
            value, extra = fn(out, y, y_mask)
            return (value * float("nan") if calls["n"] == at else value), extra

        return loss

    monkeypatch.setattr(loop, "make_loss", nan_loss)


def test_a_failure_before_the_first_checkpoint_names_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _nan_loss_at(monkeypatch, 3)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as e:
        train(write(tmp_path, demo_spec()), run, **quiet())
    assert "no checkpoint was written yet (the first is due at iteration 5)" in str(e.value)
    assert "checkpoints" not in str(e.value) and not any((run / "checkpoints").iterdir())


def test_a_failure_after_a_checkpoint_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _nan_loss_at(monkeypatch, 7)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed) as e:
        train(write(tmp_path, demo_spec()), run, **quiet())
    ckpt = run / "checkpoints" / "iter-00000005.json"
    assert f"the latest checkpoint is {ckpt}" in str(e.value) and ckpt.is_file()


def test_an_exceeded_budget_without_a_checkpoint_says_to_start_again(tmp_path: Path):
    from odespec.train.regularise import NfeBudgetExceeded

    spec = write(tmp_path, circles_spec(iterations=12) + "  max_nfe: 10\n")
    with pytest.raises(NfeBudgetExceeded) as e:
        train(spec, tmp_path / "run", **quiet())
    assert f"start again with a larger budget: odespec train {spec} -o NEW_DIR --max-nfe 20" in str(e.value)
    assert "--resume" not in str(e.value)


def test_resume_without_a_checkpoint_names_a_spec_that_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _nan_loss_at(monkeypatch, 2)
    spec = write(tmp_path, demo_spec())
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed):
        train(spec, run, **quiet())
    with pytest.raises(TrainError, match=f"start the run again: odespec train {spec} -o NEW_DIR"):
        resume(run, **quiet())
    spec.unlink()
    with pytest.raises(TrainError) as e:
        resume(run, **quiet())
    assert str(spec) not in str(e.value) and str(run / "spec.yaml") in str(e.value)
