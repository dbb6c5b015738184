"""The JSON Schema of the spec language (Draft 2020-12), built from the registries.

The checked-in ``schemas/odespec.schema.json`` is exactly what :func:`build_schema` returns for
the built-in layers and methods (a test keeps them in sync), so editors get enums to
autocomplete. Validation uses the shipped file, extended in memory when third-party layers are
registered through entry points.

Conventions, kept by a test: every object has ``additionalProperties: false``; every property
has a ``description``, and a ``default`` unless it is required or "unset" means that odespec
chooses (its description then says what happens); a ``default`` is a valid value, never null,
because editors insert it when they complete the key. Alternatives (a name or a mapping, a short
form or the full one) are ``oneOf`` branches of different JSON types (:func:`~odespec.components.alternatives`),
so that an error points at the one form the user wrote and editors complete every form.

The schema is also what editors use (yaml-language-server, through the modeline
``# yaml-language-server: $schema=PATH``, PATH from ``odespec schema --path``), so it carries
annotations for them that validators ignore: ``enumDescriptions`` (one per name),
``defaultSnippets`` (the text a layer name inserts), ``doNotSuggest``, and ``examples`` where an
editor would otherwise insert an invalid value (:func:`with_editor_examples`). The test that
drives yaml-language-server with it is tests/spec/test_editor.py.
"""

from __future__ import annotations

import json
from dataclasses import fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from odespec.components import alternatives, branch_types
from odespec.solvers import tableaus
from odespec.solvers.config import (
    DEFAULT_GRADIENT,
    DEFAULT_METHOD,
    GradientConfig,
    SolverConfig,
    declared_gradients,
)
from odespec.solvers.options import option_spec
from odespec.spec.correction import correction_schema
from odespec.spec.model import OnnxExportSpec

SCHEMA_FILENAME = "odespec.schema.json"
FORMAT_VERSION = 1
#: the schema's ``$id``: a name, not an address. A URN because nothing serves the schema on the
#: web, and a validator or editor given an ``https`` ``$id`` may try to fetch it; editors load the
#: file the modeline names (``odespec schema --path`` prints where the installed one is)
SCHEMA_ID = f"urn:odespec:spec-schema:{FORMAT_VERSION}"

# Marker keywords (ignored by validators) that tell the error formatter what a list of names is,
# so that an unknown one gets a did-you-mean for the right kind of thing.
NAMES_KEY = "x-odespec-names"

#: ``export.onnx``'s defaults: the fields of the spec object that holds them
EXPORT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(OnnxExportSpec)}
#: ``export.onnx.steps: auto``: the fixed-step methods calibration searches by default, and the
#: most steps per output interval it tries before giving up
CALIBRATION_METHODS = ("euler", "midpoint", "heun", "ralston", "rk4", "rk4_38")
MAX_CALIBRATION_STEPS = 4096
#: the most Newton iterations per step an exported implicit solve unrolls (and the count
#: calibration evaluates the step counts with, before it searches the iterations)
MAX_EXPORT_NEWTON_ITERS = 16
#: ``export.onnx.grid``: which fixed-step grids calibration searches (odespec.export.grids)
GRID_MODES = {
    "auto": "uniform grids, and optimised ones where they apply (every ODE block continuous, with fixed output "
            "times and an adaptive training solver; the unrolled layout)",
    "uniform": "uniform grids only: steps equal steps per output interval",
    "optimised": "uniform and optimised grids (step points placed for the model, fitted on half the calibration "
                 "inputs and checked on the other half); an error where they do not apply",
}
#: ``export.onnx.precision``: the graph's element types (the model's dtype when not written)
EXPORT_PRECISIONS = {
    "float32": "weights, inputs, outputs and compute in float32 (a float64 model is cast)",
    "float16": "weights, inputs, outputs and compute in float16",
    "mixed": "inputs, outputs and the solver's state accumulation (y + h * sum b_i k_i) in float32; "
             "the layers and the dynamics in float16",
}
#: ``export.onnx.verify``: the runtimes a graph can be checked on (odespec.export.runtimes
#: implements each); the GPU ones are skipped, with the reason, where the machine cannot run them
EXPORT_RUNTIMES = {
    "onnxruntime": "onnxruntime, CPU execution provider",
    "onnxruntime-cuda": "onnxruntime, CUDA execution provider (a GPU and onnxruntime-gpu)",
    "onnxruntime-tensorrt": "onnxruntime, TensorRT execution provider (a GPU, onnxruntime-gpu and TensorRT)",
    "openvino": "Intel OpenVINO on the CPU, at INFERENCE_PRECISION_HINT f32 (pip install 'odespec[openvino]')",
}
ODE_BLOCK_DESCRIPTION = "An ODE block: y(t1) = y(t0) + integral of f(t, y) dt, solved numerically."


