"""The training loop: :func:`train` starts a run, :func:`resume` continues one exactly.

The loop just calls the compiled model (through ``forward_with_posterior``, which hands the
losses q(z0) beside the output), so each ODE block trains with its own solver and gradient
method. Exact resumption rests on three things: batches are a pure function of the
iteration (:mod:`odespec.train.batches`), the learning rate too (:func:`~odespec.train.optim.lr_at`),
and the global RNG state (which the gaussian layer and dropout draw from) is saved as it was at
the start of the first iteration a checkpoint does not contain. So an interrupted-then-resumed
run makes bit for bit the losses and weights of an uninterrupted one (on the same machine and
device).

Regularisers and the NFE budget (:mod:`odespec.train.regularise`) hook into the ODE blocks'
training solves; under torchrun the loop trains data-parallel (:mod:`odespec.train.distributed`).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO, Union

import torch

import odespec
from odespec.compile.model import ModelOutput, ODENet, compile_spec, resolve_device
from odespec.errors import SolverError
from odespec.spec import load_spec
from odespec.spec.model import Spec
from odespec.train import data as sources
from odespec.train.batches import Batch, Batches
from odespec.train.best import BestWeights, criterion_for
from odespec.train.checkpoint import (
    capture_rng,
    checkpoint_iteration,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from odespec.train.data import Need
from odespec.train.distributed import DistContext, setup, teardown
from odespec.train.errors import TrainError, TrainingFailed, TrainingInterrupted
from odespec.train.interrupt import InterruptGuard
from odespec.train.losses import counted_samples, make_loss
from odespec.train.optim import lr_at, make_optimizer, set_lr
from odespec.train.progress import Progress
from odespec.train.regularise import NfeBudgetExceeded, attach, regularisation_loss
from odespec.train.reinit import apply_init
from odespec.train.rundir import (
    CHECKPOINTS,
    LAST_WEIGHTS_FILE,
    METRICS_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    MetricsLog,
    create_run,
    read_run_info,
    write_run_info,
)

__all__ = ["train", "resume", "TrainResult", "Callback", "DEFAULT_ITERATIONS"]

PathLike = Union[str, "os.PathLike[str]"]
#: called with each finished iteration's record (a copy); raising KeyboardInterrupt stops
#: training as Ctrl-C does
Callback = Callable[[dict[str, Any]], None]
#: iterations when the spec gives neither iterations nor epochs
DEFAULT_ITERATIONS = 1000


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    name: str
    iterations: int
    last: dict[str, Any]
    evaluation: dict[str, Any]
    weights: Path
    seconds: float
    #: which weights ``weights`` holds (run.json's ``kept``): ``choice`` ``best`` or ``last``, the
    #: ``iteration`` and ``evaluation`` they were made at, and for a run that keeps its best
    #: evaluation, the ``rule``, the deciding ``metric`` and its ``value``, and the ``last`` iterate's
    kept: dict[str, Any] = field(default_factory=dict)
    #: True when :func:`resume` found the run already finished and trained nothing
    already_finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "name": self.name, "iterations": self.iterations,
                "last": self.last, "evaluation": self.evaluation, "weights": str(self.weights),
                "seconds": round(self.seconds, 3), "kept": self.kept, "already_finished": self.already_finished}


def train(spec: Union[Spec, PathLike], run_dir: Optional[PathLike] = None, *, iterations: Optional[int] = None,
          device: Optional[str] = None, max_nfe: Optional[int] = None, callbacks: Sequence[Callback] = (),
          progress: bool = True, stream: Optional[TextIO] = None) -> TrainResult:
    """Train the model a spec describes, per its ``train`` section, into a new run directory
    (default ``runs/NAME``). ``iterations``/``device``/``max_nfe`` override the spec's. Ctrl-C
    writes a checkpoint and raises :class:`TrainingInterrupted`; continue with :func:`resume` (one
    held back through the final save, after the last iteration, reaches the caller as
    KeyboardInterrupt once the run has finished).
    Started by torchrun with several processes, trains data-parallel (only rank 0 writes)."""
    spec_obj = spec if isinstance(spec, Spec) else load_spec(spec)
    if spec_obj.train is None:
        raise TrainError(f"{spec_obj.source_file} has no train section",
                         "add one, e.g. train: {data: circles, iterations: 500}; see the README's Training section")
    source = Path(spec_obj.source_file)
    try:
        text = source.read_bytes()
    except OSError:
        raise TrainError(f"cannot read the spec file {source} (a run keeps a copy of it)",
                         "load the spec from a file: odespec.load_spec(PATH)") from None
    if hashlib.sha256(text).hexdigest() != spec_obj.source_sha256:
        raise TrainError(f"{source} changed after it was loaded", "load it again")
    run = Path(run_dir) if run_dir is not None else Path("runs") / spec_obj.name
    dev = device or spec_obj.train.device or spec_obj.device
    resolve_device(dev)  # a missing CUDA is reported before anything is written
    ctx = setup(dev)
    try:
        trainer = _Trainer(spec_obj, run, base_dir=source.resolve().parent, device=dev, iterations=iterations,
                           callbacks=callbacks, progress=progress, stream=stream, max_nfe=max_nfe, dist=ctx)
        message = None
        if ctx.main:
            try:
                create_run(run, text, trainer.info("running"))
            except TrainError as e:
                if not ctx.active:
                    raise
                message = str(e)
        ctx.share_error(message)
        return trainer.run()
    finally:
        teardown(ctx)


def resume(run_dir: PathLike, *, iterations: Optional[int] = None, device: Optional[str] = None,
           max_nfe: Optional[int] = None, callbacks: Sequence[Callback] = (), progress: bool = True,
           stream: Optional[TextIO] = None) -> TrainResult:
    """Continue a run from its latest checkpoint, exactly as if it had not stopped.
    ``iterations`` changes the total (a longer run; a cosine schedule then stretches too);
    ``max_nfe`` the NFE budget (after a run stopped for exceeding it). A finished run that
    ``iterations`` does not extend is left as it is: the result describes it, with
    ``already_finished`` set."""
    run = Path(run_dir)
    info = read_run_info(run)
    spec = load_spec(run / SPEC_FILE, data_dir=info["data_base_dir"])
    if spec.source_sha256 != info.get("spec_sha256"):
        raise TrainError(f"{run / SPEC_FILE} is not the spec this run was trained with (its hash changed)",
                         "start a new run with the edited spec: odespec train SPEC -o NEW_DIR")
    if info.get("status") == "finished" and (iterations is None or iterations <= info.get("completed", 0)):
        return _already_finished(run, info, iterations)
    ckpt = latest_checkpoint(run / CHECKPOINTS)
    if ckpt is None:
        source = info.get("spec_source")
        again = f"odespec train {source} -o NEW_DIR" if source and Path(source).is_file() else \
            f"odespec train SPEC -o NEW_DIR, with the spec this run was made from (copied to {run / SPEC_FILE})"
        raise TrainError(f"{run / CHECKPOINTS} holds no complete checkpoint to resume from",
                         f"start the run again: {again}")
    done = checkpoint_iteration(ckpt)
    if iterations is not None and iterations < done:
        raise TrainError(f"--iterations {iterations} would end the run before its latest checkpoint, of iteration "
                         f"{done} ({ckpt})", f"give --iterations {done} or more")
    assert spec.train is not None  # the spec the run was trained with
    dev = device or info["device"]
    ctx = setup(dev)
    try:
        trainer = _Trainer(spec, run, base_dir=Path(info["data_base_dir"]), device=dev,
                           iterations=iterations or info["iterations"], callbacks=callbacks, progress=progress,
                           stream=stream, checkpoint=ckpt, created=info.get("created"),
                           max_nfe=max_nfe if max_nfe is not None else info.get("max_nfe", spec.train.max_nfe),
                           dist=ctx)
        if ctx.main:
            write_run_info(run, trainer.info("running"))
        return trainer.run()
    finally:
        teardown(ctx)


def _already_finished(run: Path, info: dict[str, Any], iterations: Optional[int]) -> TrainResult:
    """``resume`` of a finished run that ``iterations`` does not extend: nothing to train."""
    completed = int(info.get("completed", 0))
    if iterations is not None and iterations < completed:
        raise TrainError(f"{run} finished after {completed} iterations; --iterations {iterations} cannot shorten it",
                         f"to train longer, give more than {completed}; for a shorter run start a new one with "
                         "-o NEW_DIR")
    weights = run / WEIGHTS_FILE
    if not weights.is_file():
        raise TrainError(f"{run} finished after {completed} iterations, but its {WEIGHTS_FILE} is missing",
                         f"to train longer: odespec train --resume {run} --iterations N (N above {completed}); "
                         "otherwise start a new run with -o NEW_DIR")
    last = info.get("last") or {}
    return TrainResult(run_dir=run, name=str(info.get("name", run.name)), iterations=completed, last=last,
                       evaluation=dict(info.get("evaluation") or {}), weights=weights,
                       seconds=float(last.get("seconds", 0.0)), kept=dict(info.get("kept") or {}),
                       already_finished=True)


class _WithPosterior(torch.nn.Module):
    """``model.forward_with_posterior`` as a module's ``forward``: DDP wraps ``forward`` alone.
    Holds the model itself, so the parameters (and their order) are the model's."""

    def __init__(self, model: ODENet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, **inputs: torch.Tensor) -> ModelOutput:
        return self.model.forward_with_posterior(x, **inputs)


