"""``stiff_chain``: a stiff reaction network with an unknown reaction, the built-in data of
implicit methods (``specs/stiff_chain.yaml``).

Three species in a cycle ``A -> B -> C -> A`` with linear rates ``k1``, ``k_fast`` and ``k3``,
and one reaction the model is to learn, ``A + C -> 2 C`` at rate ``k4``::

    dy/dt = K y + k4 * y_A * y_C * (-1, 0, 1),      K = [[-k1, 0, k3], [k1, -k_fast, 0], [0, k_fast, -k3]]

``k_fast`` (default 1e6) makes the system stiff: ``B`` relaxes in ``1 / k_fast`` while the rest
moves on times of order one, so an explicit solver's step is held below about ``3 / k_fast`` by
stability, not accuracy (like Robertson's problem). A spec writes ``K`` as a ``known_linear``
layer and learns the rest. The trajectories are solved in float64 with radauIIA5 at many steps
per output interval (an L-stable method: the fast transient of each random initial state is damped,
not carried along as an oscillation).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from odespec.spec.model import ModelItem, Shape
from odespec.train.data import DataShapes, DataSource, LoadedData, Need, Problem, register
from odespec.train.generators import _check_times, _int, _num

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["stiff_chain_matrix", "stiff_chain_trajectories", "K1", "K3", "K4"]

K1, K3, K4 = 1.0, 0.5, 2.0
#: steps per output interval of the reference solve
TRUTH_STEPS = 16


def stiff_chain_matrix(k_fast: float) -> list[list[float]]:
    """The linear rates ``K`` (what a spec's ``known_linear`` writes)."""
    return [[-K1, 0.0, K3], [K1, -k_fast, 0.0], [0.0, k_fast, -K3]]


@lru_cache(maxsize=4)
def _solve(count: int, points: int, stop: float, k_fast: float, seed: int) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np
    import torch

    from odespec.solvers import odeint

    rng = np.random.default_rng(seed)
    y0 = rng.uniform(0.1, 1.0, size=(count, 3))
    k = torch.tensor(stiff_chain_matrix(k_fast), dtype=torch.float64)
    react = torch.tensor([-K4, 0.0, K4], dtype=torch.float64)

    def f(_t: Any, y: torch.Tensor) -> torch.Tensor:
        return y @ k.t() + (y[:, :1] * y[:, 2:]) * react

    t = torch.linspace(0.0, stop, points, dtype=torch.float64)
    with torch.no_grad():
        ys = odeint(f, torch.tensor(y0), t, method="radauIIA5", options={"steps": TRUTH_STEPS})
    out = ys.permute(1, 0, 2).numpy().copy()
    for a in (y0, out):
        a.setflags(write=False)  # cached: nobody may change them
    return y0, out


def stiff_chain_trajectories(count: int, *, points: int = 9, stop: float = 4.0, k_fast: float = 1e6,
                             seed: int = 0) -> tuple["np.ndarray", "np.ndarray"]:
    """``count`` initial states (uniform in [0.1, 1] per species), shape (count, 3), and their
    trajectories at ``points`` times on [0, stop], shape (count, points, 3), float64."""
    y0, ys = _solve(count, points, float(stop), float(k_fast), seed)
    return y0.copy(), ys.copy()


@register
class StiffChain(DataSource):
    name = "stiff_chain"
    description = ("A stiff reaction cycle A -> B -> C -> A (rates 1, k_fast, 0.5) with an unknown reaction "
                   "A + C -> 2C (rate 2): input a random initial state, target its trajectory at `points` times "
                   "on [0, stop]. For implicit methods: write the linear rates as a known_linear layer.")
    properties = {
        "count": _int("Training trajectories (as many more are drawn for evaluation).", 256),
        "points": _int("Times on [0, stop] of each trajectory (the ODE block's t).", 9, minimum=2, maximum=1000),
        "stop": _num("End of the time span.", 4.0, exclusiveMinimum=0, maximum=100),
        "k_fast": _num("The fast rate B -> C: the stiffness.", 1e6, exclusiveMinimum=0, maximum=1e9),
    }

    def times(self, options: Mapping[str, Any]) -> list[float]:
        n = options["points"]
        return [options["stop"] * i / (n - 1) for i in range(n)]

    def shapes(self, options: Mapping[str, Any]) -> DataShapes:
        return DataShapes(input=(3,), target=(options["points"], 3))

    def check(self, options: Mapping[str, Any], input_shape: Shape, items: Sequence[ModelItem]) -> list[Problem]:
        return _check_times("stiff_chain", items, self.times(options), "trajectories from random initial states")

    def load(self, options: Mapping[str, Any], *, seed: int, base_dir: Path, need: Need) -> LoadedData:
        count = options["count"]
        x, y = stiff_chain_trajectories(2 * count, points=options["points"], stop=options["stop"],
                                        k_fast=options["k_fast"], seed=seed)
        return LoadedData(x[:count], y[:count], x[count:], y[count:])
