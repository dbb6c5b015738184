"""Training speed and memory (issue #6): ``odespec train`` against torchdiffeq's example training
steps, written out here as in torchdiffeq's examples/ode_demo.py and examples/latent_ode.py.

Configurations: ode_demo (specs/ode_demo_train.yaml: batch 20 windows of 10 times, dopri5 at rtol
1e-7, atol 1e-9, RMSprop) with backprop and with the adjoint (torchdiffeq: ``odeint_adjoint``),
and the spiral latent ODE (specs/spiral_latent_ode.yaml: 1000 spirals per batch, Adam). Both
sides start from the same weights (odespec's initial model, copied into torchdiffeq's modules),
see the same batches (odespec's batch stream) and use one thread.

Every measurement runs in a fresh subprocess (one configuration, one side), so the peak RSS
(``ru_maxrss``) is that configuration's alone; rounds alternate odespec and torchdiffeq, and the
table shows medians over the rounds. odespec's time per iteration is that of its real training
loop (``odespec.train.train``: batches, forward, loss, backward, optimizer step, metrics),
from the run's own clock, with glibc's malloc set up as ``odespec train`` sets it
(``odespec.train.allocator``); warm-up iterations are left out on both sides.

A last section trains specs/circles_anode.yaml with and without RNODE regularisation and shows
how the forward NFE grows over training (see also benchmarks/train_nfe.py).

Run from the repository root:  .venv/bin/python benchmarks/train_speed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, first_ode, model_and_batches, records, spec_data, write_variant  # noqa: E402

#: configuration -> (spec file, gradient, iterations measured, warm-up iterations)
CONFIGS = {
    "ode_demo backprop": ("ode_demo_train.yaml", "backprop", 120, 20),
    "ode_demo adjoint": ("ode_demo_train.yaml", "adjoint", 120, 20),
    "latent ODE backprop": ("spiral_latent_ode.yaml", "backprop", 14, 4),
}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- torchdiffeq's examples, as written there ------------------------------------------------------------
def _reference_ode_demo(model: Any, batches: Any, iterations: int, warmup: int, adjoint: bool) -> dict[str, Any]:
    import torch
    from torch import nn, optim
    from torchdiffeq import odeint, odeint_adjoint

    class ODEFunc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))
            self.nfe = 0

        def forward(self, t: Any, y: Any) -> Any:
            self.nfe += 1
            return self.net(y**3)

    func = ODEFunc()
    ours = model[0].dynamics.layers
    func.net[0].load_state_dict(ours[1].state_dict())
    func.net[2].load_state_dict(ours[3].state_dict())
    batch_t = model[0].t.clone()
    solve = odeint_adjoint if adjoint else odeint
    optimizer = optim.RMSprop(func.parameters(), lr=1e-3)
    nfe_f, nfe_b = [], []
    start = 0.0
    for itr in range(iterations):
        if itr == warmup:
            start = time.perf_counter()
        x, y = batches.batch(itr)[:2]
        batch_y0, batch_y = x[:, None, :], y.permute(1, 0, 2)[:, :, None, :]  # the example's layout
        optimizer.zero_grad()
        func.nfe = 0
        pred_y = solve(func, batch_y0, batch_t)
        nfe_f.append(func.nfe)
        loss = torch.mean(torch.abs(pred_y - batch_y))
        loss.backward()
        nfe_b.append(func.nfe - nfe_f[-1])
        optimizer.step()
    per = (time.perf_counter() - start) / (iterations - warmup)
    return {"per_iteration": per, "nfe_forward": statistics.fmean(nfe_f[warmup:]),
            "nfe_backward": statistics.fmean(nfe_b[warmup:])}


def _reference_latent(model: Any, batches: Any, iterations: int, warmup: int, noise_std: float) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch import nn, optim
    from torchdiffeq import odeint

    class LatentODEfunc(nn.Module):
        def __init__(self, latent_dim: int = 4, nhidden: int = 20) -> None:
            super().__init__()
            self.elu = nn.ELU(inplace=True)
            self.fc1 = nn.Linear(latent_dim, nhidden)
            self.fc2 = nn.Linear(nhidden, nhidden)
            self.fc3 = nn.Linear(nhidden, latent_dim)
            self.nfe = 0

        def forward(self, t: Any, x: Any) -> Any:
            self.nfe += 1
            out = self.fc1(x)
            out = self.elu(out)
            out = self.fc2(out)
            out = self.elu(out)
            return self.fc3(out)

    class RecognitionRNN(nn.Module):
        def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 25, nbatch: int = 1) -> None:
            super().__init__()
            self.nhidden = nhidden
            self.nbatch = nbatch
            self.i2h = nn.Linear(obs_dim + nhidden, nhidden)
            self.h2o = nn.Linear(nhidden, latent_dim * 2)

        def forward(self, x: Any, h: Any) -> Any:
            combined = torch.cat((x, h), dim=1)
            h = torch.tanh(self.i2h(combined))
            return self.h2o(h), h

        def initHidden(self) -> Any:
            return torch.zeros(self.nbatch, self.nhidden)

    class Decoder(nn.Module):
        def __init__(self, latent_dim: int = 4, obs_dim: int = 2, nhidden: int = 20) -> None:
            super().__init__()
            self.relu = nn.ReLU(inplace=True)
            self.fc1 = nn.Linear(latent_dim, nhidden)
            self.fc2 = nn.Linear(nhidden, obs_dim)

        def forward(self, z: Any) -> Any:
            return self.fc2(self.relu(self.fc1(z)))

    def log_normal_pdf(x: Any, mean: Any, logvar: Any) -> Any:
        const = torch.log(torch.from_numpy(np.array([2.0 * np.pi])).float())
        return -0.5 * (const + logvar + (x - mean) ** 2.0 / torch.exp(logvar))

    def normal_kl(mu1: Any, lv1: Any, mu2: Any, lv2: Any) -> Any:
        v1, v2 = torch.exp(lv1), torch.exp(lv2)
        lstd1, lstd2 = lv1 / 2.0, lv2 / 2.0
        return lstd2 - lstd1 + ((v1 + (mu1 - mu2) ** 2.0) / (2.0 * v2)) - 0.5

    latent_dim = 4
    x0 = batches.batch(0).x
    func, dec, rec = LatentODEfunc(), Decoder(), RecognitionRNN(nbatch=len(x0))
    # the same weights as odespec's model: nn.RNN's two matrices side by side are i2h
    rnn = model[0].rnn
    with torch.no_grad():
        rec.i2h.weight.copy_(torch.cat([rnn.weight_ih_l0, rnn.weight_hh_l0], dim=1))
        rec.i2h.bias.copy_(rnn.bias_ih_l0 + rnn.bias_hh_l0)
    rec.h2o.load_state_dict(model[1].state_dict())
    for k, layer in zip((0, 2, 4), (func.fc1, func.fc2, func.fc3)):
        layer.load_state_dict(model[3].dynamics.layers[k].state_dict())
    dec.fc1.load_state_dict(model[4].state_dict())
    dec.fc2.load_state_dict(model[6].state_dict())
    samp_ts = model[3].t.clone()
    params = list(func.parameters()) + list(dec.parameters()) + list(rec.parameters())
    optimizer = optim.Adam(params, lr=0.01)
    nfe_f = []
    start = 0.0
    for itr in range(iterations):
        if itr == warmup:
            start = time.perf_counter()
        samp_trajs = batches.batch(itr).x
        optimizer.zero_grad()
        h = rec.initHidden()
        for t in reversed(range(samp_trajs.size(1))):
            obs = samp_trajs[:, t, :]
            out, h = rec.forward(obs, h)
        qz0_mean, qz0_logvar = out[:, :latent_dim], out[:, latent_dim:]
        epsilon = torch.randn(qz0_mean.size())
        z0 = epsilon * torch.exp(0.5 * qz0_logvar) + qz0_mean
        func.nfe = 0
        pred_z = odeint(func, z0, samp_ts).permute(1, 0, 2)
        nfe_f.append(func.nfe)
        pred_x = dec(pred_z)
        noise_std_ = torch.zeros(pred_x.size()) + noise_std
        noise_logvar = 2.0 * torch.log(noise_std_)
        logpx = log_normal_pdf(samp_trajs, pred_x, noise_logvar).sum(-1).sum(-1)
        pz0_mean = pz0_logvar = torch.zeros(z0.size())
        analytic_kl = normal_kl(qz0_mean, qz0_logvar, pz0_mean, pz0_logvar).sum(-1)
        loss = torch.mean(-logpx + analytic_kl, dim=0)
        loss.backward()
        optimizer.step()
    per = (time.perf_counter() - start) / (iterations - warmup)
    return {"per_iteration": per, "nfe_forward": statistics.fmean(nfe_f[warmup:]), "nfe_backward": 0.0}


# -- one measurement (in a subprocess) ----------------------------------------------------------------------
def _variant(config: str, work: Path) -> Path:
    spec_file, gradient, iterations, _ = CONFIGS[config]

    def edit(doc: dict[str, Any]) -> None:
        first_ode(doc)["gradient"] = gradient
        doc["train"].update(iterations=iterations, eval_every=0, checkpoint_every=0)

    return write_variant(spec_data(SPECS / spec_file), work, edit)


def child(config: str, side: str) -> dict[str, Any]:
    """Measure one configuration on one side; runs in its own process."""
    import torch

    torch.set_num_threads(1)
    _, gradient, iterations, warmup = CONFIGS[config]
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = _variant(config, Path(tmp) / "spec")
        if side == "odespec":
            from odespec.train.allocator import keep_freed_memory
            from odespec.train.loop import train

            keep_freed_memory()  # as `odespec train` does at start-up

            base = _rss_mb()
            train(spec_path, Path(tmp) / "run", progress=False)
            recs = records(Path(tmp) / "run")
            per = (recs[-1]["seconds"] - recs[warmup - 1]["seconds"]) / (iterations - warmup)
            out = {"per_iteration": per,
                   "nfe_forward": statistics.fmean(r["nfe_forward"] for r in recs[warmup:]),
                   "nfe_backward": statistics.fmean(r["nfe_backward"] for r in recs[warmup:])}
        else:
            spec, model, batches = model_and_batches(spec_path)
            ts = spec.train
            base = _rss_mb()
            torch.manual_seed(ts.seed)
            if ts.data.source == "ode_demo":
                out = _reference_ode_demo(model, batches, iterations, warmup, adjoint=gradient == "adjoint")
            else:
                out = _reference_latent(model, batches, iterations, warmup, ts.loss.noise_std)
    return {**out, "peak_mb": _peak_mb(), "base_mb": base}


def measure(config: str, side: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", config, side], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} / {side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def nfe_growth(iterations: int) -> list[dict[str, Any]]:
    """circles_anode with and without regularisation (backprop): forward NFE over training."""
    from train_nfe import run_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, reg in (("none", None), ("kinetic+jacobian 1e-3", {"kinetic": 1e-3, "jacobian": 1e-3})):
            rows.append(run_config(SPECS / "circles_anode.yaml", Path(tmp), label, gradient="backprop", regularise=reg,
                                   iterations=iterations))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--growth-iterations", type=int, default=400)
    ap.add_argument("--child", nargs=2, metavar=("CONFIG", "SIDE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    configs = args.configs.split(",")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for config in configs:
            for side in ("odespec", "torchdiffeq") if r % 2 == 0 else ("torchdiffeq", "odespec"):
                results.setdefault((config, side), []).append(measure(config, side))
                print(f"round {r + 1}: {config} / {side} done", file=sys.stderr)

    def med(config: str, side: str, key: str) -> float:
        return statistics.median(m[key] for m in results[(config, side)])

    print(f"time per training iteration, medians of {args.rounds} rounds (1 thread; one process per measurement)")
    print(f"{'configuration':22s} {'odespec ms':>10s} {'torchdiffeq ms':>14s} {'ratio':>6s} {'NFE fwd/bwd ours':>17s} "
          f"{'NFE fwd/bwd theirs':>19s} {'peak RSS MB ours':>16s} {'theirs':>7s} {'growth ours':>11s} {'theirs':>7s}")
    for config in configs:
        keys = ("per_iteration", "nfe_forward", "nfe_backward", "peak_mb", "base_mb")
        ours = {k: med(config, "odespec", k) for k in keys}
        ref = {k: med(config, "torchdiffeq", k) for k in ours}
        print(f"{config:22s} {1e3 * ours['per_iteration']:10.2f} {1e3 * ref['per_iteration']:14.2f} "
              f"{ours['per_iteration'] / ref['per_iteration']:6.2f} "
              f"{ours['nfe_forward']:8.1f}/{ours['nfe_backward']:<8.1f} "
              f"{ref['nfe_forward']:9.1f}/{ref['nfe_backward']:<9.1f} "
              f"{ours['peak_mb']:16.0f} {ref['peak_mb']:7.0f} {ours['peak_mb'] - ours['base_mb']:11.0f} "
              f"{ref['peak_mb'] - ref['base_mb']:7.0f}")
    print("(growth: peak RSS minus the RSS just before training started, after imports and data)")
    if args.growth_iterations:
        rows = nfe_growth(args.growth_iterations)
        print(f"\nforward NFE at each tenth of training, circles_anode, {args.growth_iterations} iterations, backprop")
        for row in rows:
            print(f"{row['tag']:24s} " + " ".join(f"{g:3d}" for g in row["growth"])
                  + f"   (time {row['seconds']:.1f} s, last-20% mean {row['nfe_f']:.1f})")


if __name__ == "__main__":
    main()