def _num(description: str, default: Any, **kw: Any) -> dict:
    """A number property with a default."""
    return {"type": "number", "description": description, **kw, "default": default}


def branch(alternative: dict[str, Any], json_type: str) -> dict[str, Any]:
    """The branch of an :func:`~odespec.components.alternatives` schema that takes ``json_type``."""
    return next(b for b in alternative["oneOf"] if json_type in branch_types(b))


def _layer_item(values: dict[str, dict[str, Any]], bare: dict[str, str]) -> dict[str, Any]:
    """A list item that is a layer: a one-key mapping ``{name: value}`` (``values``: each name's
    value schema, described) or, for the names in ``bare`` (name -> description), the name alone.

    The mapping is closed by ``additionalProperties: false`` alone (no ``propertyNames``), so an
    unknown name is one error, not two on the same key. For editors: a name that cannot stand
    alone is offered as a snippet ``name: `` (valid in block and flow lists alike) instead of as a
    key, which a flow list would get without its colon; and each branch carries ``allOf: [true]``,
    which validators ignore, because yaml-language-server otherwise offers "- (array item)"
    entries, which insert a block-list dash, inside flow lists.
    """
    mapping = {
        "type": "object",
        "description": "A one-key mapping: {layer_name: options}.",
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {n: v if n in bare else {**v, "doNotSuggest": True} for n, v in values.items()},
        "additionalProperties": False,
        NAMES_KEY: "layer",
        "defaultSnippets": [{"label": n, "description": values[n]["description"], "body": f"^{n}: $1"}
                            for n in sorted(values) if n not in bare],
        "allOf": [True],
    }
    names = sorted(bare)
    name = {"enum": names, "enumDescriptions": [bare[n] for n in names], NAMES_KEY: "layer",
            "description": "A layer without options.", "allOf": [True]}
    return alternatives(mapping, name, description="A layer: its name, or a one-key mapping {name: options}.")


def _layer_defs() -> dict[str, dict[str, Any]]:
    """``$defs`` of a layer in a model list, in the dynamics (no layer whose type says it may not
    be there: the schema refuses ``batchnorm`` in dynamics, as the validator does) and of the
    items of a model list (layers and ODE blocks), for the registered layer types."""
    from odespec.layers import registry

    types = registry.all_types()
    values = {t.name: t.options_schema() for t in types}
    bare = {t.name: t.description for t in types if t.bare_allowed()}
    inside = {t.name for t in types if not t.not_in_dynamics}
    # a container's inner layers (residual) are dynamics layers when the container is
    dynamics_values = {n: _retarget(v, "#/$defs/layer", "#/$defs/dynamics_layer")
                       for n, v in values.items() if n in inside}
    # under allOf, not beside the $ref: yaml-language-server moves a $ref's siblings (doNotSuggest)
    # into an allOf of its own, where completion no longer sees them
    ode = {"allOf": [{"$ref": "#/$defs/ode_block"}], "description": ODE_BLOCK_DESCRIPTION}
    return {
        "layer": _layer_item(values, bare),
        "dynamics_layer": _layer_item(dynamics_values, {n: d for n, d in bare.items() if n in inside}),
        "model_item": _layer_item({**values, "ode": ode}, bare),
    }


