"""Whether an exported graph's deployment error is large enough to warn about, with its likely
cause and fix (``odespec build`` prints the warnings last; ``--strict`` makes them errors).

"Large" is judged against what the model is for: a classifier by its predictions (the argmax
agreement with the training-solver model), any other model by the error relative to the
output's largest magnitude. A classifier's logits can move by a tenth while not one prediction
changes, so their absolute error alone would warn about nothing a user can act on; but a
fixed-step trained block exported at another step count warns on the relative error too, since
that is a different function whatever the predictions on these inputs do.
"""

from __future__ import annotations

from typing import Optional, TypedDict

from odespec.export.metrics import DeploymentError
from odespec.spec.model import OdeBlockSpec, Spec

__all__ = ["DeploymentWarning", "WARN_SCALED_ERROR", "WARN_AGREEMENT", "deployment_warnings"]

#: a deployment error above this fraction of the output's largest magnitude is large
WARN_SCALED_ERROR = 1e-2
#: a classifier whose predictions agree with the training-solver model's on less than this
#: fraction of the inputs has a large deployment error
WARN_AGREEMENT = 0.99


class DeploymentWarning(TypedDict):
    """One entry of the build report's ``warnings``: what is wrong and what to do."""

    warning: str
    fix: str


def deployment_warnings(spec: Spec, method: str, steps: int, deployment: Optional[DeploymentError], *,
                        calibrated: bool) -> list[DeploymentWarning]:
    """The warnings about ``deployment`` (the graph exported as ``method`` x ``steps``): none
    when the error is not large or was not measured."""
    if not deployment or deployment.get("skipped"):
        return []
    scaled, agree = deployment["max_scaled_error"], deployment.get("agreement")
    retrained = _fixed_step_mismatches(spec, method, steps)
    large_error = scaled > WARN_SCALED_ERROR and (agree is None or bool(retrained))
    if not (large_error or (agree is not None and agree < WARN_AGREEMENT)):
        return []
    figures = (f"the exported graph ({method} x {steps} steps) differs from the model solved with its training "
               f"solver by {scaled:.2g} of the output's largest magnitude (max abs error "
               f"{deployment['max_abs_error']:.2g})")
    if agree is not None:
        figures += f"; {agree:.2%} of its predictions agree ({deployment.get('disagreements', 0)} differ)"
    figures += f" on {deployment['inputs']}"
    cause, fix = _cause(spec, method, steps, retrained, calibrated)
    if "seeded random" in deployment["inputs"]:
        fix += "; measure on your own data with --calibration-data FILE"
    return [{"warning": f"{figures}: {cause}", "fix": fix}]


def _fixed_step_mismatches(spec: Spec, method: str, steps: int) -> list[tuple[int, str, int]]:
    """``(index, method, steps)`` of each ODE block trained fixed-step at another method or step
    count than the graph's (a ResNet block exports its own steps)."""
    out = []
    for i, b in enumerate(spec.model):
        if isinstance(b, OdeBlockSpec) and b.family != "resnet" and not b.solver.adaptive \
                and b.solver.steps is not None and (b.solver.method, b.solver.steps) != (method, steps):
            out.append((i, b.solver.method, b.solver.steps))
    return out


def _cause(spec: Spec, method: str, steps: int, retrained: list[tuple[int, str, int]],
           calibrated: bool) -> tuple[str, str]:
    """The likely cause, and the fix."""
    if retrained:
        i, m, n = retrained[0]
        return (f"model[{i}] was trained as {m} x {n} steps, and a discrete model trained at one step count is a "
                f"different function at another (Ott et al. 2021, \"ResNet after all?\")",
                f"export it as it was trained: --method {m} --steps {n}, or export.onnx: {{method: {m}, steps: {n}}} "
                "(a spec that writes neither exports a fixed-step trained model at its training method and steps)")
    if calibrated:
        criterion = ("match: {agreement: 0.999}" if spec.classifier else "a smaller match_tol")
        return ("calibration accepted it: its tolerance is loose for this model",
                f"calibrate with {criterion}, or give --steps N with more steps")
    return (f"{steps} {method} steps per output interval do not resolve the dynamics the training solver solved",
            "export with more steps (--steps N), or calibrate against the training solver (--steps auto)")
