"""The JSON Schema of the spec language (Draft 2020-12), built from the registries.

The checked-in ``schemas/odespec.schema.json`` is exactly what :func:`build_schema` returns for
the built-in layers and methods (a test keeps them in sync), so editors get enums to
autocomplete. Validation uses the shipped file, extended in memory when third-party layers are
registered through entry points.

Conventions, kept by a test: every object has ``additionalProperties: false``; every property
has a ``description`` and (unless required) a ``default``. Alternatives are written as
``if/then/else`` on the JSON type rather than ``anyOf`` so that an error points at the one form
the user wrote instead of listing every branch.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Optional

SCHEMA_FILENAME = "odespec.schema.json"
SCHEMA_ID = "https://odespec.dev/schemas/odespec.schema.json"
FORMAT_VERSION = 1

# Marker keywords (ignored by validators) that tell the error formatter what a list of names is,
# so that an unknown one gets a did-you-mean for the right kind of thing.
NAMES_KEY = "x-odespec-names"

MAX_STEPS = 100_000
MAX_NUM_STEPS = 10_000_000
#: ``export.onnx.steps: auto``: the fixed-step methods calibration searches by default, and the
#: most steps per output interval it tries before giving up
CALIBRATION_METHODS = ("euler", "midpoint", "heun", "ralston", "rk4", "rk4_38")
MAX_CALIBRATION_STEPS = 4096


def _num(description: str, default: Any, **kw: Any) -> dict:
    """A number property; a ``None`` default means "unset: odespec chooses" (documented)."""
    return {"type": "number", "description": description, **kw, "default": default}


def _layer_item(names_with_values: dict[str, dict], bare: list[str], extra_names: tuple[str, ...] = ()) -> dict:
    """A list item that is a bare layer name or a one-key mapping ``{name: options}``."""
    all_names = sorted(names_with_values) + list(extra_names)
    return {
        "if": {"type": "string"},
        "then": {"enum": sorted(bare), NAMES_KEY: "layer", "description": "A layer without options."},
        "else": {
            "type": "object",
            "description": "A one-key mapping: {layer_name: options}.",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": {"enum": all_names, NAMES_KEY: "layer"},
            "properties": names_with_values,
            "additionalProperties": False,
        },
    }


def build_schema() -> dict[str, Any]:
    """The whole schema for the currently registered layers and solver methods."""
    from odespec.layers import registry
    from odespec.solvers import tableaus

    layer_values = {t.name: t.options_schema() for t in registry.all_types()}
    bare = [t.name for t in registry.all_types() if t.bare_allowed()]
    methods = list(tableaus.method_names())
    fixed = [m for m in methods if not tableaus.is_adaptive(m)]
    adaptive = [m for m in methods if tableaus.is_adaptive(m)]

    method = {
        "enum": methods,
        NAMES_KEY: "solver method",
        "description": "Runge-Kutta method. Fixed-step: " + ", ".join(fixed) + ". Adaptive: " + ", ".join(adaptive) + ".",
    }
    steps = {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_STEPS,
        "description": "Fixed-step methods: number of equal steps per output interval (over the whole span when t is [t0, t1]).",
        "default": None,
    }
    tol = dict(exclusiveMinimum=0, maximum=1)
    solver_object = {
        "type": "object",
        "description": "How the ODE block is solved.",
        "properties": {
            "method": {**method, "default": "dopri5"},
            "steps": steps,
            "step_size": _num("Fixed-step methods: the largest step; each output interval is divided into the fewest equal steps no larger (alternative to steps).", None, exclusiveMinimum=0),
            "rtol": _num("Adaptive methods: relative tolerance.", 1e-7, **tol),
            "atol": _num("Adaptive methods: absolute tolerance.", 1e-9, **tol),
            "first_step": _num("Adaptive methods: initial step size (default: chosen automatically).", None, exclusiveMinimum=0),
            "max_step": _num("Adaptive methods: largest step allowed.", None, exclusiveMinimum=0),
            "max_num_steps": {
                "type": "integer", "minimum": 1, "maximum": MAX_NUM_STEPS, "default": 100_000,
                "description": "Adaptive methods: give up after this many steps (a solve never hangs).",
            },
            "controller": {
                "enum": ["pi", "i"], "default": "pi",
                "description": "Adaptive methods: step-size controller; pi (proportional-integral, smoother "
                "step sequences) or i (the plain controller torchdiffeq uses; often fewer steps).",
            },
        },
        "additionalProperties": False,
    }
    gradient_object = {
        "type": "object",
        "description": "How gradients flow through the ODE solve.",
        "properties": {
            "method": {
                "enum": ["backprop", "adjoint", "checkpoint"],
                NAMES_KEY: "gradient method",
                "description": "backprop: autograd through the solver (memory grows with steps); adjoint: "
                "continuous adjoint (O(1) memory, approximate gradients); checkpoint: exact gradients, "
                "recomputing steps from stored checkpoints (sub-linear memory).",
                "default": "backprop",
            },
            "rtol": _num("adjoint: relative tolerance of the backward solve (default: the solver's).", None, **tol),
            "atol": _num("adjoint: absolute tolerance of the backward solve (default: the solver's).", None, **tol),
            "seminorm": {"type": "boolean", "default": False,
                         "description": "adjoint: leave the parameter-gradient channels out of error control (fewer backward steps)."},
            "checkpoints": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS, "default": None,
                            "description": "checkpoint: how many states to keep (default: about the square root of the step count)."},
        },
        "required": ["method"],
        "additionalProperties": False,
    }
    dynamics = {
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
                "items": {"$ref": "#/$defs/layer"},
            },
        },
        "required": ["layers"],
        "additionalProperties": False,
    }
    ode_block = {
        "type": "object",
        "description": "An ODE block: y(t1) = y(t0) + integral of f(t, y) dt, solved numerically.",
        "properties": {
            "t": {
                "description": "Integration times: [t0, t1], more output times (strictly monotonic), or "
                "{start, stop, num} for num evenly spaced times.",
                "default": [0, 1],
                "if": {"type": "array"},
                "then": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 10_000,
                         "description": "[t0, t1], or more output times (strictly monotonic)."},
                "else": {
                    "type": "object",
                    "properties": {
                        "start": {"type": "number", "description": "First time.", "default": 0},
                        "stop": {"type": "number", "description": "Last time."},
                        "num": {"type": "integer", "minimum": 2, "maximum": 10_000,
                                "description": "Number of times, both ends included."},
                    },
                    "required": ["stop", "num"],
                    "additionalProperties": False,
                },
            },
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
                "as shape (len(t), *state) per sample.",
            },
            "dynamics": {"$ref": "#/$defs/dynamics"},
            "solver": {
                "description": "The solver: a method name, or an object with options.",
                "default": {"method": "dopri5"},
                "if": {"type": "string"},
                "then": method,
                "else": solver_object,
            },
            "gradient": {
                "description": "Gradient method: a name, or an object with options.",
                "default": "backprop",
                "if": {"type": "string"},
                "then": gradient_object["properties"]["method"],
                "else": gradient_object,
            },
        },
        "required": ["dynamics"],
        "additionalProperties": False,
    }
    onnx_export = {
        "type": "object",
        "description": "ONNX export: the ODE blocks are unrolled into a fixed-step graph.",
        "properties": {
            "file": {"type": "string", "pattern": r"^[^/\\\x00]+\.onnx$", "default": None,
                     "description": "Output file name (default: NAME.onnx), written in the output directory."},
            "method": {**{k: v for k, v in method.items() if k != "description"},
                       "description": "Fixed-step method of the unrolled graph.", "default": "rk4"},
            "steps": {
                "description": "Steps per output interval of each ODE block, or auto: calibrate, choosing the "
                               "cheapest fixed-step method and step count whose output stays within match_tol "
                               "of the model solved with its training solver.",
                "default": 8,
                # a word takes the `auto` branch; a number-like string ('1_000', '8') the integer
                # branch, so that it keeps the integer's messages (underscores, quoting)
                "if": {"type": "string", "pattern": "^[A-Za-z]"},
                "then": {"const": "auto", "description": "Write a step count (an integer), or auto to calibrate."},
                "else": {**{k: v for k, v in steps.items() if k != "default"},
                         "description": "Steps per output interval of each ODE block."},
            },
            "match_tol": _num("steps: auto only: the largest max |export - training-solver model| accepted on "
                              "the calibration inputs.", 1e-4, exclusiveMinimum=0, maximum=1),
            "opset": {"type": "integer", "minimum": 14, "maximum": 23, "default": 17,
                      "description": "ONNX opset version."},
            "dynamic_batch": {"type": "boolean", "default": True,
                              "description": "Leave the batch dimension symbolic."},
            "parity_tol": _num("Largest allowed |onnxruntime - PyTorch| on the parity check.", 1e-5, exclusiveMinimum=0, maximum=1),
            "loop": {"type": "boolean", "default": False,
                     "description": "Export each output interval's steps as one ONNX Loop node holding a single "
                                    "solver step, so the file size does not grow with the step count "
                                    "(default: unroll every step)."},
        },
        "additionalProperties": False,
    }
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
                     "description": "Model name (letters, digits, '_', '.', '-'); names output files.",
                     "default": None},
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
                    }
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
            "layer": _layer_item(layer_values, bare),
            "model_item": _layer_item({**layer_values, "ode": {"$ref": "#/$defs/ode_block"}}, bare),
            "ode_block": ode_block,
            "dynamics": dynamics,
            "onnx_export": onnx_export,
            **{s.name: s.schema() for s in sections.all_types()},
        },
    }
    return schema


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


@lru_cache(maxsize=None)
def active_schema(sections: Optional[frozenset[str]] = None) -> dict[str, Any]:
    """The schema validation uses: the shipped file, plus any third-party layers (registered
    through the ``odespec.layers`` entry points), with the fragments of the registered top-level
    sections as their owners extend them (``train``: third-party data sources).

    ``sections`` names the sections whose fragments are brought up to date, those a spec has;
    the others stay as shipped, so that validating a spec without ``train:`` loads nothing of
    the train package. None: every registered section (``odespec schema``)."""
    from odespec.layers import registry
    from odespec.spec import sections as registered

    # parsed anew on each call, so the extensions below change no one else's copy
    schema = json.loads(shipped_schema_path().read_text(encoding="utf-8"))
    extra = registry.plugin_names()
    for key in ("layer", "model_item") if extra else ():
        item = schema["$defs"][key]
        for name in extra:
            t = registry.get(name)
            item["else"]["properties"][name] = t.options_schema()
            item["else"]["propertyNames"]["enum"].append(name)
            if t.bare_allowed():
                item["then"]["enum"].append(name)
    for section in registered.all_types():
        if (sections is None or section.name in sections) and section.name in schema["$defs"]:
            schema["$defs"][section.name] = section.extend_schema(schema["$defs"][section.name])
    return schema


if __name__ == "__main__":  # pragma: no cover - the developers' regeneration command
    # `python -m odespec.spec.schema > schemas/odespec.schema.json` after changing a registry
    import sys

    sys.stdout.write(schema_text(build_schema()))