#: what an editor (yaml-language-server) inserts for a number that has no default, enum, const
#: or example
EDITOR_NUMBER = 0
# the values tried, in order, as the placeholder of a number that does not take 0: round values
# a user reads as placeholders
_PLACEHOLDERS = {"integer": (1, 2, 10), "number": (0.1, 0.001, 1, 10)}
_GIVEN = {"default", "enum", "const", "examples"}


def _within(prop: dict[str, Any], value: float) -> bool:
    """Whether ``value`` is within the bounds of a number property."""
    return (value >= prop.get("minimum", value) and value <= prop.get("maximum", value)
            and ("exclusiveMinimum" not in prop or value > prop["exclusiveMinimum"])
            and ("exclusiveMaximum" not in prop or value < prop["exclusiveMaximum"]))


def _placeholder(prop: dict[str, Any]) -> Any:
    """A valid value for an editor to insert where it would insert an invalid one, or None where
    what it inserts is valid: a number that does not take 0; for alternatives without a default
    (which it would insert as a bare key, without the colon), a value of their first scalar form."""
    if prop.get("type") in _PLACEHOLDERS:
        return None if _within(prop, EDITOR_NUMBER) else next(v for v in _PLACEHOLDERS[prop["type"]] if _within(prop, v))
    for form in prop.get("oneOf", ()):
        if "enum" in form or "const" in form:
            return form["enum"][0] if "enum" in form else form["const"]
        if form.get("type") in _PLACEHOLDERS:
            number = _placeholder(form)
            return EDITOR_NUMBER if number is None else number
    return None


