"""The solvers on a CUDA device: the same steps and numbers as on the CPU, outputs on the
device, failures raised, and no host-device synchronisation per stage (issue #3, item 3).

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/solvers/test_solver_cuda.py tests/train/test_train_cuda.py``.
"""

from __future__ import annotations

import warnings
from typing import Callable

import pytest
import torch
from torch import nn

from odespec.errors import SolverError
from odespec.solvers import get_tableau, is_adaptive, method_names, odeint, solve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def mlp(dim: int = 3, width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, width), nn.Tanh(), nn.Linear(width, dim)).double()
    return net


class Field(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) * torch.cos(t)


def both(dtype: torch.dtype = torch.float64) -> tuple[Field, Field, torch.Tensor, torch.Tensor]:
    """The same field and initial state on the CPU and on the GPU."""
    cpu = Field(mlp()).to(dtype)
    gpu = Field(mlp()).to(dtype).to(CUDA)
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return cpu, gpu, y0, y0.to(CUDA)


FIXED = [m for m in method_names() if not is_adaptive(m)]
ADAPTIVE = [m for m in method_names() if is_adaptive(m)]


@pytest.mark.parametrize("method", method_names())
def test_fixed_steps_on_cuda_equal_the_cpu(method: str):
    cpu, gpu, y0, y0g = both()
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
    tableau = get_tableau(method)
    fixed = tableau.fixed_step() if tableau.adaptive else tableau  # adaptive methods: their fixed form
    want = odeint(cpu, y0, t, method=fixed, options={"step_size": 0.05})
    got = odeint(gpu, y0g, t.to(CUDA), method=fixed, options={"step_size": 0.05})
    assert got.device.type == "cuda" and got.dtype == torch.float64 and got.shape == (5, 5, 3)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("backward_time", [False, True])
def test_adaptive_on_cuda_takes_the_cpu_steps(method: str, backward_time: bool):
    cpu, gpu, y0, y0g = both()
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    if backward_time:
        t = t.flip(0)
    want = solve(cpu, y0, t, method=method, rtol=1e-8, atol=1e-10)
    got = solve(gpu, y0g, t.to(CUDA), method=method, rtol=1e-8, atol=1e-10)
    assert (got.stats.nfe, got.stats.n_accepted, got.stats.n_rejected) == (
        want.stats.nfe, want.stats.n_accepted, want.stats.n_rejected)
    assert got.ys.device.type == "cuda" and got.stats.status == "success"
    torch.testing.assert_close(got.ys.cpu(), want.ys, rtol=1e-9, atol=1e-11)


def test_float32_on_cuda():
    cpu, gpu, y0, y0g = both(torch.float32)
    t = torch.linspace(0.0, 2.0, 3)
    got = odeint(gpu, y0g, t.to(CUDA), rtol=1e-5, atol=1e-6)
    want = odeint(cpu, y0, t, rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32 and got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "checkpoint"])
@pytest.mark.parametrize("steps", [{"method": "rk4", "options": {"steps": 20}},
                                   {"method": "dopri5", "rtol": 1e-8, "atol": 1e-10}])
def test_gradients_on_cuda_equal_the_cpu(gradient: str, steps: dict):
    cpu, gpu, y0, y0g = both()
    t = torch.tensor([0.0, 0.5, 1.5], dtype=torch.float64)
    grads = []
    for f, y, tt in ((cpu, y0, t), (gpu, y0g, t.to(CUDA))):
        y = y.clone().requires_grad_(True)
        params = [y, *f.parameters()]
        sol = solve(f, y, tt, gradient=gradient, **steps)
        grads.append([g.cpu() for g in torch.autograd.grad(sol.ys.square().sum(), params)])
        assert sol.ys.device == y.device
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)


def test_gradcheck_of_the_adjoint_on_cuda():
    _, gpu, _, y0g = both()
    t = torch.tensor([0.0, 0.7], dtype=torch.float64, device=CUDA)

    def fn(y: torch.Tensor) -> torch.Tensor:
        return solve(gpu, y, t, method="rk4", options={"steps": 8}, gradient="adjoint").ys[-1]

    assert torch.autograd.gradcheck(fn, (y0g[:2].clone().requires_grad_(True),))


def test_non_finite_dynamics_raise_on_cuda():
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)

    y0 = torch.ones(4, device=CUDA)
    with pytest.raises(SolverError, match="non-finite") as e:
        odeint(f, y0, torch.tensor([0.0, 1.0], device=CUDA))
    assert 0.4 < e.value.t <= 1.0


def _syncs(fn: Callable[[], object]) -> int:
    """How many synchronising CUDA calls ``fn`` makes, as counted by torch's sync debug mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def test_the_sync_counter_counts():
    x = torch.ones(3, device=CUDA)
    x.sum().item()  # first use: one-time work outside the count
    # the first counted call reported one more than it made (seen on an H200, torch 2.11):
    # one-time work of the debug mode itself, so the count starts from the second call
    _syncs(lambda: x.sum().item())
    assert _syncs(lambda: [x.sum().item() for _ in range(3)]) == 3


@torch.no_grad()
def test_fixed_steps_never_wait_for_the_device():
    """The host never waits on the device inside a fixed-step solve: the count of
    synchronising calls does not grow with the number of steps (the solve's set-up reads the
    output times, and the end checks that the outputs are finite)."""
    _, gpu, _, y0g = both(torch.float32)
    y0g = y0g.float()
    t = torch.tensor([0.0, 1.0], device=CUDA)
    for method in ("rk4", get_tableau("dopri5").fixed_step()):
        odeint(gpu, y0g, t, method=method, options={"steps": 3})  # caches the step's coefficients
        few = _syncs(lambda: odeint(gpu, y0g, t, method=method, options={"steps": 5}))
        many = _syncs(lambda: odeint(gpu, y0g, t, method=method, options={"steps": 50}))
        assert many == few <= 2, (method, few, many)


@pytest.mark.parametrize("grad", [False, True])
def test_adaptive_steps_wait_once_per_step(grad: bool):
    """An adaptive step must decide accept/reject on the host: one wait per step, not per
    stage (dopri5 has 6 evaluations a step) and not per dense output."""
    _, gpu, _, y0g = both(torch.float32)
    y0g = y0g.float()
    extra = {}
    for n_out in (2, 2, 11):  # the first solve fills the caches of step and interpolant weights
        t = torch.linspace(0.0, 5.0, n_out, device=CUDA)
        stats = {}

        def run() -> None:
            with torch.set_grad_enabled(grad):
                stats["s"] = solve(gpu, y0g, t, rtol=1e-6, atol=1e-8).stats

        n = _syncs(run)
        assert stats["s"].n_steps >= 10
        extra[n_out] = n - stats["s"].n_steps
    # the rest is the set-up: reading t, the initial-step heuristic
    assert extra[11] == extra[2] <= 5, extra


def test_tableaus_are_device_neutral_data():
    """The tableau is plain data; the step builds its device tensors from it."""
    assert isinstance(get_tableau("dopri5").b, tuple)
