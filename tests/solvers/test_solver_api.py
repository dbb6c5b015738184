"""Public API: odeint/solve signatures and semantics, option validation, lazy imports."""

from __future__ import annotations

import ast
import math
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import odespec.solvers as solvers
from odespec.errors import OdespecError
from odespec.solvers import (
    InvalidOptionError,
    Solution,
    allowed_options,
    get_tableau,
    odeint,
    solve,
)

F64 = torch.float64
ROOT = pathlib.Path(__file__).resolve().parents[2]


def decay(t, y):
    return -y


def test_output_shape_and_first_row():
    y0 = torch.randn(3, 4, dtype=F64)
    ts = torch.linspace(0, 1, 6, dtype=F64)
    ys = odeint(decay, y0, ts)
    assert ys.shape == (6, 3, 4)
    assert torch.equal(ys[0], y0)
    assert torch.allclose(ys[-1], y0 * torch.exp(torch.tensor(-1.0, dtype=F64)), atol=1e-7)


def test_times_as_list_and_single_time():
    y0 = torch.ones(2, dtype=F64)
    ys = odeint(decay, y0, [0.0, 1.0])
    assert ys.shape == (2, 2)
    one = odeint(decay, y0, torch.tensor([0.5], dtype=F64))
    assert one.shape == (1, 2) and torch.equal(one[0], y0)


