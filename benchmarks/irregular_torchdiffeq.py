"""The irregular latent ODE (issue #13) against the same model written with torchdiffeq the way
its users and Rubanova et al.'s public code (github.com/YuliaRubanova/latent_ode) write it: time
per training iteration and peak memory, same weights, same batches.

odespec: specs/irregular_latent_ode.yaml as shipped (ODE-RNN encoder, one rk4 step per gap
between a sample's observations; latent ODE, rk4 with 4 steps in each of a sample's query
intervals, per-sample solves by the change of time variable; backprop through the solver).

torchdiffeq (``UnionLatentODE``): the batch on the union of its times with masks, as Rubanova's
collate function puts it (each sample's observed values scattered onto the sorted distinct
observation times of the whole batch, mask 0 elsewhere; its cost is counted). Encoder
(``run_odernn``): from the latest union time down to the earliest, ``odeint`` between consecutive
union times for the whole batch (one rk4 step each), then the masked GRU update
``h = o * gru(x, h) + (1 - o) * h``; a sample's ``h`` stays 0 until its own last observation
time (odespec's encoder starts there; without this the union encoder would let ``h = 0`` drift
under f from the batch's latest time, another model); at the end ``odeint`` to t = 0. Latent ODE:
one ``odeint`` over 0 and the sorted union of the batch's query times (``--decoder rk4``: one rk4
step per union interval; ``dopri5``: Rubanova's decoder setting, rtol 1e-3, atol 1e-4, dense
output at the union times), then each sample's states gathered at its own query times. Gradients
by backprop through ``odeint`` (the paper's code does not use the adjoint). torchdiffeq's ``rk4``
is Kutta's 3/8 rule, odespec's the classic one: both 4 stages, order 4.

The weights: odespec's compiled model's (the spec's seed), copied into the torchdiffeq module.
The batches: the training batches of the spec's data (``Batches.batch(step)``), the same steps
for both. One iteration: zero_grad, forward, the masked mse (per sample the mean over its observed
entries, then the mean over samples: odespec's ``mse``), backward, Adam step (lr from the spec).
Each implementation runs in its own subprocess (``torch.set_num_threads(1)``): ``--warmup``
iterations, then ``--iterations`` timed ones; reported: the median iteration time, and the peak
resident memory of the process (``VmHWM`` in /proc/self/status) with its growth over the resident memory just
before the first iteration (the part the training itself adds: autograd's saved tensors).

Before timing, the two compute the loss of the same batch with the same weights in eval mode
(z0 = q's mean), and their gradients: with the solvers timed, and with every solve on both sides
at dopri5 rtol 1e-7, where the discretisations agree, so that what is left is any difference
between the models themselves.

Run from the repository root (a few minutes on 2 cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/irregular_torchdiffeq.py [--iterations 5] [--decoder rk4|dopri5]
        [--weights RUN/model.safetensors]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, model_and_batches  # noqa: E402

SPEC = SPECS / "irregular_latent_ode.yaml"
#: both sides' solves in the check of the models themselves (their discretisations then agree)
TIGHT = {"method": "dopri5", "rtol": 1e-7, "atol": 1e-9}


# -- the torchdiffeq implementation -------------------------------------------------------------------
class CountedMLP(nn.Module):
    """f(t, h): an autonomous MLP, counting its calls."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net
        self.nfe = 0

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(h)


