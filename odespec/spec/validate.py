"""Validation: JSON Schema first, then the checks a schema cannot express (shapes, option
compatibility, budgets). Produces frozen :mod:`odespec.spec.model` objects or raises one
:class:`SpecError` holding every problem found.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path as FilePath
from typing import Any, Optional

from odespec.errors import SpecError, SpecIssue
from odespec.layers import LayerContext, ShapeError, registry
from odespec.layers.base import fmt_shape
from odespec.spec import sections
from odespec.spec.load import LoadedDocument, Path, format_path
from odespec.spec.messages import schema_issues
from odespec.spec.numbers import number_issues
from odespec.solvers.config import DEFAULT_METHOD, GradientConfig, OptionProblem, SolverConfig
from odespec.solvers.grid import grid_steps
from odespec.solvers import tableaus
from odespec.solvers.options import MAX_STEPS

#: the most solver steps an exported graph unrolls (every step is a copy of the dynamics' nodes:
#: at 10,000 rk4 steps of a small MLP the graph has some 400,000 nodes, which onnxruntime takes
#: minutes to load); ``loop: true`` keeps one step per output interval in the graph
MAX_UNROLLED_STEPS = 10_000
from odespec.spec.correction import correction_spec
from odespec.spec.schema import CALIBRATION_METHODS, EXPORT_DEFAULTS
from odespec.spec.model import (
    DynamicsSpec,
    LayerSpec,
    Location,
    ModelItem,
    OdeBlockSpec,
    fixed_training_steps,
    OnnxExportSpec,
    SeriesSpec,
    Shape,
    Spec,
)

#: refuse specs whose parameters would not fit comfortably in memory (400 MB in float32),
#: computed from shapes before anything is allocated
MAX_PARAMETERS = 100_000_000
#: per-sample activation size limit, for the same reason
MAX_ACTIVATION = 100_000_000

#: each series input: the ``input:`` key that gives it, what it holds, and how to write the key
_SERIES_WORDS = {
    "times": ("times", "observation times", "add `times: true` under input: (the model then takes times "
              "(batch, T))"),
    "mask": ("mask", "masks of observed values", "add `mask: true` under input: (the model then takes mask "
             "(batch, T, F))"),
    "query_times": ("query", "query times", "add `query: N` under input: (N query times per sample; the model "
                    "then takes query_times (batch, N))"),
}
#: who reads each series input, for the hint when nothing does
_SERIES_READERS = {
    "times": "an ode_rnn encoder, or an rnn/gru with time_gaps: true",
    "mask": "an ode_rnn encoder, or an rnn/gru with time_gaps: true",
    "query_times": "an ODE block with t: query, or an rnn_decoder",
}


def _validator(present: frozenset[str]) -> Any:
    """The JSON-Schema validator for specs with the registered top-level sections ``present``."""
    from odespec.spec.schema import registry_key

    return _validator_for(registry_key(), present)


@lru_cache(maxsize=None)
def _validator_for(key: Any, present: frozenset[str]) -> Any:
    """``key`` (the registered solver vocabulary) keeps a method registered later from being
    refused by a stale schema."""
    import jsonschema

    from odespec.spec.schema import active_schema

    schema = active_schema(present)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def validate(doc: LoadedDocument, *, base_dir: Optional[FilePath] = None) -> Spec:
    """Validate a loaded document; return the frozen :class:`Spec` or raise :class:`SpecError`.
    ``base_dir`` resolves the relative file paths of sections (training data); default: the
    directory of the file the document was read from, if it is one."""
    data = doc.data
    present = frozenset(n for n in sections.names() if isinstance(data, dict) and n in data)
    issues = schema_issues(doc, _validator(present).iter_errors(data))
    numbers = number_issues(doc, skip=frozenset(i.path for i in issues))
    if numbers:
        issues = sorted(issues + numbers, key=lambda i: (i.line, i.column))
    if issues:
        raise SpecError(issues)
    if base_dir is None and FilePath(doc.filename).is_file():
        base_dir = FilePath(doc.filename).resolve().parent
    return _Checker(doc, base_dir).run()


class _Checker:
    """Semantic checks on schema-valid data; collects issues instead of stopping at the first."""

    def __init__(self, doc: LoadedDocument, base_dir: Optional[FilePath] = None):
        self.doc = doc
        self.base_dir = base_dir
        self.issues: list[SpecIssue] = []
        self.series_spec: Optional[SeriesSpec] = None
        #: the series inputs some layer or ODE block reads
        self.read_inputs: set[str] = set()

    # -- plumbing -----------------------------------------------------------------------------
    def loc(self, path: Path) -> Location:
        m = self.doc.mark(path)
        return Location(self.doc.filename, m.line, m.column, format_path(path))

    def error(self, path: Path, message: str, hint: Optional[str] = None, *, key: bool = False) -> None:
        m = self.doc.key_mark(path) if key else self.doc.mark(path)
        self.issues.append(SpecIssue(self.doc.filename, m.line, m.column, format_path(path), message, hint))

    # -- the whole spec -----------------------------------------------------------------------
    def run(self) -> Spec:
        data = self.doc.data
        shape: Optional[Shape] = tuple(data["input"]["shape"])
        self.series_spec = self.series(data["input"])
        items: list[ModelItem] = []
        for i, raw in enumerate(data["model"]):
            path: Path = ("model", i)
            item = self.model_item(raw, path, shape)
            if item is None:
                shape = None  # unknown from here on; later layers are still checked for options
                continue
            items.append(item)
            shape = item.out_shape
        if not self.issues and len(items) == len(data["model"]):
            self.unread_inputs(data["input"])
        total = sum(it.num_params for it in items)
        if total > MAX_PARAMETERS:
            self.error(
                ("model",),
                f"the model has {total:,} parameters; the limit is {MAX_PARAMETERS:,}",
                "reduce layer widths or channels (parameters are counted from shapes, nothing was allocated)",
            )
        # the sections (train) are compared with the model only when the model itself is valid
        model_ok = not self.issues and len(items) == len(data["model"])
        export = self.export(data, items if model_ok else None)
        checked = self.check_sections(data, items if model_ok else None)
        if self.issues:
            raise SpecError(self.issues)
        return Spec(
            name=data["name"],
            input_shape=tuple(data["input"]["shape"]),
            model=tuple(items),
            export=export,
            source_file=self.doc.filename,
            source_sha256=self.doc.sha256,
            format_version=data["odespec"],
            description=data.get("description", ""),
            seed=data.get("seed", 0),
            dtype=data.get("dtype", "float32"),
            device=data.get("device", "cpu"),
            series=self.series_spec,
            num_params=total,
            **checked,
        )

    def model_item(self, raw: Any, path: Path, shape: Optional[Shape]) -> Optional[ModelItem]:
        kind, value = (raw, None) if isinstance(raw, str) else next(iter(raw.items()))
        if kind == "ode":
            assert isinstance(value, dict)  # the schema takes an ODE block only with its settings
            return self.ode_block(value, path + ("ode",), shape)
        return self.layer(kind, value, path, shape, self.top_context())

    # -- series inputs (irregular time series) ------------------------------------------------------
    def series(self, raw: dict) -> Optional[SeriesSpec]:
        """``input: {times, mask, query}`` as a SeriesSpec (None when none is given); times and
        masks are per observation slot, so they need a (T, F) input."""
        if not any(k in raw for k in ("times", "mask", "query")):
            return None
        series = SeriesSpec(times=raw.get("times", False), mask=raw.get("mask", False), query=raw.get("query"))
        rank = len(raw["shape"])
        for key in ("times", "mask"):
            if raw.get(key) and rank != 2:
                self.error(("input", key), f"{key}: true needs a series input of shape [T, F] (T observation "
                           f"slots of F features), but input.shape has rank {rank}",
                           "write shape: [T, F], or remove " + key, key=True)
        return series

    def top_context(self) -> LayerContext:
        """The context of a layer of the model's top-level list: which series inputs there are."""
        s = self.series_spec
        if s is None:
            return LayerContext()
        return LayerContext(times=s.times, mask=s.mask, query=s.query)

    def has_input(self, name: str) -> bool:
        s = self.series_spec
        if s is None:
            return False
        return {"times": s.times, "mask": s.mask, "query_times": s.query is not None}[name]

    def series_reads(self, kind: str, needs: Any, where: Path, path: Path) -> bool:
        """Check what a layer reads of the series inputs: it must be a top-level model item and
        every input it needs must be given. Records what it reads; False on an error."""
        if len(path) != 2 or path[0] != "model":
            self.error(where, f"{kind} reads the model's series inputs ({', '.join(needs)}); it can only be an item "
                       "of the model's list, not inside another layer", "move it to the model's list")
            return False
        ok = True
        for name, required in needs.items():
            if self.has_input(name):
                self.read_inputs.add(name)
            elif required:
                key, what, hint = _SERIES_WORDS[name]
                self.error(where, f"{kind} reads each sample's {what} (model input '{name}'), but the input "
                           f"section has no {key}", hint)
                ok = False
        return ok

    def unread_inputs(self, raw: dict) -> None:
        """A series input no layer reads would be a model input that changes nothing: refused."""
        for name, (key, what, _) in _SERIES_WORDS.items():
            if self.has_input(name) and name not in self.read_inputs:
                self.error(("input", key), f"each sample's {what} are a model input, but no layer of the model "
                           "reads them", f"read them with {_SERIES_READERS[name]}; or remove {key}"
                           + (" (did you mean t: query in the ODE block?)" if name == "query_times" else ""),
                           key=True)

    # -- layers -------------------------------------------------------------------------------
    def layer(self, kind: str, value: Any, path: Path, shape: Optional[Shape], ctx: LayerContext) -> Optional[LayerSpec]:
        ltype = registry.get(kind)
        where = path if value is None and not isinstance(self._at(path), dict) else path + (kind,)
        options = ltype.normalize(value)
        layer_ctx = LayerContext(in_dynamics=ctx.in_dynamics, time_concat=ctx.time_concat and ltype.takes_time,
                                 times=ctx.times, mask=ctx.mask, query=ctx.query)
        needs = ltype.series_inputs(options)
        if needs and not self.series_reads(kind, needs, where, path):
            return None
        if ltype.children_key:
            # inner layers are checked like any layer list (t is not fed inside a container)
            key = ltype.children_key
            base = where + (key,) if isinstance(value, dict) and key in value else where
            inner_ctx = LayerContext(in_dynamics=ctx.in_dynamics or ltype.children_in_dynamics)
            inner = None if shape is None else ltype.children_shape(options, shape)
            children, _ = self.layer_list(options[key], base, inner, inner_ctx)
            if children is None:
                return None
            options[key] = tuple(children)
        try:
            ltype.check(options, layer_ctx)
            ltype.check_dtype(options, self.doc.data.get("dtype", "float32"))
            if shape is None:
                return None
            out = ltype.output_shape(options, shape, layer_ctx)
            n = ltype.num_params(options, shape, layer_ctx)
        except ShapeError as e:
            shown = (f" on input {fmt_shape(shape)}" if shape is not None and "shape" not in e.message
                     and e.key is None else "")
            # the path already ends in the layer's name unless it was written bare
            prefix = "" if where[-1] == kind else f"{kind}: "
            at = where + (e.key,) if e.key is not None and isinstance(value, dict) and e.key in value else where
            self.error(at, f"{prefix}{e.message}{shown}", e.hint, key=at != where)
            return None
        if math.prod(out) > MAX_ACTIVATION:
            self.error(where, f"{kind}: output {fmt_shape(out)} has {math.prod(out):,} values per sample; the limit is {MAX_ACTIVATION:,}")
            return None
        return LayerSpec(kind=kind, options=options, loc=self.loc(path), out_shape=out, num_params=n)

    def _at(self, path: Path) -> Any:
        """The written value at ``path``; None where nothing is written (a default filled in,
        such as an ode_rnn's dynamics)."""
        node = self.doc.data
        for p in path:
            try:
                node = node[p]
            except (KeyError, IndexError, TypeError):
                return None
        return node

    # -- ODE blocks ---------------------------------------------------------------------------
    def ode_block(self, raw: dict, path: Path, shape: Optional[Shape]) -> Optional[OdeBlockSpec]:
        query = raw.get("t") == "query"
        t: tuple[float, ...] = () if query else _times(raw.get("t", [0, 1]))
        ok = self.query_block(raw, path) if query else self.times(t, path + ("t",))
        if not query and "start" in raw:
            ok = False
            self.error(path + ("start",), "start is for t: query; a list of times starts at its first time",
                       "remove start, or write t: query", key=True)
        n_query = (self.series_spec.query or 0) if query and self.series_spec is not None else 0
        solver = self.solver(raw.get("solver", DEFAULT_METHOD), path + ("solver",), t, n_query if query else None)
        gradient = self.gradient(raw.get("gradient", "backprop"), path + ("gradient",))
        output = raw.get("output", "final")
        family = raw.get("family", "ode")
        augment = raw.get("augment", 0)
        if solver is not None and gradient is not None:
            ok = self.family(family, solver, gradient, path) and ok
        state = None if shape is None else (shape[0] + augment,) + shape[1:]
        dyn = self.dynamics(raw["dynamics"], path + ("dynamics",), state)
        if not ok or solver is None or gradient is None or dyn is None or state is None:
            return None
        copies = solver.count_steps(t) or 1 if family == "resnet" else 1
        out_shape = ((n_query if query else len(t)),) + state if output == "trajectory" else state
        return OdeBlockSpec(
            t=t,
            output=output,
            dynamics=dyn,
            solver=solver,
            gradient=gradient,
            loc=self.loc(path),
            out_shape=out_shape,
            num_params=copies * sum(layer.num_params for layer in dyn.layers),
            family=family,
            augment=augment,
            query=query,
            start=float(raw.get("start", 0.0)),
            query_times=n_query,
        )

    def query_block(self, raw: dict, path: Path) -> bool:
        """``t: query``: the block reads the model's query times (``input.query``), from ``start``;
        a ResNet block's per-step weights need one fixed grid, so it cannot."""
        ok = self.series_reads("an ODE block with t: query", {"query_times": True}, path + ("t",), path[:2])
        if raw.get("family") == "resnet":
            self.error(path + ("family",), "a ResNet block has separate weights for each step of one fixed time grid; "
                       "t: query gives every sample its own times", "write family: ode or rknet, or a list of times")
            ok = False
        if not math.isfinite(raw.get("start", 0.0)):
            self.error(path + ("start",), "start must be a finite number")
            ok = False
        return ok

    def family(self, family: str, solver: SolverConfig, gradient: GradientConfig, path: Path) -> bool:
        """RK-Nets need a fixed-step solver; ResNets are Euler steps with their own weights."""
        before = len(self.issues)
        if family in ("rknet", "resnet") and not gradient.decl.discrete:
            self.error(path + ("gradient",), f"a {family} backpropagates through its steps; the {gradient.method} "
                       "is for continuous ODE blocks", "write gradient: backprop (or checkpoint), or family: ode")
        if family == "rknet" and solver.adaptive:
            self.error(path + ("solver",), f"an RK-Net takes a fixed number of steps; {solver.method!r} is adaptive",
                       "use a fixed-step method such as rk4 with steps: N")
        if family == "resnet" and (solver.method != "euler" or solver.steps is None):
            self.error(path + ("solver",), "a ResNet block is Euler steps with separate weights per step",
                       "write solver: {method: euler, steps: N} (N residual blocks)")
        return len(self.issues) == before

    def times(self, t: tuple[float, ...], path: Path) -> bool:
        if any(not math.isfinite(x) for x in t):
            self.error(path, "times must be finite numbers")
            return False
        diffs = [b - a for a, b in zip(t, t[1:], strict=False)]
        if all(d > 0 for d in diffs) or all(d < 0 for d in diffs):
            return True
        if len(t) == 2:
            self.error(path, f"t0 and t1 are both {t[0]:g}; the time span is empty", "write t: [0, 1] or another span")
        else:
            self.error(path, "output times must be strictly increasing (or strictly decreasing)",
                       "sort the times and remove duplicates")
        return False

    def solver(self, raw: Any, path: Path, t: tuple[float, ...], query: Optional[int] = None) -> Optional[SolverConfig]:
        """``query``: the number of query times of a ``t: query`` block (steps count per query interval)."""
        config, problems = SolverConfig.from_spec(raw)
        self.option_problems(path, problems)
        if config is None:
            return None
        total = config.count_steps(t) if query is None else (config.steps or 0) * query
        if query is not None:
            t = (0.0,) * (query + 1)  # for the message: one interval per query time
        if total is not None and total > MAX_STEPS:
            key = "steps" if config.steps is not None else "step_size"
            self.error(path + (key,), f"this makes {total:,} steps over {len(t) - 1} output interval(s); "
                       f"the limit is {MAX_STEPS:,}", "use fewer steps (steps count per output interval)")
            return None
        return config

    def gradient(self, raw: Any, path: Path) -> Optional[GradientConfig]:
        config, problems = GradientConfig.from_spec(raw)
        self.option_problems(path, problems)
        return config

    def option_problems(self, path: Path, problems: list[OptionProblem]) -> None:
        """A solver or gradient configuration's broken rules, located at the option at fault."""
        for p in problems:
            self.error(path if p.key is None else path + (p.key,), p.message, p.hint, key=p.key is not None)

    def layer_list(self, items: list, path: Path, shape: Optional[Shape],
                   ctx: LayerContext) -> tuple[Optional[list[LayerSpec]], Optional[Shape]]:
        """Check a list of layers; returns (None, None) if any of them is invalid."""
        layers: list[LayerSpec] = []
        cur = shape
        failed = False
        for i, item in enumerate(items):
            kind, value = (item, None) if isinstance(item, str) else next(iter(item.items()))
            spec = self.layer(kind, value, path + (i,), cur, ctx)
            if spec is None:
                failed, cur = True, None
                continue
            layers.append(spec)
            cur = spec.out_shape
        return (None, None) if failed else (layers, cur)

    def dynamics(self, raw: dict, path: Path, shape: Optional[Shape]) -> Optional[DynamicsSpec]:
        time = raw.get("time", "none")
        ctx = LayerContext(in_dynamics=True, time_concat=time == "concat")
        layers, cur = self.layer_list(raw["layers"], path + ("layers",), shape, ctx)
        if layers is None or shape is None:
            return None
        if time == "concat" and not any(registry.get(layer.kind).takes_time for layer in layers):
            self.error(path + ("time",), "time: concat needs a layer that takes t (linear, conv1d, conv2d)",
                       "add such a layer, or write time: none", key=False)
            return None
        if cur != shape:
            assert cur is not None  # a list of valid layers has an output shape
            last = layers[-1]
            self.error(path, f"maps shape {fmt_shape(shape)} to {fmt_shape(cur)}; an ODE block must keep the state's shape",
                       f"the last layer ({last.kind!r}, line {last.loc.line}) outputs {fmt_shape(cur)}; the state is {fmt_shape(shape)}")
            return None
        return DynamicsSpec(time=time, layers=tuple(layers), loc=self.loc(path))

    # -- top-level sections owned by other packages (train) ---------------------------------------
    def check_sections(self, data: dict, items: Optional[list[ModelItem]]) -> dict[str, Any]:
        """Each registered section the spec has, checked by its owner: its own rules, and
        (``items`` given) how it fits the model. By name, the Spec field that keeps it."""
        ctx = sections.SectionContext(items=items, input_shape=tuple(data["input"]["shape"]), error=self.error,
                                      loc=self.loc, base_dir=self.base_dir, series=self.series_spec)
        return {s.name: s.check(data[s.name], ctx) for s in sections.all_types() if s.name in data}

    # -- export -------------------------------------------------------------------------------
    def export(self, data: dict, items: Optional[list[ModelItem]]) -> OnnxExportSpec:
        """``export.onnx``; ``items``: the model's items when they are valid (else ``None``)."""
        # the method is fixed-step: the schema takes no other (an adaptive one has its message there)
        raw = dict(data.get("export", {}).get("onnx", {}))
        path: Path = ("export", "onnx")
        training = fixed_training_steps(items) if "method" not in raw and "steps" not in raw else None
        if training is not None:
            raw["method"], raw["steps"], raw["from_training"] = *training, True
        method = raw.get("method", EXPORT_DEFAULTS["method"])
        steps = raw.get("steps", EXPORT_DEFAULTS["steps"])
        if steps == "auto":
            # calibration searches the written method alone, else every built-in fixed-step one
            raw["calibration_methods"] = (method,) if "method" in raw else CALIBRATION_METHODS
        else:
            for key in ("match_tol", "match"):
                if key in raw:
                    self.error(path + (key,), f"{key!r} is for steps: auto (calibration); the step count here is "
                               f"fixed ({steps})", "write steps: auto to choose the step count by calibration, "
                               f"or remove {key}", key=True)
        if "match" in raw:
            kind, value = self.match(raw.pop("match"), path + ("match",), raw, items)
            raw[f"match_{kind}"] = value
        if "newton_iters" in raw and "method" in raw and not tableaus.get_tableau(method).implicit:
            self.error(path + ("newton_iters",), f"newton_iters is for implicit methods; {method!r} is explicit",
                       "remove newton_iters, or export with an implicit method such as radauIIA5", key=True)
        if raw.get("grid") == "optimised":
            if steps != "auto":
                self.error(path + ("grid",), f"grid: optimised is for steps: auto (calibration places the steps); "
                           f"the step count here is fixed ({steps})",
                           "write steps: auto, or remove grid", key=True)
            elif raw.get("loop", EXPORT_DEFAULTS["loop"]):
                self.error(path + ("grid",), "grid: optimised is exported unrolled (its steps differ in size; a "
                           "Loop repeats one)", "remove loop: true, or write grid: uniform", key=True)
        # (calibration keeps within MAX_STEPS itself)
        unrolled, most, where = 0, 0, path
        reported = len(self.issues)
        loop = raw.get("loop", EXPORT_DEFAULTS["loop"])
        for i, item in enumerate(data["model"]):
            if not (isinstance(item, dict) and isinstance(item.get("ode"), dict)):
                continue
            raw_t = item["ode"].get("t", [0, 1])
            # a t: query block has one output interval per query time
            t = (0.0,) * (data["input"].get("query", 0) + 1) if raw_t == "query" else _times(raw_t)
            if item["ode"].get("family") == "resnet":  # its own weights per step: always unrolled
                n = grid_steps(t, int(item["ode"].get("solver", {}).get("steps", 1)))
                unrolled += n
                if n > most:  # point at the block that unrolls most
                    most, where = n, ("model", i, "ode", "solver", "steps")
            elif steps != "auto":
                if grid_steps(t, steps) > MAX_STEPS:
                    self.error(path + ("steps",), f"{steps:,} steps per output interval over the {len(t) - 1} "
                               f"intervals of model[{i}] make more than {MAX_STEPS:,} steps",
                               "use fewer steps, or fewer output times")
                n = len(t) - 1 if loop else grid_steps(t, steps)
                unrolled += n
                if n > most:
                    most, where = n, path + (("steps",) if "steps" in raw else ())
        # told once: not beside a block's own step limit, nor for a model already invalid
        if unrolled > MAX_UNROLLED_STEPS and items is not None and len(self.issues) == reported:
            self.error(where, f"the exported graph would unroll {unrolled:,} solver steps (ODE blocks' steps per "
                       f"output interval times their intervals, and every ResNet block's steps); the limit is "
                       f"{MAX_UNROLLED_STEPS:,}, beyond which building and loading the graph takes minutes",
                       "use fewer steps, or loop: true (one ONNX Loop per output interval) for ODE blocks")
        raw.setdefault("file", f"{data['name']}.onnx")
        if "correction" in raw:
            blocks = [b for b in items if isinstance(b, OdeBlockSpec)] if items is not None else None
            raw["correction"] = correction_spec(raw["correction"], path + ("correction",), self.error, loop=loop,
                                                blocks=blocks, series=self.series_spec is not None)
        if "verify" in raw:
            raw["verify"] = tuple(raw["verify"])
        return OnnxExportSpec(**raw)

    def match(self, raw: dict, path: Path, export: dict, items: Optional[list[ModelItem]]) -> tuple[str, float]:
        """``match: {agreement: A}`` or ``match: {accuracy: A}`` (the schema allows one key):
        calibrate on predicted classes; the model must output class scores (C >= 2 on the last
        axis), and ``match_tol`` says the other criterion. Returns the key and its value."""
        ((kind, value),) = raw.items()
        if "match_tol" in export:
            self.error(path, "match and match_tol are two criteria for calibration; give one",
                       f"match: {{{kind}: A}} for a classifier, match_tol for an absolute error", key=True)
        out = items[-1].out_shape if items else None
        if out is not None and (not out or out[-1] < 2):
            self.error(path, f"{kind} compares predicted classes (the argmax of the output's last axis); the "
                       f"model's output {fmt_shape(out)} has no class axis of 2 or more scores",
                       "use match_tol (a largest absolute error) for a model that outputs values", key=True)
        return kind, float(value)



def _times(raw: Any) -> tuple[float, ...]:
    """``[t0, t1, ...]`` or ``{start, stop, num}`` (evenly spaced, both ends included)."""
    if isinstance(raw, dict):
        start, stop, num = float(raw.get("start", 0)), float(raw["stop"]), int(raw["num"])
        return tuple(start + (stop - start) * i / (num - 1) for i in range(num))
    return tuple(float(x) for x in raw)
