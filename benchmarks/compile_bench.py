"""Compiled models vs hand-written PyTorch modules solved by torchdiffeq (issue #4).

* Forward time of the compiled MNIST ODE-Net (batch 128, the same fixed number of function
  evaluations on both sides) and of ode_demo (dopri5 at the spec's tolerances), against the
  equivalent hand-written module solved by torchdiffeq, same process, interleaved repeats.
* Time to build each shipped spec (parse, validate, construct) beyond the torch import.

Run from the repository root:  .venv/bin/python benchmarks/compile_bench.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import odespec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_shipped_specs import ODEfunc, _copy_conv_with_time_channel  # noqa: E402  (the reference modules)


def median_times(fns: dict, repeat: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():  # interleaved, so drift hits every contender alike
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def mnist_pair(steps: int):
    import torchdiffeq

    from odespec.export.unroll import fixed_step_model

    # torchdiffeq's "rk4" is the 3/8 rule: compare like with like
    model = fixed_step_model(odespec.build(ROOT / "specs" / "mnist_rknet.yaml"), "rk4_38", steps).eval()
    block = model[7]
    ours = block.dynamics.layers
    ref = ODEfunc(64)
    ref.norm1.load_state_dict(ours[0].state_dict())
    _copy_conv_with_time_channel(ours[2].layer, ref.conv1._layer)
    ref.norm2.load_state_dict(ours[3].state_dict())
    _copy_conv_with_time_channel(ours[5].layer, ref.conv2._layer)
    ref.norm3.load_state_dict(ours[6].state_dict())
    stem, head = nn.Sequential(*list(model)[:7]), nn.Sequential(*list(model)[8:])
    t = torch.tensor([0.0, 1.0])

    def hand(x):
        z = torchdiffeq.odeint(ref, stem(x), t, method="rk4", options={"step_size": 1.0 / steps})[-1]
        return head(z)

    return model, hand


class DemoFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.net(y**3)


def main() -> None:
    import torchdiffeq

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []

    # MNIST ODE-Net as an RK-Net: rk4 x 4 on both sides (16 f-evaluations)
    model, hand = mnist_pair(4)
    x = torch.randn(128, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hand(x), rtol=1e-4, atol=1e-4)  # same function
        med = median_times({"odespec": lambda: model(x), "torchdiffeq": lambda: hand(x)}, args.repeat)
    rows.append(("MNIST ODE-Net, batch 128, rk4 (3/8) x 4 (16 NFE)", med["odespec"], med["torchdiffeq"], "16 / 16"))

    # ode_demo: dopri5 at rtol 1e-7, atol 1e-9, batch 20 windows as in the example
    demo = odespec.build(ROOT / "specs" / "ode_demo.yaml").eval()
    ref = DemoFunc()
    dyn = demo[0].dynamics.layers
    ref.net[0].load_state_dict(dyn[1].state_dict())
    ref.net[2].load_state_dict(dyn[3].state_dict())
    y0 = torch.randn(20, 2)
    t = demo[0].t
    with torch.no_grad():
        demo(y0)
        nfe_ours = demo.nfe_forward
        ref.nfe = 0
        torchdiffeq.odeint(ref, y0, t, rtol=1e-7, atol=1e-9)
        nfe_ref = ref.nfe
        med = median_times({
            "odespec": lambda: demo(y0),
            "torchdiffeq": lambda: torchdiffeq.odeint(ref, y0, t, rtol=1e-7, atol=1e-9),
        }, args.repeat)
    rows.append(("ode_demo, batch 20, dopri5 rtol 1e-7 atol 1e-9", med["odespec"], med["torchdiffeq"], f"{nfe_ours} / {nfe_ref}"))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.repeat} interleaved runs\n")
    print(f"{'forward':50s} {'odespec ms':>10s} {'torchdiffeq ms':>14s} {'ratio':>6s} {'NFE ours/theirs':>16s}")
    for name, a, b, nfe in rows:
        print(f"{name:50s} {a * 1e3:10.2f} {b * 1e3:14.2f} {a / b:6.2f} {nfe:>16s}")

    print(f"\n{'build (parse + validate + construct), beyond import torch':62s} {'seconds':>8s}")
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        code = ("import time, torch, odespec; s = time.perf_counter(); odespec.build(%r); "
                "print(time.perf_counter() - s)") % str(spec)
        runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
                for _ in range(3)]
        print(f"{spec.name:62s} {statistics.median(runs):8.3f}")


if __name__ == "__main__":
    main()
