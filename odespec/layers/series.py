"""Layers that read irregularly sampled series: the ODE-RNN encoder and the RNN decoder (the
``rnn``/``gru`` option ``time_gaps`` lives with those layers, in :mod:`odespec.layers.blocks`).

They read the model's series inputs (:meth:`LayerType.series_inputs`); their torch modules are
in :mod:`odespec.layers.series_modules`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from odespec.layers.base import (
    ExportContext,
    LayerContext,
    LayerType,
    LayerUse,
    Shape,
    ShapeError,
    bool_schema,
    fmt_shape,
    int_schema,
    number_schema,
)
from odespec.layers.registry import register
from odespec.solvers.config import GradientConfig, SolverConfig
from odespec.solvers.options import MAX_STEPS

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from odespec.layers.series_modules import ODERNN

#: the ODE-RNN's solver unless one is written: one rk4 step per gap between observations, cheap
#: (the encoder solves T intervals per forward pass) and exported as it is trained
ODE_RNN_SOLVER: dict[str, Any] = {"method": "rk4", "steps": 1}
_NOT_IN_DYNAMICS = "it reads the model's series inputs (times, masks, query times); it belongs in the model's list"


def default_dynamics(hidden: int) -> list[Any]:
    """The ODE-RNN's f(h) unless one is written: a small MLP hidden -> hidden with tanh."""
    return [{"linear": hidden}, "tanh", {"linear": hidden}]


def _solve_configs(options: Mapping[str, Any]) -> tuple[SolverConfig, GradientConfig]:
    """The ``solver`` and ``gradient`` options as configurations; ShapeError at the option that
    breaks a rule."""
    solver, problems = SolverConfig.from_spec(options["solver"])
    if solver is None:
        raise ShapeError(problems[0].message, problems[0].hint, key="solver")
    gradient, problems = GradientConfig.from_spec(options["gradient"])
    if gradient is None:
        raise ShapeError(problems[0].message, problems[0].hint, key="gradient")
    return solver, gradient


