"""The JSON Schema of the spec's ``train`` section, generated from the data-source registry
(the section, :mod:`odespec.train.section`, hands it to :mod:`odespec.spec.schema`).

Same house rules as :mod:`odespec.spec.schema`: closed objects, a description on every property
and a default unless "unset" means odespec chooses (never a null default), alternatives as
:func:`~odespec.components.alternatives` (branches of different JSON types). Rules a schema cannot say
(which options go with which optimizer, the data against the model) are in
:mod:`odespec.train.check`.
"""

from __future__ import annotations

from typing import Any

from odespec.components import alternatives
from odespec.spec.schema import NAMES_KEY, branch, with_editor_examples
from odespec.train import data as sources
from odespec.train.check import LOSS_OPTIONS, OPTIMIZER_OPTIONS, SCHEDULE_OPTIONS

__all__ = ["train_schema", "add_plugin_sources"]

MAX_ITERATIONS = 100_000_000
MAX_MILESTONES = 1000


def _default(default: Any) -> dict:
    """``default`` as a schema keyword; None (unset: odespec chooses, as the description says) is
    left out, because editors insert a default when they complete the key."""
    return {} if default is None else {"default": default}


def _int(description: str, default: Any, minimum: int = 1, maximum: int = MAX_ITERATIONS) -> dict:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description, **_default(default)}


def _num(description: str, default: Any, **bounds: Any) -> dict:
    return {"type": "number", "description": description, **bounds, **_default(default)}


def _named(key: str, names: list[str], kind: str, description: str, default: Any, properties: dict) -> dict:
    """A name, or an object ``{key: name, ...options}`` (like ``solver`` and ``gradient``)."""
    name = {"enum": names, NAMES_KEY: kind, "description": description}
    options = {
        "type": "object",
        "description": description,
        "properties": {key: {**name, **_default(default)}, **properties},
        "required": [key],
        "additionalProperties": False,
    }
    return alternatives(options, name, description=description + " A name, or an object with options.",
                        **_default(default))


