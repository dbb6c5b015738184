"""How far an output is from a reference: the models' outputs on an :class:`InputSet`, the
error measure, and the deployment error (onnxruntime's output of the exported graph against the
model solved with its *training* solver).

The error of an output against a reference is :class:`OutputError`: the largest absolute
difference, and that divided by the reference's largest magnitude (relative to the output's
scale, so that outputs near zero, such as logits, do not make it meaningless). The parity
check's element-wise ``max_rel_error`` (:class:`odespec.export.parity.ParityResult`) is another
measure, with another name.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Iterator, NamedTuple, Optional, Sequence, TypedDict

import numpy as np
import torch

from odespec.compile.model import ODENet
from odespec.errors import ExportError, SolverError
from odespec.export.describe import training_solvers
from odespec.export.inputs import InputSet, call_model, numpy_feeds

__all__ = ["OutputError", "DeploymentError", "Match", "one_torch_thread", "model_outputs", "reference_outputs", "output_error",
           "agreement", "accuracy", "ort_outputs", "deployment_error", "deployment_skipped"]


class OutputError(NamedTuple):
    """The error of outputs against reference outputs, over all batches."""

    #: ``max |got - want|`` over every element
    max_abs: float
    #: ``max_abs / max |want|``: the largest error as a fraction of the reference's largest magnitude
    #: (not element-wise); 0 when both are 0, infinite when only the reference is all zeros
    max_scaled: float


class DeploymentError(TypedDict, total=False):
    """The build report's ``onnx.deployment_error`` entry."""

    #: each ODE block's training solver, in words
    reference: list[str]
    #: what the inputs were (seeded random batches, or a data file's name and size)
    inputs: str
    samples: int
    #: :attr:`OutputError.max_abs` of onnxruntime's output against the training-solver model
    max_abs_error: float
    #: :attr:`OutputError.max_scaled` of the same: relative to the output's largest magnitude
    max_scaled_error: float
    seconds: float
    #: a classifier (:attr:`odespec.spec.model.Spec.classifier`): :func:`agreement` of onnxruntime's
    #: predicted classes with the training-solver model's, and how many predictions differ
    agreement: float
    disagreements: int
    #: a classifier on calibration data with labels ``y``: the fraction of correct predictions,
    #: ``{"onnx": ..., "reference": ..., "labels": N}``
    accuracy: dict[str, float]
    #: instead of the errors: why they were not measured (the training solver failed on the inputs)
    skipped: str


@contextlib.contextmanager
def one_torch_thread(enabled: bool = True) -> Iterator[None]:
    """torch on one intra-op thread inside the block (when ``enabled``), as it was after: the
    searches and fits of calibration run thousands of operations on small tensors, where the
    threads' synchronisation costs more than they save (measured on a busy 2-core machine: a grid
    refinement step 41 ms against 11 ms, a correction fit 3x slower with 2 threads)."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if enabled:
            torch.set_num_threads(before)


def model_outputs(model: torch.nn.Module, inputs: InputSet) -> list[np.ndarray]:
    """``model``'s outputs (in eval mode, without gradients) per batch, as float64."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [call_model(model, f).detach().cpu().to(torch.float64).numpy() for f in inputs.feeds()]
    finally:
        model.train(was_training)


def reference_outputs(model: ODENet, inputs: InputSet) -> list[np.ndarray]:
    """The model solved with its training solver (in eval mode), per batch, as float64.

    :class:`ExportError` if the training solver fails on these inputs (an adaptive solve that
    gives up, or non-finite values).
    """
    try:
        outs = model_outputs(model, inputs)
    except SolverError as e:
        raise ExportError(f"the training solver failed on the {inputs.description} inputs: {e}",
                          "check the inputs' scale, or the spec's solver settings") from e
    if not all(np.all(np.isfinite(y)) for y in outs):
        raise ExportError(f"the model solved with its training solver gives non-finite outputs on the "
                          f"{inputs.description} inputs")
    return outs


def output_error(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> OutputError:
    """The :class:`OutputError` of ``got`` against ``want``, batch by batch; non-finite outputs
    give infinite errors."""
    max_abs, scale = 0.0, 0.0
    for g, w in zip(got, want, strict=True):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != w.shape:
            raise ExportError(f"internal error: output shape {g.shape} != reference shape {w.shape}")
        if not np.all(np.isfinite(g)):
            return OutputError(math.inf, math.inf)
        max_abs = max(max_abs, float(np.abs(g - w).max(initial=0.0)))
        scale = max(scale, float(np.abs(w).max(initial=0.0)))
    return OutputError(max_abs, max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))


def _predictions(outs: Sequence[np.ndarray]) -> np.ndarray:
    """The predicted classes: the argmax of each output's last axis (the class scores), flat."""
    return np.concatenate([np.argmax(np.asarray(o), axis=-1).reshape(-1) for o in outs])


