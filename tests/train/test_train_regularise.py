"""RNODE regularisers: the integrals against a direct computation, the solver's steps left
unchanged by the extra channels, gradients agreeing across gradient methods, the Hutchinson
estimator's unbiasedness, the spec rules, logging every iteration and exact resumption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.integrate import simpson

from odespec.compile.model import compile_spec
from odespec.errors import SpecError
from odespec.solvers import odeint
from odespec.spec import parse_spec
from odespec.spec.model import RegulariseSpec
from odespec.train import TrainingInterrupted
from odespec.train.loop import resume, train
from odespec.train.regularise import attach, hutchinson_probe, regularisation_loss

from train_helpers import circles_spec, demo_spec, write

TINY = """odespec: 1
name: tiny
dtype: float64
input: {shape: [2]}
model:
  - ode:
      t: [0, 0.8]
      dynamics: {layers: [{linear: 8}, tanh, {linear: 2}]}
      solver: {method: dopri5, rtol: 1e-10, atol: 1e-12}
      gradient: GRADIENT
"""


def tiny_model(gradient: str = "backprop") -> Any:
    return compile_spec(parse_spec(TINY.replace("GRADIENT", gradient)))


def test_integrals_match_a_direct_computation():
    """K = int |f|^2 dt and J = int |e^T df/dy|^2 dt along the solution, per sample, against
    Simpson's rule on a dense solution with the same probe e. (The integrals are outside
    error control, so they are as accurate as the state's steps make them: 1e-6, not 1e-10.)"""
    model = tiny_model()
    reg = RegulariseSpec(kinetic=1.0, jacobian=1.0, noise="rademacher")
    hooks = attach(model, model.ode_blocks, reg, None)
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    model(x)
    got = hooks[0].integrals
    torch.manual_seed(5)
    probe = hutchinson_probe(x, "rademacher")  # the same draw the solve made
    f = model[0].dynamics
    ts = torch.linspace(0, 0.8, 401, dtype=torch.float64)
    with torch.no_grad():
        ys = odeint(f, x, ts, rtol=1e-11, atol=1e-13)
    kin, jac = [], []
    for t, y in zip(ts, ys):
        y = y.clone().requires_grad_(True)
        fy = f(t, y)
        (ej,) = torch.autograd.grad(fy, y, probe)
        kin.append((fy.detach() ** 2).sum(1))
        jac.append((ej**2).sum(1))
    want_k = simpson(torch.stack(kin).numpy(), x=ts.numpy(), axis=0)
    want_j = simpson(torch.stack(jac).numpy(), x=ts.numpy(), axis=0)
    np.testing.assert_allclose(got["kinetic"].detach().numpy(), want_k, rtol=1e-6)
    np.testing.assert_allclose(got["jacobian"].detach().numpy(), want_j, rtol=1e-6)
    total, metrics = regularisation_loss(hooks, reg)
    assert metrics == pytest.approx({"reg_kinetic": want_k.mean(), "reg_jacobian": want_j.mean()}, rel=1e-6)
    assert total.item() == pytest.approx(want_k.mean() + want_j.mean(), rel=1e-6)


@pytest.mark.parametrize("gradient", ["backprop", "adjoint"])
def test_the_extra_channels_do_not_change_the_solvers_steps(gradient: str):
    """The integrals are left out of error control and the state's tolerances rescaled, so the
    solve takes exactly the steps it takes without them."""
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = tiny_model(gradient)
    y_plain = plain(x)
    regd = tiny_model(gradient)
    attach(regd, regd.ode_blocks, RegulariseSpec(kinetic=0.1, jacobian=0.1), None)
    y_reg = regd(x)
    assert regd.nfe_forward == plain.nfe_forward
    torch.testing.assert_close(y_reg, y_plain, rtol=1e-12, atol=1e-12)