def with_editor_examples(node: Any) -> Any:
    """A copy of ``node`` with what an editor needs to insert valid text where it otherwise
    would not: ``examples: [v]`` on a property without a default that it would complete as
    ``steps: 0`` or as a bare ``loss``, and a ``default`` on the number items of a list that it
    would start as ``- 0`` (there it reads only ``default``). The properties of a
    ``{name: options}`` mapping are left alone: a name's completion is a snippet or the bare name."""
    if isinstance(node, list):
        return [with_editor_examples(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: with_editor_examples(v) for k, v in node.items()}
    for prop in () if NAMES_KEY in out else out.get("properties", {}).values():
        if not _GIVEN & prop.keys() and (example := _placeholder(prop)) is not None:
            prop["examples"] = [example]
    items = out.get("items")
    if isinstance(items, dict) and not _GIVEN & items.keys() and (example := _placeholder(items)) is not None:
        items["default"] = example
    return out


def _retarget(node: Any, old: str, new: str) -> Any:
    """A copy of ``node`` with every ``$ref`` to ``old`` pointing at ``new``."""
    if isinstance(node, dict):
        return {k: new if k == "$ref" and v == old else _retarget(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_retarget(v, old, new) for v in node]
    return node


def method_fragment() -> dict[str, Any]:
    """A solver method name: every registered method, each described, marked for did-you-mean
    messages."""
    return {**SolverConfig.method_schema(), NAMES_KEY: "solver method"}


def gradient_fragment() -> dict[str, Any]:
    """The ``gradient:`` object form, its method names marked for did-you-mean messages."""
    fragment = GradientConfig.schema()
    fragment["properties"]["method"][NAMES_KEY] = "gradient method"
    return fragment


def solve_properties() -> dict[str, Any]:
    """An ODE block's ``solver`` and ``gradient`` properties, each a name or an object with
    options, from the solvers' configuration and registries."""
    solver_object = SolverConfig.schema()
    solver_object["properties"]["method"][NAMES_KEY] = "solver method"
    gradient_object = gradient_fragment()
    gradient_name = {k: v for k, v in gradient_object["properties"]["method"].items() if k != "default"}
    return {
        "solver": alternatives(solver_object, method_fragment(), default=DEFAULT_METHOD,
                               description="The solver: a method name, or an object with options."),
        "gradient": alternatives(gradient_object, gradient_name, default=DEFAULT_GRADIENT,
                                 description="Gradient method: a name, or an object with options."),
    }


#: the names of ``export.onnx.method``: registered methods that are fixed-step (an adaptive one is
#: refused with its own message, :mod:`odespec.spec.messages`)
FIXED_STEP_NAMES = "fixed-step method"


def export_method_property() -> dict[str, Any]:
    """``export.onnx.method``: a registered fixed-step method (an exported graph takes a fixed
    number of steps), each described."""
    every = SolverConfig.method_schema()
    words = dict(zip(every["enum"], every["enumDescriptions"], strict=True))
    fixed = [m for m in every["enum"] if not tableaus.is_adaptive(m)]
    return {"enum": fixed, "enumDescriptions": [words[m] for m in fixed], NAMES_KEY: FIXED_STEP_NAMES,
            "description": "Fixed-step method of the unrolled graph (when neither method nor steps is written "
                           "and every ODE block trains with one fixed-step method and step count: those).",
            "default": EXPORT_DEFAULTS["method"]}


def registry_key() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the solver vocabulary of the active schema depends on: the registered methods and
    gradient methods (a public ``register_tableau``/``register_gradient`` changes it)."""
    return tableaus.spec_method_names(), tuple(d.name for d in declared_gradients())


def _with_solve_vocabulary(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (a fresh copy of the shipped file) with the methods and gradient methods
    registered now (the shipped file has the built-in ones)."""
    methods, gradients = registry_key()
    ode = schema["$defs"]["ode_block"]["properties"]
    if (branch(ode["solver"], "string")["enum"] == list(methods)
            and branch(ode["gradient"], "string")["enum"] == list(gradients)):
        return schema
    schema["$defs"]["ode_block"]["properties"].update(with_editor_examples(solve_properties()))
    schema["$defs"]["onnx_export"]["properties"]["method"] = export_method_property()
    return schema


def _dynamics() -> dict[str, Any]:
    """The ``dynamics`` object: the layers of f and how t enters."""
    return {
        "type": "object",
        "description": "The network f(t, y; theta) whose output is dy/dt; it must keep the state's shape.",
        "properties": {
            "time": {
                "enum": ["none", "concat"],
                "default": "none",
                "description": "none: f(y) is autonomous; concat: t enters every linear/conv layer as one extra "
                "input feature/channel (as in the paper's code).",
            },
            "layers": {
                "type": "array",
                "minItems": 1,
                "maxItems": 256,
                "description": "The layers of f, applied in order.",
                "items": {"$ref": "#/$defs/dynamics_layer"},
            },
        },
        "required": ["layers"],
        "additionalProperties": False,
    }


def _ode_block() -> dict[str, Any]:
    """The ``ode`` block object: times, family, output, dynamics, solver and gradient."""
    return {
        "type": "object",
        "description": ODE_BLOCK_DESCRIPTION,
        "properties": {
            "t": alternatives(
                {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 10_000,
                 "description": "[t0, t1], or more output times (strictly monotonic)."},
                {
                    "type": "object",
                    "description": "num evenly spaced times from start to stop.",
                    "properties": {
                        "start": {"type": "number", "description": "First time.", "default": 0},
                        "stop": {"type": "number", "description": "Last time."},
                        "num": {"type": "integer", "minimum": 2, "maximum": 10_000,
                                "description": "Number of times, both ends included."},
                    },
                    "required": ["stop", "num"],
                    "additionalProperties": False,
                },
                {"const": "query", "description": "query: the outputs are at each sample's own query times "
                 "(the model input query_times, input.query of them), solved from start."},
                description="Integration times: [t0, t1], more output times (strictly monotonic), "
                            "{start, stop, num} for num evenly spaced times, or query: each sample's own "
                            "query times (model input query_times).",
                default=[0, 1],
            ),
            "start": {"type": "number", "default": 0,
                      "description": "t: query only: the time every sample's solve starts at (its query times "
                                     "must be at or after it)."},
            "family": {
                "enum": ["ode", "rknet", "resnet"],
                "default": "ode",
                "description": "ode: a continuous block with the spec's solver; rknet: fixed-step solver, weights "
                "shared across steps; resnet: Euler steps with separate weights per step (steps residual blocks).",
            },
            "augment": {
                "type": "integer", "minimum": 0, "maximum": 4096, "default": 0,
                "description": "Augmented neural ODE: append this many zero channels (or features) to the state.",
            },
            "output": {
                "enum": ["final", "trajectory"],
                "default": "final",
                "description": "final: the state at the last time; trajectory: the states at every time in t, "
                "as shape (len(t), *state) per sample (t: query: (query, *state), at the sample's query times; "
                "final: the state at its last query time).",
            },
            "dynamics": {"$ref": "#/$defs/dynamics"},
            **solve_properties(),
        },
        "required": ["dynamics"],
        "additionalProperties": False,
    }


def _onnx_export() -> dict[str, Any]:
    """``export.onnx``: how the model is unrolled and written."""
    return {
        "type": "object",
        "description": "ONNX export: the ODE blocks are unrolled into a fixed-step graph.",
        "properties": {
            "file": {"type": "string", "pattern": r"^[^/\\\x00]+\.onnx$",
                     "description": "Output file name (default: NAME.onnx), written in the output directory."},
            "method": export_method_property(),
            "steps": alternatives(
                {**option_spec("steps").json_schema(), "description": "Steps per output interval of each ODE block."},
                # no `type: string` beside the const: yaml-language-server would report both
                {"const": "auto", "description": "Write a step count (an integer), or auto to calibrate."},
                description="Steps per output interval of each ODE block, or auto: calibrate, choosing the "
                            "cheapest fixed-step method and step count whose output stays within match_tol "
                            "(or match) of the model solved with its training solver. When neither method nor "
                            "steps is written and every ODE block trains with one fixed-step method and step "
                            "count, the default is those: a discrete model is exported as it was trained.",
                default=EXPORT_DEFAULTS["steps"],
            ),
            "newton_iters": alternatives(
                {"type": "integer", "minimum": 1, "maximum": MAX_EXPORT_NEWTON_ITERS,
                 "description": "Newton iterations per step."},
                {"const": "auto", "description": "Write an iteration count (an integer), or auto."},
                description="Implicit methods: the simplified-Newton iterations the graph unrolls per step (one "
                            "forward-difference Jacobian and one Gauss-Jordan inverse per step, then each "
                            "iteration evaluates every implicit stage once). auto: chosen by calibration with "
                            "steps: auto (the fewest within match_tol of the training solver), else the fewest "
                            "whose output is the converged iteration's up to float rounding.",
                default=EXPORT_DEFAULTS["newton_iters"],
            ),
            "calibration_data": {"type": "string", "minLength": 1,
                                 "description": "Inputs for calibration and the deployment error (.npy, .npz or .csv, "
                                                "read as odespec run reads them; a classifier's .npz may hold labels "
                                                "y), relative to the spec's directory; --calibration-data overrides it "
                                                "(default: seeded random inputs)."},
            "match_tol": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                          "description": "steps: auto only: the largest max |export - training-solver model| "
                                         "accepted on the calibration inputs (default: derived from the training "
                                         "solvers' rtol/atol, or float rounding for fixed-step training)."},
            "match": {
                "type": "object",
                "description": "steps: auto only, instead of match_tol: calibrate a classifier on its predictions, "
                               "by one of agreement or accuracy (default: none, calibrate on match_tol).",
                "properties": {
                    "agreement": {
                        "type": "number", "exclusiveMinimum": 0, "maximum": 1,
                        "description": "The smallest fraction of calibration samples whose predicted class (argmax "
                                       "of the output's last axis) is the training-solver model's, e.g. 0.999."},
                    "accuracy": {
                        "type": "number", "exclusiveMinimum": 0, "maximum": 1,
                        "description": "The smallest fraction of labelled calibration samples (--calibration-data "
                                       "FILE.npz with labels y) whose predicted class is their label, e.g. 0.97."},
                },
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": False,
            },
            "grid": {"enum": list(GRID_MODES), NAMES_KEY: "grid", "enumDescriptions": list(GRID_MODES.values()),
                     "default": EXPORT_DEFAULTS["grid"],
                     "description": "steps: auto only: the fixed-step grids calibration searches: "
                                    + "; ".join(f"{k}: {v}" for k, v in GRID_MODES.items()) + "."},
            "opset": {"type": "integer", "minimum": 14, "maximum": 23, "default": EXPORT_DEFAULTS["opset"],
                      "description": "ONNX opset version."},
            "dynamic_batch": {"type": "boolean", "default": EXPORT_DEFAULTS["dynamic_batch"],
                              "description": "Leave the batch dimension symbolic."},
            "parity_tol": _num("Largest allowed |onnxruntime - PyTorch| on the parity check, times the output's "
                               "largest magnitude where that exceeds 1 (float rounding is relative).",
                               EXPORT_DEFAULTS["parity_tol"], exclusiveMinimum=0, maximum=1),
            "precision": {"enum": list(EXPORT_PRECISIONS), NAMES_KEY: "precision",
                          "enumDescriptions": list(EXPORT_PRECISIONS.values()),
                          "description": "Element types of the graph (default: the model's dtype): "
                                         + "; ".join(f"{k}: {v}" for k, v in EXPORT_PRECISIONS.items()) + "."},
            "verify": {"type": "array", "items": {"enum": list(EXPORT_RUNTIMES), NAMES_KEY: "runtime",
                                                            "enumDescriptions": list(EXPORT_RUNTIMES.values())}, "minItems": 1, "uniqueItems": True,
                       "default": list(EXPORT_DEFAULTS["verify"]),
                       "description": "Runtimes to check the graph on (parity with PyTorch, latency at batch 1 and "
                                      "256): " + "; ".join(f"{k}: {v}" for k, v in EXPORT_RUNTIMES.items()) + "."},
            "loop": {"type": "boolean", "default": EXPORT_DEFAULTS["loop"],
                     "description": "Export each output interval's steps as one ONNX Loop node holding a single "
                                    "solver step, so the file size does not grow with the step count "
                                    "(default: unroll every step)."},
            "correction": correction_schema(),
        },
        "additionalProperties": False,
    }

def build_schema() -> dict[str, Any]:
    """The whole schema for the currently registered layers and solver methods."""
    # top-level sections owned by other packages (train:), as their owners generate them
    from odespec.spec import sections

    section_refs = {s.name: {"$ref": f"#/$defs/{s.name}"} for s in sections.all_types()}
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "odespec model spec",
        "description": "A neural ODE network described declaratively (odespec spec format version 1).",
        "type": "object",
        "properties": {
            "odespec": {"const": FORMAT_VERSION, "description": "Spec format version.", "default": FORMAT_VERSION},
            "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                     "description": "Model name (letters, digits, '_', '.', '-'); names output files."},
            "description": {"type": "string", "maxLength": 10_000, "description": "Free text.", "default": ""},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 0,
                     "description": "Seed for parameter initialisation and random test inputs."},
            "dtype": {"enum": ["float32", "float64"], "default": "float32", "description": "Floating-point type."},
            "device": {"enum": ["cpu", "cuda"], "default": "cpu", "description": "Where the PyTorch model runs."},
            "input": {
                "type": "object",
                "description": "The model's input.",
                "properties": {
                    "shape": {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 1, "maximum": 1_000_000,
                                  "description": "A dimension's size, 1 to 1000000."},
                        "minItems": 1,
                        "maxItems": 4,
                        "description": "Per-sample shape (without the batch dimension), e.g. [1, 28, 28].",
                    },
                    "times": {"type": "boolean", "default": False,
                              "description": "The model reads each sample's observation times: input times of "
                                             "shape (batch, T), non-decreasing per sample (needs shape [T, F])."},
                    "mask": {"type": "boolean", "default": False,
                             "description": "The model reads which values were observed: input mask of shape "
                                            "(batch, T, F), 1 = observed, 0 = missing or padding (needs shape [T, F])."},
                    "query": {"type": "integer", "minimum": 1, "maximum": 10_000,
                              "description": "The model reads this many query times per sample: input query_times "
                                             "of shape (batch, query), the times its outputs are at (read by an ODE "
                                             "block with t: query or an rnn_decoder). Unset (the default): none."},
                },
                "required": ["shape"],
                "additionalProperties": False,
            },
            "model": {
                "type": "array",
                "minItems": 1,
                "maxItems": 256,
                "description": "Layers and ODE blocks, applied in order.",
                "items": {"$ref": "#/$defs/model_item"},
            },
            "export": {
                "type": "object",
                "description": "Export settings.",
                "properties": {"onnx": {"$ref": "#/$defs/onnx_export"}},
                "default": {"onnx": {}},
                "additionalProperties": False,
            },
            **section_refs,
        },
        "required": ["odespec", "name", "input", "model"],
        "additionalProperties": False,
        "$defs": {
            **_layer_defs(),
            "ode_block": _ode_block(),
            "dynamics": _dynamics(),
            "onnx_export": _onnx_export(),
            **{s.name: s.schema() for s in sections.all_types()},
        },
    }
    return with_editor_examples(schema)