def test_default_method_is_dopri5_and_tableau_accepted():
    y0 = torch.ones(1, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    assert solve(decay, y0, ts).stats.method == "dopri5"
    sol = solve(decay, y0, ts, method=get_tableau("tsit5"))
    assert isinstance(sol, Solution) and sol.stats.method == "tsit5"


@pytest.mark.parametrize(
    "ts",
    [[0.0, 1.0, 1.0], [0.0, 1.0, 0.5], [[0.0, 1.0]], [], [0.0, float("nan")]],
)
def test_bad_times_rejected(ts):
    with pytest.raises(ValueError):
        odeint(decay, torch.ones(1, dtype=F64), torch.tensor(ts, dtype=F64))


def test_bad_state_rejected():
    with pytest.raises(TypeError):
        odeint(decay, torch.ones(2, dtype=torch.int64), [0.0, 1.0])
    with pytest.raises(TypeError):
        odeint(decay, [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        odeint(lambda t, y: torch.ones(3), torch.ones(2), [0.0, 1.0])


def test_unknown_option_names_allowed_keys():
    with pytest.raises(InvalidOptionError) as info:
        odeint(decay, torch.ones(1), [0.0, 1.0], options={"max_num_step": 10})
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, OdespecError)
    assert "did you mean 'max_num_steps'" in str(err)
    assert "first_step" in str(err) and set(err.allowed) == set(allowed_options(get_tableau("dopri5")))
    with pytest.raises(InvalidOptionError, match="fixed-step method"):
        odeint(decay, torch.ones(1), [0.0, 1.0], method="rk4", options={"first_step": 0.1})
    with pytest.raises(InvalidOptionError, match="allowed: step_size, steps"):
        odeint(decay, torch.ones(1), [0.0, 1.0], method="rk4", options={"grid_points": [0.5]})


@pytest.mark.parametrize(
    "options",
    [
        {"step_size": 0.1, "first_step": 0.1},
        {"step_size": 0.1, "steps": 3},
        {"step_size": -1.0},
        {"steps": 0},
        {"steps": 2.5},
        {"first_step": 0.0},
        {"max_num_steps": 0},
        {"controller": "pid"},
        {"min_step": 2.0, "max_step": 1.0},
        {"safety": 1.5},
        {"ifactor": 0.5},
        {"dfactor": 1.0},
        {"force_output_steps": "yes"},
    ],
)
def test_bad_option_values(options):
    with pytest.raises(InvalidOptionError):
        odeint(decay, torch.ones(1), [0.0, 1.0], options=options)


@pytest.mark.parametrize("rtol, atol", [(-1.0, 1e-9), (1e-7, float("inf")), (torch.ones(3), 1e-9)])
def test_bad_tolerances(rtol, atol):
    with pytest.raises(InvalidOptionError):
        odeint(decay, torch.ones(2), [0.0, 1.0], rtol=rtol, atol=atol)


def test_adaptive_method_with_fixed_steps():
    """An adaptive method refuses fixed-step options, as in the spec language; its fixed-step
    form is asked for explicitly, and then takes exactly those steps."""
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for options in ({"steps": 4}, {"step_size": 0.25}):
        with pytest.raises(InvalidOptionError, match=r"fixed_step\(\)"):
            solve(decay, torch.ones(1, dtype=F64), t, method="dopri5", options=options)
    fixed = get_tableau("dopri5").fixed_step()
    assert fixed.name == "dopri5_fixed" and not fixed.adaptive and fixed.fsal
    sol = solve(decay, torch.ones(1, dtype=F64), t, method=fixed, options={"steps": 4})
    assert sol.stats.n_steps == 4 and sol.stats.n_rejected == 0
    assert abs(sol.ys[-1].item() - math.exp(-1.0)) < 1e-6


@pytest.mark.parametrize("name", ["explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver"])
def test_torchdiffeq_methods_that_are_not_runge_kutta_have_no_tableau(name):
    """odeint runs them (tests/solvers/test_solver_multistep.py); they are no tableau, and say so."""
    with pytest.raises(KeyError, match="no Runge-Kutta method, so it has no tableau"):
        get_tableau(name)


def test_unknown_method():
    with pytest.raises(KeyError, match="did you mean 'dopri5'"):
        odeint(decay, torch.ones(1), [0.0, 1.0], method="dopri4")
    with pytest.raises(TypeError):
        odeint(decay, torch.ones(1), [0.0, 1.0], method=5)


def test_lazy_package_attributes():
    assert solvers.odeint is odeint and callable(solvers.odeint)
    # importing the module that defines it must not shadow the function
    import odespec.solvers._odeint  # noqa: F401

    assert callable(solvers.odeint) and solvers.odeint is odeint
    assert "solve" in dir(solvers)
    with pytest.raises(AttributeError):
        solvers.does_not_exist  # noqa: B018


TORCH_FREE = ["tableau.py", "tableaus.py", "options.py", "dense.py", "__init__.py", "config.py", "grid.py",
              "controller.py"]


@pytest.mark.parametrize("filename", TORCH_FREE)
def test_data_layer_has_no_torch_or_numpy_imports(filename):
    tree = ast.parse((ROOT / "odespec" / "solvers" / filename).read_text())
    for node in tree.body:  # module-level imports only: lazy imports inside functions are fine
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in ("torch", "numpy"), (filename, name)
            if name.startswith("odespec.solvers."):
                assert name.rsplit(".", 1)[1] + ".py" in TORCH_FREE, (filename, name)


def test_importing_tableaus_does_not_import_torch():
    code = textwrap.dedent(
        """
        import sys
        import odespec
        before = set(sys.modules)
        import odespec.solvers
        import odespec.solvers.tableaus as t
        import odespec.solvers.options
        from odespec.solvers import get_tableau, method_names, is_adaptive
        assert "dopri5" in method_names() and is_adaptive("dopri5")
        new = set(sys.modules) - before
        assert "torch" not in sys.modules, "torch imported"
        assert not any(m.split(".")[0] in ("torch", "numpy") for m in new), sorted(new)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_tuple_state():
    y0 = (torch.tensor([1.0, 0.0], dtype=F64), torch.full((2, 1), 2.0, dtype=F64))
    ts = torch.linspace(0, 1, 3, dtype=F64)

    def f(t, state):
        pos, other = state
        return torch.stack([pos[1], -pos[0]]), -other

    ys = odeint(f, y0, ts, rtol=(1e-9, 1e-9), atol=1e-11)
    assert isinstance(ys, tuple) and ys[0].shape == (3, 2) and ys[1].shape == (3, 2, 1)
    assert torch.allclose(ys[0][:, 0], torch.cos(ts), atol=1e-8)
    assert torch.allclose(ys[1][:, 0, 0], 2 * torch.exp(-ts), atol=1e-8)
    sol = solve(f, y0, ts, method="rk4", options={"steps": 20})
    assert isinstance(sol.y_last, tuple) and torch.equal(sol.y_last[1], sol.ys[1][-1])
    with pytest.raises(TypeError):
        odeint(f, (torch.ones(2), torch.ones(1, dtype=F64)), ts)