def train_schema() -> dict[str, Any]:
    """The ``train`` object for the currently registered data sources."""
    names = sources.names()
    data = alternatives(
        # closed by additionalProperties alone: an unknown source is one error (see the layers')
        {"type": "object", "description": "A one-key mapping: {source: options}.",
         "properties": {s.name: s.options_schema() for s in sources.all_sources()},
         "additionalProperties": False, NAMES_KEY: "data source"},
        {"enum": names, "enumDescriptions": [s.description for s in sources.all_sources()],
         NAMES_KEY: "data source", "description": "A data source with its default options."},
        description="Training data: a source name, or a one-key mapping {source: options}.")
    loss = _named("kind", list(LOSS_OPTIONS), "loss",
                  "The loss: mse, l1 (mean absolute error), cross_entropy (class labels; accuracy is reported too) "
                  "or elbo (latent ODE: Gaussian log-likelihood plus the KL of the gaussian layer's q(z0) from "
                  "N(0, I)). Default: cross_entropy for class labels, mse otherwise.", None, {
                      "noise_std": _num("elbo: standard deviation of the observation noise (default: the data "
                                        "source's, e.g. spirals' noise_std).", None, exclusiveMinimum=0, maximum=1e6),
                  })
    optimizer = _named("method", list(OPTIMIZER_OPTIONS), "optimizer", "The optimizer.", "adam", {
        "weight_decay": _num("L2 penalty (adamw: decoupled weight decay). Default 0, adamw 0.01 (torch's).", None,
                             minimum=0, maximum=10),
        "momentum": _num("sgd, rmsprop: momentum factor.", 0.0, minimum=0, maximum=1),
        "nesterov": {"type": "boolean", "default": False, "description": "sgd: Nesterov momentum (needs momentum)."},
        "betas": {"type": "array", "minItems": 2, "maxItems": 2, "default": [0.9, 0.999],
                  "items": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "A decay rate."},
                  "description": "adam, adamw: decay rates of the gradient's running mean and square."},
        "eps": _num("adam, adamw, rmsprop: added to the denominator (default torch's, 1e-8).", None,
                    exclusiveMinimum=0, maximum=1),
        "alpha": _num("rmsprop: smoothing constant.", 0.99, minimum=0, maximum=1),
    })
    schedule = _named("kind", list(SCHEDULE_OPTIONS), "schedule",
                      "Learning-rate schedule: constant; step (times gamma every `every` units); multistep "
                      "(times gamma at each of the milestones, as torch's MultiStepLR); cosine (from lr down to "
                      "min_lr at the last iteration). The units of every and milestones are iterations, or "
                      "epochs when the run's length is given as epochs.", "constant", {
                          "every": _int("step: iterations (epochs in a run given in epochs) between rate drops (no default: "
                                        "a step schedule needs it).",
                                        None),
                          "milestones": {
                              "type": "array", "minItems": 1, "maxItems": MAX_MILESTONES,
                              "items": {"type": "integer", "minimum": 1, "maximum": MAX_ITERATIONS,
                                        "description": "A milestone: the rate is multiplied by gamma from this "
                                                       "iteration (epoch) on."},
                              "description": "multistep: strictly increasing iterations (epochs in a run given in "
                                             "epochs) at which the rate is multiplied by gamma, e.g. [60, 100, 140] "
                                             "(no default: a multistep schedule needs them).",
                          },
                          "gamma": _num("step, multistep: factor applied at each drop.", 0.1, exclusiveMinimum=0,
                                        maximum=1),
                          "min_lr": _num("cosine: the rate at the last iteration.", 0.0, minimum=0, maximum=10),
                      })
    init = {
        "type": "object",
        "description": "Re-initialise every linear layer of the ODE blocks' dynamics before training "
                       "(torchdiffeq's ode_demo: weights N(0, 0.1), biases 0).",
        "default": {"weights": "default"},
        "properties": {
            "weights": {"enum": ["default", "normal"], "default": "default",
                        "description": "default: the layers' own initialisation; normal: weights N(0, std), biases 0."},
            "std": _num("normal: standard deviation of the weights.", 0.1, exclusiveMinimum=0, maximum=100),
        },
        "additionalProperties": False,
    }
    regularise = {
        "type": "object",
        "description": "RNODE regularisers (Finlay et al. 2020), which keep the learned dynamics simple so that "
                       "adaptive solvers need fewer steps: per sample, the integrals over each ODE block's time "
                       "span of the kinetic energy |f|^2 and of the squared Frobenius norm of df/dy (a Hutchinson "
                       "estimate), averaged over the batch, times their weights, are added to the loss. They are "
                       "integrated as extra state channels, by the block's own solver and gradient method. "
                       "Default: none.",
        "properties": {
            "kinetic": _num("Weight of the kinetic energy, the integral of |f(t, y)|^2 dt.", 0.0, minimum=0,
                            maximum=1e6),
            "jacobian": _num("Weight of the integral of |df/dy|_F^2 dt (one Hutchinson probe per solve).", 0.0,
                             minimum=0, maximum=1e6),
            "noise": {"enum": ["gaussian", "rademacher"], "default": "gaussian",
                      "description": "jacobian: distribution of the Hutchinson probe (both give an unbiased "
                                     "estimate; rademacher has the lower variance)."},
        },
        "additionalProperties": False,
    }
    return with_editor_examples({
        "type": "object",
        "description": "Training settings, used by `odespec train`.",
        "properties": {
            "data": data,
            "loss": loss,
            "optimizer": optimizer,
            "lr": _num("Learning rate (the schedule's starting rate).", 1e-3, exclusiveMinimum=0, maximum=10),
            "schedule": schedule,
            "iterations": _int("Optimizer steps (give this or epochs; default: 1000 iterations).", None),
            "epochs": _int("Passes over the training data, instead of iterations (default: the run is given in "
                           "iterations).", None, maximum=1_000_000),
            "batch_size": _int("Samples per step.", 32, maximum=1_000_000),
            "eval_every": _int("Evaluate every N iterations (0: only after the last).", 0, minimum=0),
            "checkpoint_every": _int("Write a checkpoint every N iterations (0: only at the end and on Ctrl-C).",
                                     500, minimum=0),
            "log_every": _int("A progress line every N iterations when stderr is not a terminal "
                              "(default: about 50 lines per run).", None),
            "seed": _int("Seeds the data, the batch order and sampling during training (the initial weights "
                         "come from the top-level seed).", 0, minimum=0, maximum=2**32 - 1),
            "device": {"enum": ["cpu", "cuda"], "description": "Where to train (default: the top-level device)."},
            "init": init,
            "regularise": regularise,
            "max_nfe": _int("NFE budget: function evaluations allowed per training forward pass, all ODE blocks "
                            "together. Adaptive solvers get a step limit derived from it; a forward pass that "
                            "needs more stops training with an error, and metrics.jsonl records that iteration "
                            "with nfe_budget_exceeded: true (default: no budget).", None, maximum=100_000_000),
            "clip_grad_norm": _num("Clip the gradient before each optimizer step so that its global 2-norm (over "
                                   "all parameters) is at most this; metrics.jsonl records the norm before "
                                   "clipping as grad_norm (default: no clipping).", None, exclusiveMinimum=0,
                                   maximum=1e9),
        },
        "required": ["data"],
        "additionalProperties": False,
    })


def add_plugin_sources(shipped: dict[str, Any]) -> dict[str, Any]:
    """The shipped ``train`` fragment (changed in place) with the data sources registered
    through the ``odespec.data`` entry points added, for validation."""
    data = shipped["properties"]["data"]
    name, options = branch(data, "string"), branch(data, "object")
    for source in map(sources.get, sources.plugin_names()):
        # every source name may be written bare: one that needs options gets a located message
        # from the train checks rather than a schema error
        name["enum"].append(source.name)
        name["enumDescriptions"].append(source.description)
        options["properties"][source.name] = with_editor_examples(source.options_schema())
    return shipped