class UnionLatentODE(nn.Module):
    """ODE-RNN encoder -> q(z0) -> latent ODE -> decoder on the union of the batch's times."""

    def __init__(self, features: int = 2, hidden: int = 20, latent: int = 4, decoder: str = "rk4",
                 encoder_options: Optional[dict[str, Any]] = None):
        super().__init__()
        self.enc_cell = nn.GRUCell(2 * features, hidden)
        self.enc_func = CountedMLP(nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, hidden)))
        self.to_q = nn.Linear(hidden, 2 * latent)
        self.dec_func = CountedMLP(nn.Sequential(nn.Linear(latent, 20), nn.ELU(), nn.Linear(20, 20), nn.ELU(),
                                                 nn.Linear(20, latent)))
        self.decoder = nn.Sequential(nn.Linear(latent, 20), nn.ReLU(), nn.Linear(20, features))
        self.decoder_method = decoder
        self.encoder_options = encoder_options or {"method": "rk4"}

    # odespec parameter name -> this module's
    RENAME = {"0.cell.": "enc_cell.", "0.dynamics.layers.": "enc_func.net.", "1.": "to_q.",
              "3.dynamics.layers.": "dec_func.net.", "4.": "decoder.0.", "6.": "decoder.2."}

    def load_odespec(self, state: dict[str, torch.Tensor]) -> None:
        """Copy the compiled odespec model's weights (its state dict) into this module."""
        mine = {}
        for name, value in state.items():
            prefix = next(p for p in self.RENAME if name.startswith(p))
            mine[self.RENAME[prefix] + name[len(prefix):]] = value.detach().clone()
        self.load_state_dict(mine, strict=True)

    @staticmethod
    def to_union(x: torch.Tensor, times: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rubanova's collate: the sorted distinct times of the batch (U,), the values and mask on
        them (batch, U, F), zero where a sample observed nothing (padding slots add nothing)."""
        union, where = torch.unique(times, sorted=True, return_inverse=True)
        b, _, f = x.shape
        idx = where[..., None].expand(-1, -1, f)
        xu = x.new_zeros(b, len(union), f).scatter_add_(1, idx, x * mask)
        mu = x.new_zeros(b, len(union), f).scatter_add_(1, idx, mask).clamp_(max=1)
        return union, xu, mu

    def encode(self, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint

        union, xu, mu = self.to_union(x, times, mask)
        last = times[:, -1]  # each sample's last observation time (padding repeats it)
        h = x.new_zeros(x.shape[0], self.enc_cell.hidden_size)
        for i in range(len(union) - 1, -1, -1):
            if i < len(union) - 1:
                h = odeint(self.enc_func, h, union[i:i + 2].flip(0), **self.encoder_options)[-1]
                # a sample whose observations have not begun keeps h = 0 (see the module doc)
                h = torch.where((union[i] <= last)[:, None], h, torch.zeros_like(h))
            new = self.enc_cell(torch.cat([xu[:, i], mu[:, i]], dim=-1), h)
            o = (mu[:, i].amax(dim=-1, keepdim=True) > 0).to(h.dtype)
            h = o * new + (1 - o) * h
        zero = union.new_zeros(1)
        return odeint(self.enc_func, h, torch.cat([union[:1], zero]), **self.encoder_options)[-1]

    def forward(self, x: torch.Tensor, times: torch.Tensor, mask: torch.Tensor,
                query_times: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint

        mean, logvar = self.to_q(self.encode(x, times, mask)).chunk(2, dim=-1)
        z0 = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        grid, where = torch.unique(torch.cat([query_times.new_zeros(1), query_times.reshape(-1)]), sorted=True,
                                   return_inverse=True)
        options: dict[str, Any] = {"rk4": {"method": "rk4"}, "dopri5": {"method": "dopri5", "rtol": 1e-3, "atol": 1e-4},
                                   "tight": TIGHT}[self.decoder_method]
        zs = odeint(self.dec_func, z0, grid, **options)  # (U', batch, latent)
        rows = where[1:].reshape(query_times.shape)  # (batch, T')
        z = zs[rows, torch.arange(len(z0))[:, None]]  # (batch, T', latent)
        return self.decoder(z)


def masked_mse(pred: torch.Tensor, y: torch.Tensor, y_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """odespec's masked mse: per sample the mean over its observed entries, then the mean over
    the samples with any."""
    if y_mask is None:
        return ((pred - y) ** 2).mean()
    m = y_mask.flatten(1)
    counts = m.sum(1)
    per = (((pred - y) ** 2).flatten(1) * m).sum(1) / counts.clamp(min=1)
    return per.sum() / (counts > 0).sum().clamp(min=1)


# -- workers ------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    """This process's resident-memory high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries
    that over fork and exec, so a worker would report at least its parent's resident memory."""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(kib) * 1024


def setup(impl: str, decoder: str, weights: Optional[str]) -> tuple[nn.Module, Any, Any]:
    spec, model, batches = model_and_batches(SPEC)
    if weights:
        from odespec.api import load_weights

        load_weights(model, weights)
    if impl == "odespec":
        return model, batches, spec
    import torchdiffeq  # noqa: F401  (imported here, so that its import is not counted as training memory)

    tdq = UnionLatentODE(decoder=decoder)
    tdq.load_odespec(model.state_dict())
    return tdq, batches, spec


def call(impl: str, model: nn.Module, batch: Any) -> torch.Tensor:
    if impl == "odespec":
        return model(batch.x, **batch.inputs)
    return model(batch.x, batch.inputs["times"], batch.inputs["mask"], batch.inputs["query_times"])


def nfe_of(impl: str, model: nn.Module) -> int:
    if impl == "odespec":
        return model[0].dynamics.nfe + model[3].dynamics.nfe  # encoder + latent ODE, running counts
    return model.enc_func.nfe + model.dec_func.nfe


def worker(impl: str, decoder: str, warmup: int, iterations: int, weights: Optional[str]) -> None:
    torch.set_num_threads(1)
    model, batches, spec = setup(impl, decoder, weights)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.train.lr)
    rss_before = rss_warm = _rss_bytes()
    seconds, nfe = [], []
    for step in range(warmup + iterations):
        batch = batches.batch(step)
        before = nfe_of(impl, model)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = masked_mse(call(impl, model, batch), batch.y, batch.y_mask)
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step == warmup - 1:
            rss_warm = _rss_bytes()
        if step >= warmup:
            seconds.append(elapsed)
            nfe.append(nfe_of(impl, model) - before)
    peak = _peak_rss_bytes()
    print(json.dumps({"impl": impl, "seconds": seconds, "nfe": nfe, "rss_before": rss_before, "rss_warm": rss_warm,
                      "peak": peak}))