class _Trainer:
    """One run's state: model, optimizer, data, logs; :meth:`run` trains to the total."""

    def __init__(self, spec: Spec, run_dir: Path, *, base_dir: Path, device: str, iterations: Optional[int],
                 callbacks: Sequence[Callback], progress: bool, stream: Optional[TextIO],
                 checkpoint: Optional[Path] = None, created: Optional[str] = None, max_nfe: Optional[int] = None,
                 dist: Optional[DistContext] = None):
        assert spec.train is not None
        self.spec, self.ts = spec, spec.train
        self.dist = dist or DistContext()
        self.run_dir, self.base_dir, self.device_name = run_dir, base_dir, device
        self.device = resolve_device(self.dist.device_name(device))
        self.callbacks = list(callbacks)
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.model = compile_spec(spec, device=str(self.device))
        self.max_nfe = max_nfe if max_nfe is not None else self.ts.max_nfe
        self.hooks = attach(self.model, self.model.ode_blocks, self.ts.regularise, self.max_nfe)
        self.shard = self.dist.shard(self.ts.batch_size) if self.dist.active else None
        self.failure: Optional[str] = None
        self.loss_fn = make_loss(self.ts.loss, self.model)
        self.optimizer = make_optimizer(self.ts.optimizer, self.model.parameters(), self.ts.lr)
        labels = self.ts.loss.kind == "cross_entropy"
        need = Need.of(spec.input_shape, spec.output_shape, labels, spec.series, spec.model)
        loaded = sources.get(self.ts.data.source).load(self.ts.data.options, seed=self.ts.seed, base_dir=base_dir,
                                                       need=need)
        dtype = next(self.model.parameters()).dtype
        self.batches = Batches(loaded, self.ts.batch_size, seed=self.ts.seed, device=self.device, dtype=dtype,
                               labels=labels)
        self.total = iterations or self.ts.iterations or (
            self.batches.steps_for_epochs(self.ts.epochs) if self.ts.epochs else DEFAULT_ITERATIONS)
        self.done = 0
        self.elapsed = 0.0
        self.eval_done_at = -1
        self.last_eval: dict[str, Any] = {}
        self.rng: Optional[dict[str, Any]] = None  # restored from the checkpoint when resuming
        # a run that evaluates along the way keeps its best weights; one evaluated only at the
        # end has nothing to choose from
        self.best = BestWeights(criterion_for(self.ts.loss.kind)) if self.ts.eval_every > 0 else None
        #: holds Ctrl-C back while :meth:`run` changes the state a checkpoint records
        self.guard = InterruptGuard()
        #: which weights model.safetensors holds (set when the run finishes)
        self.kept: Optional[dict[str, Any]] = None
        self.checkpoint = checkpoint
        self.metrics = MetricsLog(run_dir / METRICS_FILE, write=self.dist.main)
        self.progress = Progress(self.total, every=self.ts.log_every or max(1, self.total // 50), stream=stream,
                                 enabled=progress and self.dist.main)
        if checkpoint is None:
            apply_init(self.model, self.ts.init, spec.seed)
        else:
            self._load(checkpoint)
        # the training forward passes go through DDP when distributed; evaluation uses the model
        self.net = self.dist.wrap(_WithPosterior(self.model))

    # -- bookkeeping ------------------------------------------------------------------------------------
    def info(self, status: str) -> dict[str, Any]:
        """The content of run.json."""
        return {"odespec_version": odespec.__version__, "name": self.spec.name, "spec_file": SPEC_FILE,
                "spec_source": str(self.spec.source_file), "spec_sha256": self.spec.source_sha256,
                "data_base_dir": str(self.base_dir), "iterations": self.total, "device": self.device_name,
                "created": self.created, "status": status, "completed": self.done,
                "max_nfe": self.max_nfe, "processes": self.dist.world,
                # what turns iterations into epochs (for plots of a run given in epochs)
                "length_unit": "epochs" if self.ts.epochs else "iterations", "batch_size": self.ts.batch_size,
                "samples_per_epoch": self.batches.n,
                **({"failure": self.failure} if self.failure and status == "failed" else {}),
                "last": self.metrics.last, "evaluation": self.last_eval,
                **({"best": self._best_so_far()} if self.best is not None else {}),
                **({"kept": self.kept} if self.kept is not None and status == "finished" else {})}

    def _best_so_far(self) -> Optional[dict[str, Any]]:
        """run.json's ``best``: the rule, and the best evaluation's iteration and metrics so far."""
        assert self.best is not None
        best = self.best.to_json()
        return None if best is None else {"rule": self.best.criterion.describe(), **best}

    def _load(self, checkpoint: Path) -> None:
        doc, extra = load_checkpoint(checkpoint, self.model, self.optimizer)
        if self.best is not None:
            self.best.restore(doc.get("best"), extra)
        self.done = doc["iteration"]
        self.elapsed = doc.get("seconds", 0.0)
        self.rng = doc["rng"]
        self.last_eval = doc.get("evaluation", {})
        self.eval_done_at = self.done if doc.get("eval_done") else -1
        self.metrics = MetricsLog.resume(self.run_dir / METRICS_FILE, self.done, write=self.dist.main)

    def _seconds(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def _save_checkpoint(self, rng: dict[str, Any]) -> Path:
        state = {"rng": rng, "data_cursor": self.batches.cursor(self.done), "seconds": round(self._seconds(), 4),
                 "eval_done": self.eval_done_at == self.done, "evaluation": self.last_eval,
                 "total_iterations": self.total, "spec_sha256": self.spec.source_sha256}
        extra = None
        if self.best is not None:
            state["best"] = self.best.to_json()
            extra = self.best.tensors()
        path = save_checkpoint(self.run_dir / CHECKPOINTS, self.done, self.model, self.optimizer, state, extra)
        self.metrics.flush()
        return path

    def _nfe_backward(self) -> Optional[int]:
        counts = [getattr(b, "nfe_backward", None) for b in self.model.ode_blocks]
        known = [c for c in counts if c is not None]
        return sum(known) if known else None

    def _fork_rng(self) -> Any:
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    # -- one iteration ------------------------------------------------------------------------------------
    def _nfe_count(self) -> int:
        """Evaluations of every solved block's dynamics so far (the NFE of a failed forward)."""
        return sum(getattr(m.dynamics, "nfe", 0) for m in self.model.solved)

    def _forward(self, batch: Batch) -> tuple[Optional[ModelOutput], int, bool]:
        """(output, forward NFE, whether the NFE budget was exceeded). A solve stopped by the
        budget's step limit returns no output. A series model gets its other inputs (times,
        masks, query times) by keyword; any other model ``x`` alone."""
        before = self._nfe_count()
        try:
            out = self.net(batch.x, **batch.inputs)
        except SolverError as e:
            if self.max_nfe is None or e.reason != "max-steps":
                raise
            return None, self._nfe_count() - before, True
        nfe = self.model.nfe_forward
        return out, nfe, self.max_nfe is not None and nfe > self.max_nfe

    def _budget_exceeded(self, lr: float, nfe: int) -> NfeBudgetExceeded:
        """Record the iteration that broke the NFE budget; the error that stops training."""
        assert self.max_nfe is not None  # only a budget can be exceeded
        it = self.done + 1
        self.metrics.append({"iteration": it, "loss": None, "lr": lr, "nfe_forward": nfe, "nfe_backward": None,
                             "nfe_budget_exceeded": True, "max_nfe": self.max_nfe})
        larger = f"--max-nfe {2 * self.max_nfe}"
        if latest_checkpoint(self.run_dir / CHECKPOINTS) is not None:
            go_on = f"continue from the last checkpoint with a larger budget: odespec train --resume {self.run_dir} {larger}"
        else:  # nothing to resume from yet
            go_on = f"start again with a larger budget: odespec train {self.spec.source_file} -o NEW_DIR {larger}"
        self.failure = (f"iteration {it}: the forward pass needed more than max_nfe={self.max_nfe} function "
                        f"evaluations (stopped at {nfe})")
        return NfeBudgetExceeded(self.failure, "regularise the dynamics (train.regularise: {kinetic: 0.01, "
                                 f"jacobian: 0.01}}), loosen the solver's rtol/atol, or {go_on}", nfe=nfe)

    def _restart_hint(self) -> str:
        """What a failed run leaves to go on from, naming only files that exist."""
        ckpt = latest_checkpoint(self.run_dir / CHECKPOINTS)
        if ckpt is None:
            every = self.ts.checkpoint_every
            due = f" (the first is due at iteration {every})" if every else ""
            return f"no checkpoint was written yet{due}; start a new run"
        return f"the latest checkpoint is {ckpt}"

    def _step(self) -> dict[str, Any]:
        """Forward and backward for iteration ``done + 1``; changes no weight."""
        lr = lr_at(self.ts.schedule, self.ts.lr, self.done, self.total, epoch=self.batches.cursor(self.done)["epoch"])
        set_lr(self.optimizer, lr)
        batch = self.batches.batch(self.done, self.shard)
        x = batch.x
        self.optimizer.zero_grad(set_to_none=True)
        out, nfe_forward, exceeded = self._forward(batch)
        # every rank must learn that one stopped, or the others would wait for it in backward
        flag, nfe_most = self.dist.max([float(exceeded), nfe_forward], x)
        nfe_forward = int(nfe_most)
        if flag:
            with self.guard.deferred():  # the record of the broken budget and the error that stops training
                raise self._budget_exceeded(lr, nfe_forward)
        assert out is not None
        loss, extra = self.loss_fn(out, batch.y, batch.y_mask)
        reg, reg_metrics = regularisation_loss(self.hooks, self.ts.regularise)
        objective = loss if reg is None else loss + reg
        names = ["loss", *extra, *reg_metrics] + (["objective"] if reg is not None else [])
        values = [loss.item(), *extra.values(), *reg_metrics.values()] + ([objective.item()] if reg is not None else [])
        metrics = dict(zip(names, self.dist.mean(values, x), strict=True))  # the global batch's values
        value = metrics.get("objective", metrics["loss"])
        if not math.isfinite(value):
            raise TrainingFailed(f"the loss is {value} at iteration {self.done + 1}",
                             "lower lr, or use tighter solver tolerances; " + self._restart_hint())
        objective.backward()
        nfe_backward = self._nfe_backward()
        if nfe_backward is not None:
            nfe_backward = int(self.dist.max([nfe_backward], x)[0])
        record = {"iteration": self.done + 1, **metrics, "lr": lr, "nfe_forward": nfe_forward,
                  "nfe_backward": nfe_backward}
        if self.ts.clip_grad_norm is not None:
            record["grad_norm"] = self._clip_gradients(self.ts.clip_grad_norm)
        return record

    def _clip_gradients(self, max_norm: float) -> float:
        """Scale the gradients to a global 2-norm of at most ``max_norm``; the norm before.
        Data-parallel, the gradients are already the ranks' average, so every rank clips alike."""
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        if not math.isfinite(norm):
            raise TrainingFailed(f"the gradient norm is {norm} at iteration {self.done + 1} (the loss was finite)",
                                 "lower lr, or use tighter solver tolerances; " + self._restart_hint())
        return norm

    def _evaluate(self) -> dict[str, Any]:
        """Loss and metrics on the evaluation set, in eval mode, touching no RNG state; added to
        the latest record and offered to the best weights. Ctrl-C stops the forward passes alone:
        an evaluation is recorded whole or not at all (then a resumed run makes it again)."""
        self.model.eval()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            with torch.no_grad(), self._fork_rng(), self.guard.interruptible():
                for b in self.batches.eval_chunks():
                    loss, extra = self.loss_fn(self.model.forward_with_posterior(b.x, **b.inputs), b.y, b.y_mask)
                    k = len(b.x)
                    # a chunk's loss weighs as many samples as it averages over (masked mse/l1
                    # leave out samples with no observed target), so that the evaluation's loss
                    # is the loss of the whole set at once
                    weights = {"loss": counted_samples(self.ts.loss.kind, k, b.y_mask)}
                    for name, v in {"loss": loss.item(), **extra}.items():
                        w = weights.get(name, k)
                        sums[name] = sums.get(name, 0.0) + v * w
                        counts[name] = counts.get(name, 0) + w
        finally:
            self.model.train()
        evaluation = {f"eval_{k}": v / counts[k] if counts[k] else math.nan for k, v in sums.items()}
        self.eval_done_at = self.done
        self.last_eval = evaluation
        if self.metrics.last is not None and self.metrics.last["iteration"] == self.done:
            self.metrics.update_last(evaluation)
        if self.best is not None:
            self.best.offer(self.done, evaluation, self.model)
        return evaluation

    def _eval_due(self) -> bool:
        every = self.ts.eval_every
        return (every > 0 and self.done % every == 0) or self.done == self.total

    def _after(self) -> None:
        """Evaluation, checkpoint, progress and callbacks after iteration ``done``."""
        # data-parallel: rank 0 evaluates and writes; the others go on and wait for it in the
        # next iteration's collectives
        if self._eval_due() and self.dist.main:
            self._evaluate()
        every = self.ts.checkpoint_every
        if ((every > 0 and self.done % every == 0) or self.done == self.total) and self.dist.main:
            self._save_checkpoint(capture_rng(self.device))
        self.metrics.flush(if_due=True)
        assert self.metrics.last is not None
        self.progress.update(self.metrics.last)
        with self.guard.interruptible():  # the user's code, which may take long
            for callback in self.callbacks:
                callback(dict(self.metrics.last))

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train from :attr:`done` to :attr:`total`. Ctrl-C (held back by :attr:`guard` outside
        the forward and backward passes, so that every change of state an iteration makes, and the
        checkpoint that records it, happen whole) writes a checkpoint of the iterations completed
        and raises :class:`TrainingInterrupted`."""
        self._t0 = time.perf_counter()
        guard = self.guard
        # the guard first: the RNG fork and the grad mode are then entered and left whole, and the
        # caller gets both back as they were even when Ctrl-C stops a forward pass halfway through
        # one of the solver's own no_grad blocks
        with guard, self._fork_rng(), torch.enable_grad():
            if self.rng is None:
                torch.manual_seed(self.ts.seed)
            else:
                restore_rng(self.rng)
            self.model.train()
            pending: Optional[dict[str, Any]] = None
            try:
                if (self.done and self.done < self.total and self._eval_due() and self.eval_done_at != self.done
                        and self.dist.main):
                    self._evaluate()  # Ctrl-C had cut this evaluation short
                while self.done < self.total:
                    if self.dist.active:
                        self.dist.seed(self.ts.seed, self.done)
                    pending = capture_rng(self.device)  # what a checkpoint of `done` must restore
                    with guard.interruptible():
                        record = self._step()
                    # Ctrl-C is held back again until the next interruptible block: the update,
                    # its record, the evaluation and the checkpoint happen whole
                    self.optimizer.step()
                    self.done += 1
                    pending = None
                    record["seconds"] = round(self._seconds(), 4)
                    self.metrics.append(record)
                    self._after()
                result = self._finish()
            except KeyboardInterrupt:
                path = self._checkpoint_path(pending)
                if self.dist.main:
                    write_run_info(self.run_dir, self.info("interrupted"))
                self.progress.message(f"interrupted after iteration {self.done}; checkpoint written")
                raise TrainingInterrupted(self.run_dir, self.done, self.total, path) from None
            except Exception as e:
                # a failed solve, a diverged loss or a broken NFE budget: keep the metrics so far
                # and say so in run.json; the last periodic checkpoint is still there to resume from
                self.progress.close()
                self.metrics.flush()
                self.failure = self.failure or str(e).split("\n")[0]
                if self.dist.main:
                    write_run_info(self.run_dir, self.info("failed"))
                raise
        return result

    def _checkpoint_path(self, pending: Optional[dict[str, Any]]) -> Path:
        """Write the checkpoint of an interruption (rank 0); its path on every rank."""
        if self.dist.main:
            return self._save_checkpoint(pending or capture_rng(self.device))
        return self.run_dir / CHECKPOINTS

    def _finish(self) -> TrainResult:
        self.progress.close()
        weights = self.run_dir / WEIGHTS_FILE
        if self.dist.main:
            if self.eval_done_at != self.done:  # resumed at the total: evaluate the weights once
                self._evaluate()
            weights = self._save_final_weights()
            self.metrics.flush()
            write_run_info(self.run_dir, self.info("finished"))
        return TrainResult(run_dir=self.run_dir, name=self.spec.name, iterations=self.done,
                           last=dict(self.metrics.last or {}), evaluation=dict(self.last_eval), weights=weights,
                           seconds=self._seconds(), kept=dict(self.kept or {}))

    def _save_final_weights(self) -> Path:
        """Write ``model.safetensors``: the best evaluation's weights in a run that keeps them
        (the last iterate goes beside it, in ``model.last.safetensors``), else the last iterate.
        Records the choice in :attr:`kept` for run.json."""
        meta = {"odespec_name": self.spec.name, "spec_sha256": self.spec.source_sha256}
        last: dict[str, Any] = {"iteration": self.done, "evaluation": dict(self.last_eval)}
        if self.best is None:
            self.kept = {"choice": "last", "file": WEIGHTS_FILE, **last}
            return save_weights(self.run_dir / WEIGHTS_FILE, self.model, {**meta, "iterations": str(self.done)})
        rule = self.best.criterion
        save_weights(self.run_dir / LAST_WEIGHTS_FILE, self.model,
                     {**meta, "iterations": str(self.done), "kept": "last"})
        best = self.best.to_json()
        state = self.best.state
        if best is None or state is None:  # no finite evaluation: nothing beats the last iterate
            best, state = last, self.model.state_dict()
        choice = "best" if best is not last else "last"
        self.kept = {"choice": choice, "rule": rule.describe(), "metric": rule.metric, "file": WEIGHTS_FILE,
                     "iteration": best["iteration"], "value": best["evaluation"].get(rule.metric),
                     "evaluation": best["evaluation"],
                     "last": {"file": LAST_WEIGHTS_FILE, "iteration": self.done,
                              "value": self.last_eval.get(rule.metric), "evaluation": dict(self.last_eval)}}
        return save_weights(self.run_dir / WEIGHTS_FILE, state,
                            {**meta, "iterations": str(best["iteration"]), "kept": choice})
