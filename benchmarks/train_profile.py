"""Where one training iteration of a spec goes (issue #6): a per-part breakdown of forward and
backward, with manual timers, in one process and one thread.

Each iteration runs the model's parts one after another with the graph cut between them (every
part's input is a detached leaf), so the forward *and* backward time of each part can be timed
on its own: forward through the parts, the loss, then backward part by part from the loss down,
each fed the gradient of its output. The sum is compared with the time per iteration of
odespec's real training loop (``odespec.train.train``) on the same spec, measured in the same
process; the difference is the loop's own overhead (batching, metrics, bookkeeping).

Run from the repository root:
    .venv/bin/python benchmarks/train_profile.py [--spec specs/spiral_latent_ode.yaml] [--iterations 20]
    [--rounds 3] [--variants torch-rnn+no-inplace,fast,controller-i]

``--variants`` interleaves configurations in one process: ``fast`` (odespec as it is),
``torch-rnn`` (the ``rnn`` layer forced onto ``torch.nn.RNN``, the layer before issue #6's
written-out loop), ``no-inplace`` (ELU/ReLU after linear layers not in place, as before issue
#6), ``controller-i`` (the ODE block with ``controller: i``); ``a+b`` combines two, so
``torch-rnn+no-inplace`` is odespec before issue #6's changes.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_common import SPECS, first_ode, model_and_batches, records, spec_data, write_variant  # noqa: E402


def _groups(model: Any) -> list[tuple[str, list[Any]]]:
    """The model cut into named parts: encoder (layers before the gaussian), q(z0) sampling,
    each ODE block, decoder (the layers after the last block)."""
    from odespec.compile.ode_block import BlockBase
    from odespec.layers.torch_modules import GaussianSample

    parts: list[tuple[str, list[Any]]] = []
    cur: list[Any] = []
    name = "encoder"
    for m in model:
        if name == "encoder" and not isinstance(m, (BlockBase, GaussianSample)):
            parts.append((f"encoder {type(m).__name__}", [m]))
            continue
        if isinstance(m, (BlockBase, GaussianSample)):
            if cur:
                parts.append((name, cur))
            parts.append(("ode solve" if isinstance(m, BlockBase) else "sample q(z0)", [m]))
            cur, name = [], "decoder"
        else:
            cur.append(m)
    if cur:
        parts.append((name, cur))
    return parts


def breakdown(spec_path: Path, iterations: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds and mean minor page faults per iteration of each part."""
    import torch

    from odespec.compile import ModelOutput
    from odespec.layers.torch_modules import GaussianSample
    from odespec.train.losses import make_loss
    from odespec.train.optim import make_optimizer

    spec, model, batches = model_and_batches(spec_path)
    ts = spec.train
    loss_fn = make_loss(ts.loss, model)
    optimizer = make_optimizer(ts.optimizer, model.parameters(), ts.lr)
    parts = _groups(model)
    torch.manual_seed(ts.seed)
    model.train()
    times: dict[str, list[float]] = {}
    faults: dict[str, list[float]] = {}

    def mark() -> tuple[float, int]:
        return time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def add(key: str, start: tuple[float, int]) -> None:
        now = mark()
        times.setdefault(key, []).append(now[0] - start[0])
        faults.setdefault(key, []).append(now[1] - start[1])

    for itr in range(iterations):
        t = mark()
        x, y = batches.batch(itr)[:2]
        add("data batch", t)
        optimizer.zero_grad(set_to_none=True)
        ins, outs = [], []
        h = x
        posterior = None
        for k, (name, mods) in enumerate(parts):
            t = mark()
            hin = h.detach().requires_grad_(k > 0)
            out = hin
            for m in mods:
                if isinstance(m, GaussianSample):  # as ODENet.forward_with_posterior does
                    posterior = m.distribution(out)
                    out = m.sample(posterior)
                else:
                    out = m(out)
            add(f"{name} fwd", t)
            ins.append(hin)
            outs.append(out)
            h = out
        t = mark()
        loss, extra = loss_fn(ModelOutput(h, posterior), y, None)
        assert loss.item() == loss.item()
        add("loss fwd (+metrics)", t)
        # backward part by part, from the loss down. The KL term reaches the encoder's output
        # through q(z0), the output's posterior, so the loss's backward also gives the sampling
        # part's input a gradient; the sampling part then adds its own.
        t = mark()
        loss.backward()
        add("loss+decoder bwd", t)
        for k in range(len(parts) - 2, -1, -1):
            name = parts[k][0]
            g = ins[k + 1].grad
            t = mark()
            if g is not None and outs[k].requires_grad:
                outs[k].backward(g)
            add(f"{name} bwd", t)
        t = mark()
        optimizer.step()
        add("optimizer step", t)
    return ({k: statistics.median(v[warmup:]) for k, v in times.items()},
            {k: statistics.fmean(v[warmup:]) for k, v in faults.items()})


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Patch odespec for one variant of the comparison (see the module docstring); ``a+b``
    applies both."""
    from odespec.layers import torch_modules

    def torch_forward(self: Any, x: Any) -> Any:
        if self.reverse:
            x = x.flip(1)
        out, _ = self.rnn(x)
        return out if self.sequence else out[:, -1]

    patches = {"no-inplace": (torch_modules, "inplace_activations", lambda modules: None),
               "torch-rnn": (torch_modules.RecurrentEncoder, "forward", torch_forward)}
    saved = []
    try:
        for part in name.split("+"):
            if part in patches:
                owner, attr, value = patches[part]
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, value)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def loop_time(spec_path: Path, iterations: int, warmup: int) -> float:
    from odespec.train.loop import train

    with tempfile.TemporaryDirectory() as tmp:
        train(spec_path, Path(tmp) / "run", progress=False)
        recs = records(Path(tmp) / "run")
    secs = [recs[i]["seconds"] - recs[i - 1]["seconds"] for i in range(warmup, len(recs))]
    return statistics.median(secs)


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(SPECS / "spiral_latent_ode.yaml"))
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="fast")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = args.variants.split(",")

    def edit(controller: str) -> Any:
        def apply(doc: dict[str, Any]) -> None:
            ode = first_ode(doc)
            ode["gradient"] = "backprop"
            if controller:
                ode["solver"]["controller"] = controller
            doc["train"].update(iterations=args.iterations, eval_every=0, checkpoint_every=0)
        return apply

    parts: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    flts: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    loops: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        data = spec_data(Path(args.spec))
        specs = {n: write_variant(data, Path(tmp) / n, edit("i" if "controller-i" in n.split("+") else ""))
                 for n in names}
        for _ in range(args.rounds):  # interleaved: every variant's breakdown, then its real loop
            for n in names:
                with variant(n):
                    secs, fl = breakdown(specs[n], args.iterations, args.warmup)
                    for k, v in secs.items():
                        parts[n].setdefault(k, []).append(v)
                        flts[n].setdefault(k, []).append(fl[k])
                    loops[n].append(loop_time(specs[n], args.iterations, args.warmup))
    med = {n: {k: statistics.median(v) for k, v in parts[n].items()} for n in names}
    mflt = {n: {k: statistics.median(v) for k, v in flts[n].items()} for n in names}
    print(f"per-iteration breakdown: ms (medians of {args.rounds} rounds x {args.iterations - args.warmup} "
          "iterations, 1 thread) and minor page faults")
    print(f"  {'part':28s} " + " ".join(f"{n:>12s} {'faults':>6s}" for n in names))
    for k in med[names[0]]:
        print(f"  {k:28s} " + " ".join(f"{1e3 * med[n][k]:12.2f} {mflt[n][k]:6.0f}" for n in names))
    print(f"  {'sum of parts':28s} " + " ".join(f"{1e3 * sum(med[n].values()):12.2f} {sum(mflt[n].values()):6.0f}"
                                                for n in names))
    print(f"  {'odespec.train loop':28s} " + " ".join(f"{1e3 * statistics.median(loops[n]):12.2f} {'':6s}"
                                                      for n in names))


if __name__ == "__main__":
    main()