def _losses_and_gradients(ours: nn.Module, theirs: "UnionLatentODE", batch: Any) -> tuple[float, float, float]:
    """(odespec's loss, torchdiffeq's, |g_odespec - g_torchdiffeq| / |g_odespec|), eval mode."""
    losses, grads = [], {}
    for impl, model in (("odespec", ours), ("torchdiffeq", theirs)):
        model.eval()
        model.zero_grad()
        loss = masked_mse(call(impl, model, batch), batch.y, batch.y_mask)
        loss.backward()
        losses.append(loss.item())
        grads[impl] = {n: p.grad for n, p in model.named_parameters()}
    rename = UnionLatentODE.RENAME

    def theirs_name(n: str) -> str:  # torchdiffeq's parameter name for odespec's
        prefix = next(p for p in rename if n.startswith(p))
        return rename[prefix] + n[len(prefix):]

    g1 = torch.cat([g.flatten() for g in grads["odespec"].values()])
    g2 = torch.cat([grads["torchdiffeq"][theirs_name(n)].flatten() for n in grads["odespec"]])
    return losses[0], losses[1], float((g1 - g2).norm() / g1.norm())


def check(decoder: str, weights: Optional[str]) -> None:
    """The two models' loss and gradients on the first training batch (eval mode): with the
    benchmark's solvers, and with every solve of both at dopri5 rtol 1e-7 (the models themselves)."""
    import tempfile

    from train_common import spec_data, write_variant

    import odespec

    torch.set_num_threads(1)
    ours, batches, _ = setup("odespec", decoder, weights)
    batch = batches.batch(0)
    union = len(torch.unique(batch.inputs["times"]))
    print(f"first batch ({len(batch.x)} series, {union} distinct observation times), eval mode (z0 = q's mean), "
          f"weights: {weights or 'initial'}:")
    theirs = UnionLatentODE(decoder=decoder)
    theirs.load_odespec(ours.state_dict())
    a, b, g = _losses_and_gradients(ours, theirs, batch)
    print(f"  as timed (odespec as shipped, torchdiffeq decoder {decoder}): loss odespec {a:.6f}, torchdiffeq "
          f"{b:.6f} (relative difference {abs(a - b) / abs(b):.1e}); |g_odespec - g_torchdiffeq| / |g_odespec| "
          f"= {g:.1e}")

    def tighten(doc: dict[str, Any]) -> None:
        for item in doc["model"]:
            if isinstance(item, dict) and ("ode" in item or "ode_rnn" in item):
                next(iter(item.values()))["solver"] = dict(TIGHT)

    with tempfile.TemporaryDirectory() as tmp:
        exact = odespec.build(write_variant(spec_data(SPEC), Path(tmp), tighten))
    exact.load_state_dict(ours.state_dict())
    theirs = UnionLatentODE(decoder="tight", encoder_options=TIGHT)
    theirs.load_odespec(ours.state_dict())
    a, b, g = _losses_and_gradients(exact, theirs, batch)
    print(f"  every solve dopri5 rtol 1e-7 on both sides: loss odespec {a:.6f}, torchdiffeq {b:.6f} (relative "
          f"difference {abs(a - b) / abs(b):.1e}); |g_odespec - g_torchdiffeq| / |g_odespec| = {g:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decoder", choices=["rk4", "dopri5"], default="rk4")
    ap.add_argument("--check-only", action="store_true", help="the loss and gradient check alone")
    ap.add_argument("--weights", help="the weights of both (default: the spec's initial ones), e.g. a run's "
                                      "model.safetensors")
    ap.add_argument("--worker", choices=["odespec", "torchdiffeq"])
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.decoder, args.warmup, args.iterations, args.weights)
        return
    check(args.decoder, args.weights)
    if args.check_only:
        return
    rows = {}
    for impl in ("odespec", "torchdiffeq"):
        out = subprocess.run([sys.executable, __file__, "--worker", impl, "--decoder", args.decoder, "--warmup",
                              str(args.warmup), "--iterations", str(args.iterations)]
                             + (["--weights", args.weights] if args.weights else []),
                             check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2 ** 20
    print(f"\ntraining iteration (weights: {args.weights or 'initial'}; torchdiffeq's decoder {args.decoder}), "
          f"median of {args.iterations} after {args.warmup} warm-up:")
    print(f"{'':12s} {'s/iter':>8s} {'NFE/iter':>9s} {'peak RSS MiB':>13s} {'growth MiB':>11s}")
    for impl, r in rows.items():
        print(f"{impl:12s} {statistics.median(r['seconds']):8.3f} {statistics.median(r['nfe']):9.0f} "
              f"{r['peak'] / mib:13.0f} {(r['peak'] - r['rss_before']) / mib:11.0f}")
    a, b = rows["odespec"], rows["torchdiffeq"]
    print(f"odespec / torchdiffeq: time {statistics.median(a['seconds']) / statistics.median(b['seconds']):.3f}, "
          f"peak RSS {a['peak'] / b['peak']:.2f}, growth {(a['peak'] - a['rss_before']) / (b['peak'] - b['rss_before']):.2f}")


if __name__ == "__main__":
    main()