def test_regularised_gradients_agree_across_gradient_methods():
    """The regularisers go through the block's gradient method; the adjoint (second derivatives
    of the Jacobian term in its backward solve) agrees with backprop."""
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    reg = RegulariseSpec(kinetic=0.5, jacobian=0.5)
    grads = {}
    for gradient in ("backprop", "adjoint", "checkpoint"):
        model = tiny_model(gradient)
        hooks = attach(model, model.ode_blocks, reg, None)
        torch.manual_seed(0)
        out = model(x)
        total, _ = regularisation_loss(hooks, reg)
        (out.square().mean() + total).backward()
        grads[gradient] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(grads["checkpoint"], grads["backprop"], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads["adjoint"], grads["backprop"], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_estimate_is_unbiased(noise: str):
    """E|e^T A|^2 = |A|_F^2: the mean over many probes is within a few standard errors."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    torch.manual_seed(7)
    probes = hutchinson_probe(torch.empty(20000, 3, dtype=torch.float64), noise)
    estimates = ((probes @ a.T) ** 2).sum(1)  # e^T A^T per row: |e^T J|^2 with J = A^T
    exact = (a**2).sum().item()
    stderr = estimates.std().item() / len(estimates) ** 0.5
    assert abs(estimates.mean().item() - exact) < 4 * stderr
    assert set(probes.unique().tolist()) == {-1.0, 1.0} if noise == "rademacher" else probes.abs().max() > 2


def errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.yaml")
    return [i.format() for i in e.value.issues]


def test_regularise_and_max_nfe_in_the_spec():
    spec = parse_spec(demo_spec(extra="  regularise: {kinetic: 0.1, jacobian: 0.01, noise: rademacher}\n"
                                      "  max_nfe: 500\n"))
    assert spec.train.regularise == RegulariseSpec(kinetic=0.1, jacobian=0.01, noise="rademacher")
    assert spec.train.max_nfe == 500
    assert parse_spec(demo_spec()).train.regularise is None and parse_spec(demo_spec()).train.max_nfe is None
    [e] = errors(demo_spec(extra="  regularise: {kinetic: 0}\n"))
    assert "train.regularise: regularise needs a weight above 0" in e
    [e] = errors(demo_spec(extra="  regularise: {kinetic: 1, noise: gaussian}\n"))
    assert "train.regularise.noise: noise is the Hutchinson probe of the jacobian term" in e
    resnet = demo_spec(extra="  regularise: {kinetic: 1}\n  max_nfe: 10\n").replace(
        "      solver: {method: rk4, steps: 2}", "      family: resnet\n      solver: {method: euler, steps: 2}")
    found = errors(resnet)
    assert any("regularise applies to ODE blocks solved by a solver" in e for e in found)
    assert any("max_nfe limits the solves of ODE blocks; this model has none" in e for e in found)
    [e] = errors(demo_spec(extra="  max_nfe: 0\n"))
    assert "train.max_nfe" in e


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


REG = "  regularise: {kinetic: 0.05, jacobian: 0.05}\n"


def test_training_logs_loss_regularisers_and_nfe_every_iteration(tmp_path: Path):
    run = tmp_path / "run"
    train(write(tmp_path, circles_spec(iterations=6) + REG), run, progress=False)
    recs = records(run)
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5, 6]
    for r in recs:
        assert r["nfe_forward"] > 0 and r["nfe_backward"] == 0  # bosh3, backprop
        assert r["reg_kinetic"] > 0 and r["reg_jacobian"] > 0
        assert r["objective"] == pytest.approx(r["loss"] + 0.05 * (r["reg_kinetic"] + r["reg_jacobian"]))
    # evaluation is not regularised: its loss is the data loss alone
    assert "eval_objective" not in recs[2] and "eval_loss" in recs[2]


def test_adjoint_training_logs_backward_nfe(tmp_path: Path):
    text = circles_spec(iterations=3) + REG
    text = text.replace("      solver: {method: bosh3, rtol: 1e-3, atol: 1e-4}",
                        "      solver: {method: bosh3, rtol: 1e-3, atol: 1e-4}\n      gradient: adjoint")
    train(write(tmp_path, text), tmp_path / "run", progress=False)
    assert all(r["nfe_forward"] > 0 and r["nfe_backward"] > 0 for r in records(tmp_path / "run"))


def test_regularised_run_resumes_exactly(tmp_path: Path):
    """The Hutchinson probes come from the checkpointed RNG: a resumed run draws the same."""
    text = demo_spec(iterations=8, extra=REG.replace("jacobian: 0.05", "jacobian: 0.05, noise: rademacher"))
    ref = tmp_path / "ref"
    train(write(tmp_path, text), ref, progress=False)

    def stop(record: dict) -> None:
        if record["iteration"] == 6:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(write(tmp_path, text, "again.yaml"), run, callbacks=[stop], progress=False)
    resume(run, progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(records(run)) == strip(records(ref))