def agreement(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """The fraction of predictions (argmax over the output's last axis: one per sample, or per
    sample and time) that ``got`` and ``want`` share; non-finite outputs agree nowhere."""
    if not all(np.all(np.isfinite(g)) for g in got):
        return 0.0
    a, b = _predictions(got), _predictions(want)
    return float(np.mean(a == b)) if a.size else 1.0


def accuracy(outs: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """The fraction of samples whose predicted class is their label."""
    predicted, y = _predictions(outs), np.concatenate([np.asarray(l).reshape(-1) for l in labels])
    return float(np.mean(predicted == y)) if y.size else 0.0


class Match(NamedTuple):
    """What calibration must reach: a largest absolute error against the training-solver model
    (``max_abs``, the spec's ``match_tol``) or, for a classifier, a smallest fraction of
    predictions that agree with the training-solver model's (``agreement``, the spec's
    ``match: {agreement}``) or that are the labels of labelled calibration data (``accuracy``,
    ``match: {accuracy}``). Each is searched as an error that falls with the step count: max
    abs error, 1 - agreement, or 1 - accuracy."""

    kind: str
    value: float
    #: where ``value`` comes from: ``given``, or how it was derived
    source: str = "given"

    @property
    def tolerance(self) -> float:
        """The largest :meth:`error` that passes (for a fraction, a sliver above 1 - value:
        float rounding of a fraction such as 999/1000 must not fail a threshold of 0.999)."""
        return self.value if self.kind == "max_abs" else (1.0 - self.value) * (1 + 1e-9) + 1e-15

    def error(self, got: Sequence[np.ndarray], want: Sequence[np.ndarray],
              labels: Sequence[np.ndarray] = ()) -> float:
        """The measure the search drives down: max abs error, 1 - agreement, or 1 - accuracy on
        ``labels`` (non-finite outputs are correct nowhere)."""
        if self.kind == "max_abs":
            return output_error(got, want).max_abs
        if self.kind == "agreement":
            return 1.0 - agreement(got, want)
        if not labels:
            raise ExportError("internal error: the accuracy criterion measured without labels")
        if not all(np.all(np.isfinite(g)) for g in got):
            return 1.0
        return 1.0 - accuracy(got, labels)

    def describe(self) -> str:
        """``match_tol 0.001``, ``agreement 0.999`` or ``accuracy 0.97``, with a derived value's reason."""
        head = f"match_tol {self.value:.3g}" if self.kind == "max_abs" else f"{self.kind} {self.value:g}"
        return head if self.source == "given" else f"{head} ({self.source})"


def ort_outputs(sess: Any, inputs: InputSet, *, static_batch: bool) -> list[np.ndarray]:
    """onnxruntime's outputs per batch (every input of the graph fed by name); a graph with a
    fixed batch of 1 is fed sample by sample."""
    outs = []
    for f in inputs.feeds():
        feeds = numpy_feeds(f)
        if static_batch:
            n = next(iter(feeds.values())).shape[0]
            outs.append(np.concatenate([sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[0]
                                        for i in range(n)]))
        else:
            outs.append(sess.run(None, feeds)[0])
    return outs


def deployment_error(sess: Any, model: ODENet, inputs: InputSet, *, static_batch: bool = False,
                     reference: Optional[list[np.ndarray]] = None, classifier: Optional[bool] = None) -> DeploymentError:
    """onnxruntime's output of the exported graph (``sess``) against ``model`` solved with its
    training solver (``reference``: those outputs, if already computed), on ``inputs``. For a
    ``classifier`` (``None``: :attr:`Spec.classifier <odespec.spec.model.Spec.classifier>`), also
    the predictions' agreement, and the accuracy of both when ``inputs`` have labels."""
    start = time.perf_counter()
    want = reference if reference is not None else reference_outputs(model, inputs)
    got = ort_outputs(sess, inputs, static_batch=static_batch)
    err = output_error(got, want)
    out: DeploymentError = {
        "reference": training_solvers(model),
        "inputs": inputs.description,
        "samples": inputs.samples,
        "max_abs_error": err.max_abs,
        "max_scaled_error": err.max_scaled,
    }
    if model.spec.classifier if classifier is None else classifier:
        out["agreement"] = agreement(got, want)
        out["disagreements"] = int(np.sum(_predictions(got) != _predictions(want)))
        if inputs.labels:
            out["accuracy"] = {"onnx": accuracy(got, inputs.labels), "reference": accuracy(want, inputs.labels),
                               "labels": int(sum(len(y) for y in inputs.labels))}
    out["seconds"] = round(time.perf_counter() - start, 4)
    return out


def deployment_skipped(model: ODENet, inputs: InputSet, error: ExportError) -> DeploymentError:
    """The ``deployment_error`` entry when the training solver failed on ``inputs``: the
    export goes ahead, and the report says why the error was not measured."""
    return {"reference": training_solvers(model), "inputs": inputs.description,
            "skipped": str(error).splitlines()[0]}
