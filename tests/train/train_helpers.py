"""Tiny specs for the training tests: fixed-step solvers and a handful of samples, so that
a whole run takes well under a second."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def write(tmp: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp / name
    p.write_text(text, encoding="utf-8")
    return p


def demo_spec(iterations: int = 12, *, extra: str = "", solver: str = "{method: rk4, steps: 2}") -> str:
    """ode_demo with 60 points on [0, 2.95] and windows of 4 (t: 3 * 2.95 / 59 = 0.15)."""
    return f"""\
odespec: 1
name: tiny-demo
input: {{shape: [2]}}
model:
  - ode:
      t: {{start: 0, stop: {3 * 2.95 / 59!r}, num: 4}}
      output: trajectory
      dynamics:
        layers: [{{power: 3}}, {{linear: 16}}, tanh, {{linear: 2}}]
      solver: {solver}
train:
  data: {{ode_demo: {{points: 60, stop: 2.95, batch_time: 4}}}}
  loss: l1
  optimizer: rmsprop
  lr: 0.01
  iterations: {iterations}
  batch_size: 8
  eval_every: 4
  checkpoint_every: 5
  init: {{weights: normal, std: 0.1}}
{extra}"""


def series_spec(iterations: int = 4) -> str:
    """A small latent ODE on irregular oscillators: ode_rnn -> q(z0) -> ODE at each series' query
    times -> decoder, with missing values and padding."""
    return f"""\
odespec: 1
name: tiny-series
input: {{shape: [8, 2], times: true, mask: true, query: 8}}
model:
  - ode_rnn: {{hidden: 6}}
  - linear: 4
  - gaussian
  - ode:
      t: query
      output: trajectory
      dynamics:
        layers: [{{linear: 8}}, tanh, {{linear: 2}}]
      solver: {{method: rk4, steps: 1}}
  - linear: 2
train:
  data: {{oscillators: {{count: 24, eval_count: 8, points: 8, min_points: 5, missing: 0.3}}}}
  loss: elbo
  lr: 0.01
  iterations: {iterations}
  batch_size: 8
  eval_every: 2
"""


def latent_spec(iterations: int = 12) -> str:
    """A small latent ODE on spirals: rnn -> q(z0) -> ODE -> decoder, elbo, Adam, cosine."""
    stop = 9 * (6 * math.pi) / 99
    return f"""\
odespec: 1
name: tiny-latent
input: {{shape: [10, 2]}}
model:
  - rnn: {{hidden: 6, reverse: true}}
  - linear: 4
  - gaussian
  - ode:
      t: {{start: 0, stop: {stop!r}, num: 10}}
      output: trajectory
      dynamics:
        layers: [{{linear: 8}}, elu, {{linear: 2}}]
      solver: {{method: rk4, steps: 1}}
  - linear: 2
train:
  data: {{spirals: {{count: 24, eval_count: 8, points: 100, observed: 10}}}}
  loss: elbo
  optimizer: adam
  schedule: cosine
  lr: 0.01
  iterations: {iterations}
  batch_size: 8
  eval_every: 4
  checkpoint_every: 5
"""


def circles_spec(iterations: int = 12) -> str:
    """An augmented classifier on circles: cross_entropy, SGD with momentum, a step schedule,
    an adaptive solver."""
    return f"""\
odespec: 1
name: tiny-circles
input: {{shape: [2]}}
model:
  - ode:
      augment: 1
      dynamics:
        layers: [{{linear: 8}}, tanh, {{linear: 3}}]
      solver: {{method: bosh3, rtol: 1e-3, atol: 1e-4}}
  - linear: 2
train:
  data: {{circles: {{count: 40, eval_count: 20}}}}
  optimizer: {{method: sgd, momentum: 0.9, nesterov: true}}
  schedule: {{kind: step, every: 4, gamma: 0.5}}
  lr: 0.05
  iterations: {iterations}
  batch_size: 16
  eval_every: 3
  checkpoint_every: 5
"""


def stop_at(iteration: int) -> Callable[[dict], None]:
    """A training callback that presses Ctrl-C (raises KeyboardInterrupt) after ``iteration``."""

    def callback(record: dict) -> None:
        if record["iteration"] == iteration:
            raise KeyboardInterrupt

    return callback