@register
class OdeRnn(LayerType):
    name = "ode_rnn"
    description = ("ODE-RNN encoder (Rubanova et al. 2019) over (T, F) observations at each sample's own "
                   "times: the hidden state follows an ODE between observations and a GRU update at each "
                   "one (masked). Reads input.times (and input.mask when the model has one).")
    properties = {
        "hidden": int_schema("Hidden state size."),
        "reverse": bool_schema("Read the last observation first and end at start (the latent ODE's encoder); "
                               "false: start at start and end at the last observation.", True),
        "output": {
            "enum": ["last", "sequence"],
            "default": "last",
            "description": "last: the final hidden state, shape (hidden,); sequence: the state after each "
                           "observation slot's update, (T, hidden), in time order.",
        },
        "dynamics": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": {"$ref": "#/$defs/dynamics_layer"},
            "description": "The layers of f(h), the hidden state's dynamics between observations (autonomous: "
                           "t is not fed); they must keep the shape (hidden,). Unset (the default): linear: "
                           "hidden, tanh, linear: hidden.",
        },
        "solver": {"allOf": [{"$ref": "#/$defs/ode_block/properties/solver"}], "default": ODE_RNN_SOLVER,
                   "description": "How each gap between observations is solved (as an ODE block's solver; "
                                  "steps count per gap)."},
        "gradient": {"allOf": [{"$ref": "#/$defs/ode_block/properties/gradient"}], "default": "backprop",
                     "description": "Gradient method of the solves (as an ODE block's)."},
        "start": number_schema("The time the encoder ends at (reverse) or starts from; every observation time "
                               "must be at or after it.", 0),
    }
    required = ("hidden",)
    shorthand = "hidden"
    children_key = "dynamics"
    children_in_dynamics = True
    not_in_dynamics = _NOT_IN_DYNAMICS

    @classmethod
    def normalize(cls, value: Any) -> dict[str, Any]:
        options = super().normalize(value)
        if options["dynamics"] is None:
            options["dynamics"] = default_dynamics(options["hidden"])
        return options

    def series_inputs(self, options: Mapping[str, Any]) -> Mapping[str, bool]:
        return {"times": True, "mask": False}

    def children_shape(self, options: Mapping[str, Any], shape: Shape) -> Shape:
        return (options["hidden"],)

    def check(self, options: Mapping[str, Any], ctx: LayerContext) -> None:
        _solve_configs(options)

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        self.need_rank(shape, 2, "(time, features)", "an ode_rnn reads T observation slots of F features")
        h = options["hidden"]
        out = options["dynamics"][-1].out_shape
        if out != (h,):
            last = options["dynamics"][-1]
            raise ShapeError(f"its dynamics map the hidden state {fmt_shape((h,))} to {fmt_shape(out)}; they must "
                             "keep its shape", f"the last layer ({last.kind!r}, line {last.loc.line}) outputs "
                             f"{fmt_shape(out)}; end with linear: {h}", key="dynamics")
        solver, _ = _solve_configs(options)
        if solver.steps is not None and solver.steps * (shape[0] + 1) > MAX_STEPS:
            raise ShapeError(f"{solver.steps:,} steps per gap over {shape[0] + 1} gaps make more than "
                             f"{MAX_STEPS:,} steps", "use fewer steps", key="solver")
        return (h,) if options["output"] == "last" else (shape[0], h)

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        d, h = shape[-1] * (2 if ctx.mask else 1), options["hidden"]
        return 3 * (d * h + h * h + 2 * h) + sum(child.num_params for child in options["dynamics"])

    def _uses(self, options: Mapping[str, Any]) -> list[LayerUse]:
        shape: Shape = (options["hidden"],)
        uses = []
        for child in options["dynamics"]:
            uses.append(LayerUse(child, shape, LayerContext(in_dynamics=True)))
            shape = child.out_shape
        return uses

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.series_modules import ODERNN, SeriesDynamics
        from odespec.layers.torch_modules import inplace_activations

        layers = [use.build() for use in self._uses(options)]
        inplace_activations(layers)
        solver, gradient = _solve_configs(options)
        return ODERNN(shape[-1], options["hidden"], SeriesDynamics(layers), solver=solver, gradient=gradient,
                      reverse=options["reverse"], sequence=options["output"] == "sequence", start=options["start"],
                      use_mask=ctx.mask)

    def export_form(self, module: "nn.Module", options: Mapping[str, Any], shape: Shape, ctx: LayerContext,
                    export: ExportContext) -> "nn.Module":
        """The same encoder with its dynamics' layers in their export forms (sharing the weights);
        the exporter swaps its solver for the fixed-step one with ``module.with_solver``."""
        from odespec.layers.series_modules import SeriesDynamics

        rnn: "ODERNN" = module  # type: ignore[assignment]
        forms = [use.export_form(layer, export) for layer, use in zip(rnn.dynamics.layers, self._uses(options),
                                                                       strict=True)]
        if all(f is layer for f, layer in zip(forms, rnn.dynamics.layers, strict=True)):
            return module
        twin = rnn.with_solver(rnn.solver)
        twin.dynamics = SeriesDynamics(forms)
        return twin


@register
class RnnDecoder(LayerType):
    name = "rnn_decoder"
    description = ("RNN decoder (the baseline of Rubanova et al. 2019): from the hidden state given as input, "
                   "one recurrent cell step per query time fed the gap since the previous one; output "
                   "(query, hidden). Reads input.query.")
    properties = {
        "cell": {"enum": ["rnn", "gru"], "default": "gru", "description": "rnn: Elman (tanh) cell; gru: GRU cell."},
        "hidden": int_schema("Hidden state size: the input's size, written to check it. Unset (the default): the "
                             "input's size."),
        "start": number_schema("The time the input state is at; the first query time's gap is from it.", 0),
    }
    not_in_dynamics = _NOT_IN_DYNAMICS

    def series_inputs(self, options: Mapping[str, Any]) -> Mapping[str, bool]:
        return {"query_times": True}

    def output_shape(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> Shape:
        self.need_rank(shape, 1, "(hidden,)", "put a linear layer to the hidden size before it")
        if options["hidden"] is not None and options["hidden"] != shape[0]:
            raise ShapeError(f"hidden is {options['hidden']}, but its input (the initial hidden state) has "
                             f"{shape[0]} features", f"put linear: {options['hidden']} before it, or remove hidden",
                             key="hidden")
        assert ctx.query is not None  # the validator checks that the model reads query times first
        return (ctx.query, shape[0])

    def num_params(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> int:
        h = shape[0]
        return (3 if options["cell"] == "gru" else 1) * (h + h * h + 2 * h)

    def build(self, options: Mapping[str, Any], shape: Shape, ctx: LayerContext) -> "nn.Module":
        from odespec.layers.series_modules import RNNDecoder

        return RNNDecoder(options["cell"], shape[0], options["start"])