def schema_text(schema: dict[str, Any]) -> str:
    """The canonical text of a schema, as checked in (sorted keys, 2-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def shipped_schema_path() -> Path:
    """Where the shipped schema file is: inside an installed wheel, or the repo's ``schemas/``."""
    packaged = resources.files("odespec") / "_schemas" / SCHEMA_FILENAME
    if packaged.is_file():
        return Path(str(packaged))
    repo = Path(__file__).resolve().parents[2] / "schemas" / SCHEMA_FILENAME
    if repo.is_file():
        return repo
    raise FileNotFoundError(f"odespec's schema file {SCHEMA_FILENAME} is missing from the installation")


def active_schema(sections: Optional[frozenset[str]] = None) -> dict[str, Any]:
    """The schema validation uses: the shipped file, plus any third-party layers (registered
    through the ``odespec.layers`` entry points), any methods and gradient methods registered
    through the solvers' public API, and the fragments of the registered top-level sections as
    their owners extend them (``train``: third-party data sources).

    ``sections`` names the sections whose fragments are brought up to date, those a spec has;
    the others stay as shipped, so that validating a spec without ``train:`` loads nothing of
    the train package. None: every registered section (``odespec schema``)."""
    return _active_schema(registry_key(), sections)


@lru_cache(maxsize=None)
def _active_schema(key: tuple[tuple[str, ...], tuple[str, ...]],
                   sections: Optional[frozenset[str]]) -> dict[str, Any]:
    from odespec.layers import registry
    from odespec.spec import sections as registered

    # parsed anew on each call, so the extensions below change no one else's copy
    schema = json.loads(shipped_schema_path().read_text(encoding="utf-8"))
    if registry.plugin_names():
        schema["$defs"].update(with_editor_examples(_layer_defs()))
    for section in registered.all_types():
        if (sections is None or section.name in sections) and section.name in schema["$defs"]:
            schema["$defs"][section.name] = section.extend_schema(schema["$defs"][section.name])
    return _with_solve_vocabulary(schema)


if __name__ == "__main__":  # pragma: no cover - the developers' regeneration command
    # `python -m odespec.spec.schema > schemas/odespec.schema.json` after changing a registry
    import sys

    sys.stdout.write(schema_text(build_schema()))
