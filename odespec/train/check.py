"""Semantic checks of a spec's ``train`` section, which the spec validator runs after the schema
through the registered section (:mod:`odespec.train.section`).

What a schema cannot say: which options each optimizer, schedule and loss takes; that the data
fit the model (input shape, targets against the output and the loss, the ode_demo windows' and
the spirals' times against the ODE block's ``t``; a data file's arrays, from their headers, by
the data contract); that an ELBO has a ``gaussian`` layer to take its KL term from. Imports no
torch; numpy only when a spec names data files that exist.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Any, Callable, Optional, Sequence

from odespec.layers.base import fmt_shape
from odespec.spec.model import (
    DataSpec,
    InitSpec,
    LayerSpec,
    Location,
    LossSpec,
    ModelItem,
    OdeBlockSpec,
    OptimizerSpec,
    RegulariseSpec,
    ScheduleSpec,
    SeriesSpec,
    Shape,
    TrainSpec,
)
from odespec.spec.sections import ReportError
from odespec.train import data as sources
from odespec.train.data import DataShapes, FileSplit
from odespec.train.errors import DataError

__all__ = ["check_train", "OPTIMIZER_OPTIONS", "SCHEDULE_OPTIONS", "LOSS_OPTIONS"]

#: the options each optimizer takes (besides ``method``)
OPTIMIZER_OPTIONS = {
    "adam": ("weight_decay", "betas", "eps"),
    "adamw": ("weight_decay", "betas", "eps"),
    "sgd": ("weight_decay", "momentum", "nesterov"),
    "rmsprop": ("weight_decay", "momentum", "eps", "alpha"),
}
SCHEDULE_OPTIONS = {"constant": (), "step": ("every", "gamma"), "multistep": ("milestones", "gamma"),
                    "cosine": ("min_lr",)}
LOSS_OPTIONS = {"mse": (), "l1": (), "cross_entropy": (), "elbo": ("noise_std",)}

Path = tuple
T = ("train",)


def check_train(raw: dict, items: Optional[Sequence[ModelItem]], input_shape: Shape,
                error: ReportError, loc: Callable[[Path], Location],
                base_dir: Optional[FilePath] = None, *, series: Optional[SeriesSpec] = None) -> Optional[TrainSpec]:
    """Check a schema-valid ``train`` mapping; report problems through ``error`` and return the
    :class:`TrainSpec`, or None if anything was wrong. ``items`` is None when the model itself
    has errors (then only the train section's own rules are checked). ``base_dir`` resolves data
    files' relative paths (None: the files are not looked at). ``series``: what the model reads
    beside its input (irregular series), which the data must give."""
    c = _TrainChecker(error)
    data = c.data(raw["data"], loc)
    shapes = sources.get(data.source).shapes(data.options) if data is not None else None
    files = c.files(data, base_dir) if data is not None and shapes is None and items is not None else []
    default = c.default_loss(shapes, files, items) if raw.get("loss") is None else None
    loss = c.loss(raw.get("loss"), default, data)
    optimizer = c.optimizer(raw.get("optimizer", "adam"))
    # step and multistep count in the run's unit: epochs when its length is given in epochs
    schedule = c.schedule(raw.get("schedule", "constant"), raw.get("lr", 1e-3),
                          "epochs" if "epochs" in raw else "iterations")
    init = c.init(raw.get("init"), items)
    regularise = c.regularise(raw.get("regularise"), items)
    if "max_nfe" in raw and items is not None and not _solved_blocks(items):
        c.error(T + ("max_nfe",), "max_nfe limits the solves of ODE blocks; this model has none (a resnet block "
                "always takes its fixed steps)", "remove max_nfe", key=True)
    if "iterations" in raw and "epochs" in raw:
        error(T + ("epochs",), "give iterations or epochs, not both", "epochs N means N passes over the training data",
              key=True)
        c.failed = True
    if items is not None and data is not None and loss is not None:
        c.model_fit(data, shapes, loss, items, input_shape, files, raw.get("batch_size", 32), series)
    if c.failed or data is None or loss is None or optimizer is None or schedule is None or init is None:
        return None
    return TrainSpec(
        data=data, loss=loss, loc=loc(T), optimizer=optimizer, schedule=schedule, lr=raw.get("lr", 1e-3),
        iterations=raw.get("iterations"), epochs=raw.get("epochs"), batch_size=raw.get("batch_size", 32),
        eval_every=raw.get("eval_every", 0), checkpoint_every=raw.get("checkpoint_every", 500),
        log_every=raw.get("log_every"), seed=raw.get("seed", 0), device=raw.get("device"), init=init,
        regularise=regularise, max_nfe=raw.get("max_nfe"), clip_grad_norm=raw.get("clip_grad_norm"),
    )


def _named(raw: Any, key: str) -> dict:
    """``name`` or ``{key: name, ...options}`` as one dict."""
    return {key: raw} if isinstance(raw, str) else dict(raw)


def describe_shapes(shapes: DataShapes) -> str:
    """``inputs (2,) and targets (10, 2)`` or ``inputs (2,) and 2 classes``, for messages."""
    tail = f"{shapes.classes} classes" if shapes.classes is not None else f"targets {fmt_shape(shapes.target or ())}"
    return f"inputs {fmt_shape(shapes.input)} and {tail}"


class _TrainChecker:
    def __init__(self, error: ReportError):
        self._error = error
        self.failed = False
        #: a data file's problem was reported already
        self.files_reported = False

    def error(self, path: Path, message: str, hint: Optional[str] = None, *, key: bool = False) -> None:
        self.failed = True
        self._error(path, message, hint, key=key)

    def options(self, raw: dict, path: Path, what: str, name: str, allowed: Sequence[str], first: str) -> bool:
        """Report options that ``name`` does not take; True if there were none."""
        bad = [k for k in raw if k != first and k not in allowed]
        for k in bad:
            self.error(path + (k,), f"{k!r} is not an option of {what} {name!r}",
                       f"{name!r} takes: {', '.join(allowed)}" if allowed else f"{name!r} takes no options", key=True)
        return not bad

    # -- sections ---------------------------------------------------------------------------------
    def data(self, raw: Any, loc: Callable[[Path], Location]) -> Optional[DataSpec]:
        # checked here rather than with min/maxProperties, whose messages speak of layers
        if isinstance(raw, dict) and len(raw) != 1:
            got = ", ".join(repr(k) for k in raw) if raw else "none"
            self.error(T + ("data",), f"give exactly one data source, as {{source: options}}; got {got}",
                       f"known sources: {', '.join(sources.names())}")
            return None
        name, value = (raw, None) if isinstance(raw, str) else next(iter(raw.items()))
        source = sources.get(name)
        if value is None and source.required:
            need = ", ".join(source.required)
            short = f"{{{name}: VALUE}} (short for {{{name}: {{{source.shorthand}: VALUE}}}})" if source.shorthand \
                else f"{{{name}: {{{need}: ...}}}}"
            self.error(T + ("data",), f"data source {name!r} needs options ({need})", f"write data: {short}")
            return None
        return DataSpec(source=name, options=source.normalize(value), loc=loc(T + ("data",)))

    def files(self, data: DataSpec, base_dir: Optional[FilePath]) -> list[FileSplit]:
        """The data files' splits from their headers; a file that cannot be read is reported."""
        if base_dir is None:
            return []
        try:
            return sources.get(data.source).inspect(data.options, base_dir=base_dir)
        except DataError as e:
            self.error(T + ("data",), e.message, e.hint)
            return []

    def default_loss(self, shapes: Optional[DataShapes], files: Sequence[FileSplit],
                     items: Optional[Sequence[ModelItem]]) -> str:
        """The loss when none is written, as the README says: cross_entropy for class labels,
        else mse. A source's declared shapes tell, or its training file by the data contract."""
        if shapes is not None:
            return "cross_entropy" if shapes.classes is not None else "mse"
        if not files or items is None:
            return "mse"
        if files[0].arrays and "y" not in files[0].arrays:
            return "mse"  # a series file without y: the targets are x, values
        from odespec.data_contract import default_loss

        try:
            return default_loss(files[0].y, items[-1].out_shape, DataError)
        except DataError as e:
            self.error(T + ("data",), e.message, e.hint)
            self.files_reported = True  # once: the files are not compared with the model again
            return "mse"

    def loss(self, raw: Any, default: Optional[str], data: Optional[DataSpec]) -> Optional[LossSpec]:
        path = T + ("loss",)
        if raw is None:
            return LossSpec(default or "mse")
        opts = _named(raw, "kind")
        kind = opts["kind"]
        if not self.options(opts, path, "loss", kind, LOSS_OPTIONS[kind], "kind"):
            return None
        noise = opts.get("noise_std")
        if kind == "elbo" and noise is None:
            noise = sources.get(data.source).noise_std(data.options) if data is not None else None
            if noise is None and data is not None:
                self.error(path, "the elbo needs the observation noise's standard deviation",
                           "write loss: {kind: elbo, noise_std: 0.3}")
                return None
        return LossSpec(kind, noise)

    def optimizer(self, raw: Any) -> Optional[OptimizerSpec]:
        path = T + ("optimizer",)
        opts = _named(raw, "method")
        method = opts.pop("method")
        if not self.options(opts, path, "optimizer", method, OPTIMIZER_OPTIONS[method], "method"):
            return None
        if opts.get("nesterov") and not opts.get("momentum"):
            self.error(path + ("nesterov",), "nesterov needs momentum", "write momentum: 0.9 (for example)", key=True)
            return None
        if "betas" in opts:
            opts["betas"] = tuple(opts["betas"])
        return OptimizerSpec(method=method, **opts)

    def schedule(self, raw: Any, lr: float, unit: str) -> Optional[ScheduleSpec]:
        path = T + ("schedule",)
        opts = _named(raw, "kind")
        kind = opts.pop("kind")
        if not self.options(opts, path, "schedule", kind, SCHEDULE_OPTIONS[kind], "kind"):
            return None
        if kind == "step" and "every" not in opts:
            self.error(path, f"a step schedule needs `every` ({unit} between rate drops)",
                       "write schedule: {kind: step, every: 500, gamma: 0.1}")
            return None
        if kind == "multistep":
            if "milestones" not in opts:
                self.error(path, f"a multistep schedule needs `milestones` (the {unit} at which the rate is "
                           "multiplied by gamma)", "write schedule: {kind: multistep, milestones: [60, 100, 140], "
                           "gamma: 0.1}")
                return None
            if not self.milestones(opts["milestones"], path + ("milestones",), unit):
                return None
            opts["milestones"] = tuple(opts["milestones"])
        if opts.get("min_lr", 0.0) > lr:
            self.error(path + ("min_lr",), f"min_lr {opts['min_lr']:g} is above lr {lr:g}",
                       "the cosine schedule decays from lr down to min_lr")
            return None
        return ScheduleSpec(kind=kind, unit=unit, **opts)

    def milestones(self, values: Sequence[int], path: Path, unit: str) -> bool:
        """Milestones must be strictly increasing (the schema has made them integers >= 1).
        One beyond the run's length is allowed: a resumed run may be made longer."""
        ok = True
        for i in range(1, len(values)):
            if values[i] <= values[i - 1]:
                self.error(path + (i,), f"milestones must be strictly increasing: {values[i]} follows "
                           f"{values[i - 1]}", f"milestones count {unit}; list each once, in increasing order, e.g. "
                           "milestones: [60, 100, 140]")
                ok = False
        return ok

    def init(self, raw: Optional[dict], items: Optional[Sequence[ModelItem]]) -> Optional[InitSpec]:
        if raw is None:
            return InitSpec()
        spec = InitSpec(**raw)
        if spec.weights == "default" and "std" in raw:
            self.error(T + ("init", "std"), "std applies to weights: normal", "write init: {weights: normal, std: 0.1}",
                       key=True)
            return None
        if spec.weights == "normal" and items is not None and not any(_dynamics_linears(items)):
            self.error(T + ("init",), "init re-initialises the linear layers of ODE dynamics; this model has none",
                       "remove init, or add a linear layer to an ODE block's dynamics")
            return None
        return spec

    def regularise(self, raw: Optional[dict], items: Optional[Sequence[ModelItem]]) -> Optional[RegulariseSpec]:
        path = T + ("regularise",)
        if raw is None:
            return None
        spec = RegulariseSpec(**raw)
        if spec.kinetic == 0 and spec.jacobian == 0:
            # an all-zero regulariser would still carry the integrals through every solve, for nothing
            self.error(path, "regularise needs a weight above 0 for kinetic or jacobian",
                       "write regularise: {kinetic: 0.01, jacobian: 0.01}, or remove it")
            return None
        if "noise" in raw and spec.jacobian == 0:
            self.error(path + ("noise",), "noise is the Hutchinson probe of the jacobian term, whose weight is 0",
                       "give jacobian a weight, or remove noise", key=True)
            return None
        if items is not None and not _solved_blocks(items):
            self.error(path, "regularise applies to ODE blocks solved by a solver (family ode or rknet); this "
                       "model has none", "remove regularise")
            return None
        return spec

    # -- the data against the model -------------------------------------------------------------------
    def model_fit(self, data: DataSpec, shapes: Optional[DataShapes], loss: LossSpec, items: Sequence[ModelItem],
                  input_shape: Shape, files: Sequence[FileSplit], batch_size: int,
                  series: Optional[SeriesSpec] = None) -> None:
        dpath, lpath = T + ("data",), T + ("loss",)
        before = self.failed
        self.failed = False  # so that the last step runs only if this comparison found nothing
        self.series_fit(data, shapes, series, dpath)
        if not self.failed:
            self._fit(data, shapes, loss, items, input_shape, dpath, lpath)
        if not self.failed and files and not self.files_reported:
            self.file_fit(files, loss, items[-1].out_shape, input_shape, batch_size, series)
        self.failed = self.failed or before

    def series_fit(self, data: DataSpec, shapes: Optional[DataShapes], series: Optional[SeriesSpec],
                   dpath: Path) -> None:
        """A model that reads irregular series needs a source that gives them, and a source of
        series a model that reads them, with as many query times as the data have."""
        source = sources.get(data.source)
        if series is not None and not source.series_arrays:
            self.error(dpath, f"the model reads irregular series ({', '.join(series.input_names[1:])}); data source "
                       f"{data.source!r} gives none", "use npz with arrays x, times, mask (optional), query_times "
                       "(optional), y (optional), or the oscillators generator; see the README's Data files")
            return
        if shapes is None or not shapes.series:
            return
        steps = shapes.input[0]
        want = f"query: {shapes.query}" if shapes.query is not None else f"query: {steps} (or none)"
        if series is None:
            self.error(dpath, f"the {data.source} data are irregular series (each sample's own times, missing "
                       "values masked); the model reads no times or masks",
                       f"write input: {{shape: {list(shapes.input)}, times: true, mask: true, "
                       f"query: {shapes.query or steps}}}")
        elif shapes.query is not None and series.query != shapes.query:
            self.error(dpath, f"the {data.source} data ask for outputs at {shapes.query} query times per sample; the "
                       f"model reads {series.query if series.query is not None else 'no'} query times",
                       f"write {want} in the spec's input")
        elif shapes.query is None and series.query not in (None, steps):
            self.error(dpath, f"the {data.source} data ask for outputs at the {steps} observation times; the model "
                       f"reads {series.query} query times", f"write {want} in the spec's input")

    def file_fit(self, files: Sequence[FileSplit], loss: LossSpec, out: Shape, input_shape: Shape,
                 batch_size: int, series: Optional[SeriesSpec] = None) -> None:
        """Each split of the data files against the model, by the data contract, as training
        would load them: headers, and the values of class labels (one or C per sample). A
        series file is checked as a whole (:func:`odespec.data_contract.check_series`)."""
        from odespec import data_contract as dc
        from odespec.train.files import refuse_series

        labels = loss.kind == "cross_entropy"
        for split in files:
            try:
                if series is None:
                    refuse_series(split.file or split.x.where, list(split.arrays))
                    dc.check_pair(split.x, split.y, input_shape, out, labels, DataError)
                else:
                    dc.check_series(split.arrays or {"x": split.x, "y": split.y}, split.file or split.x.where,
                                    DataError, input_shape=input_shape, output_shape=out, labels=labels,
                                    times=series.times, mask=series.mask, query=series.query)
                if labels and split.y.read is not None and (series is None or "y" in split.arrays):
                    dc.conform_targets(split.y.read(), split.y, out, True, DataError)
                if split.name == "training" and split.x.count is not None:
                    dc.check_batch_size(batch_size, split.x.count, DataError)
            except DataError as e:
                self.error(T + ("data",), e.message, e.hint)
                return

    def _fit(self, data: DataSpec, shapes: Optional[DataShapes], loss: LossSpec, items: Sequence[ModelItem],
             input_shape: Shape, dpath: Path, lpath: Path) -> None:
        out = items[-1].out_shape
        if loss.kind == "cross_entropy" and len(out) != 1:
            self.error(lpath, f"cross_entropy takes one score per class, shape (classes,); the model outputs "
                       f"{fmt_shape(out)}", "end the model with flatten and linear: CLASSES")
            return
        if loss.kind == "elbo":
            n = sum(1 for it in items if isinstance(it, LayerSpec) and it.kind == "gaussian")
            if n != 1:
                self.error(lpath, f"the elbo takes its KL term from the model's gaussian layer; the model has {n}",
                           "sample z0 with one `- gaussian` layer (after a linear layer giving mean and log-variance)")
                return
        if shapes is None:
            return  # user files: checked when they are read
        if shapes.input != input_shape:
            self.error(dpath, f"the {data.source} data have {describe_shapes(shapes)}; the model's input is "
                       f"{fmt_shape(input_shape)}", f"write input: {{shape: {list(shapes.input)}}}")
            return
        if shapes.classes is not None:
            if loss.kind != "cross_entropy":
                self.error(lpath, f"the {data.source} targets are class labels; loss {loss.kind!r} compares values",
                           "write loss: cross_entropy")
            elif out[0] < shapes.classes:
                self.error(dpath, f"the {data.source} data have {shapes.classes} classes; the model outputs "
                           f"{out[0]} class scores", f"end the model with linear: {shapes.classes}")
        elif loss.kind == "cross_entropy":
            self.error(lpath, f"the {data.source} targets are values of shape {fmt_shape(shapes.target or ())}; "
                       "cross_entropy takes class labels", "write loss: mse (or l1)")
        elif shapes.target != out:
            self.error(dpath, f"the {data.source} data have {describe_shapes(shapes)}; the model outputs "
                       f"{fmt_shape(out)}", "the model's output must have the targets' shape")
        if self.failed:
            return
        for p in sources.get(data.source).check(data.options, input_shape, items):
            self.error(p.path or dpath, p.message, p.hint)


def _solved_blocks(items: Sequence[ModelItem]) -> list[OdeBlockSpec]:
    """The ODE blocks a solver integrates (family ode or rknet; a resnet block has separate
    weights per step and no solve)."""
    return [it for it in items if isinstance(it, OdeBlockSpec) and it.family != "resnet"]


def _dynamics_linears(items: Sequence[ModelItem]) -> list[LayerSpec]:
    """The linear layers of every ODE block's dynamics, inside containers too (what ``init``
    re-initialises)."""

    def walk(layers: Sequence[Any]) -> list[LayerSpec]:
        found: list[LayerSpec] = []
        for layer in layers:
            if layer.kind == "linear":
                found.append(layer)
            for value in layer.options.values():  # a container's inner layers (residual)
                if isinstance(value, tuple) and value and all(isinstance(v, LayerSpec) for v in value):
                    found.extend(walk(value))
        return found

    return [layer for it in items if isinstance(it, OdeBlockSpec) for layer in walk(it.dynamics.layers)]
