"""The latent ODE's recognition RNN (issue #6): forward + backward of Elman RNN implementations at
the real shapes (batch 1000, 100 steps read last-to-first, input 2, hidden 25), one thread,
interleaved rounds, medians; each one's error against a float64 ``nn.RNN`` of the same weights.

* ``nn.RNN``: odespec's ``rnn`` layer before issue #6 (flip, then ``torch.nn.RNN``).
* ``example loop``: torchdiffeq's examples/latent_ode.py RecognitionRNN, ``tanh(i2h(cat(x, h)))``
  per step (``+h2o``: with its per-step output layer, as the example runs it).
* ``index loop``: an input projection precomputed once, then per step ``tanh(xp[:, t] + h @ W.T)``
  (``[t]``: time-major and contiguous, ``xp[t]`` with ``addmm``): autograd of the indexing.
* ``unbind loop``: the same with ``xp.unbind`` instead of indexing.
* ``Function bm/fm tanh/sig``: an autograd.Function with the backward written out, states
  batch-major (time, batch, hidden) or feature-major (time, hidden, batch), activation ``tanh`` or
  ``2 sigmoid(2a) - 1``. ``fm sig`` is what odespec's layer runs (``odespec rnn`` row).

Run from the repository root:  .venv/bin/python benchmarks/rnn_bench.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

B, T, F, H = 1000, 100, 2, 25


def written_out(act: str, layout: str) -> Callable[..., torch.Tensor]:
    """The written-out Function in one of four forms (the layer's is fm + sig)."""
    scale = 2.0 if act == "sig" else 1.0

    class Elman(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            fm = layout == "fm"
            xin = x.flip(1).permute(1, 2, 0).contiguous() if fm else x.flip(1).transpose(0, 1).contiguous()
            hs = x.new_empty((T + 1, H, B) if fm else (T + 1, B, H))
            hs[0].zero_()
            if fm:
                torch.matmul(scale * w_ih, xin, out=hs[1:])
                hs[1:].add_((scale * b)[:, None])
                w = scale * w_hh
            else:
                torch.addmm(scale * b, xin.view(T * B, F), (scale * w_ih).t(), out=hs[1:].view(T * B, H))
                w = (scale * w_hh).t()
            one = x.new_ones(())
            for k in range(T):
                hk = hs[k + 1]
                if k:
                    hk.addmm_(w, hs[k]) if fm else hk.addmm_(hs[k], w)
                hk.sigmoid_().lerp_(one, -1.0) if act == "sig" else hk.tanh_()
            ctx.save_for_backward(xin, w_hh, hs)
            return hs[T].t().contiguous() if fm else hs[T].clone()

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
            xin, w_hh, hs = ctx.saved_tensors
            da = torch.addcmul(hs.new_ones(()), hs[1:], hs[1:], value=-1.0)
            if layout == "fm":
                dh, w = grad.t(), w_hh.t()
                for k in range(T - 1, -1, -1):
                    da[k].mul_(dh)
                    dh = torch.mm(w, da[k])
                dw_hh = torch.bmm(da[1:], hs[1:-1].transpose(1, 2)).sum(0)
                dw_ih = torch.bmm(da, xin.transpose(1, 2)).sum(0)
                db = da.sum((0, 2))
            else:
                dh = grad
                for k in range(T - 1, -1, -1):
                    da[k].mul_(dh)
                    dh = torch.mm(da[k], w_hh)
                flat = da.view(T * B, H)
                dw_hh = flat[B:].t() @ hs[1:-1].reshape(-1, H)
                dw_ih = (xin.view(T * B, F).t() @ flat).t()
                db = flat.sum(0)
            return None, dw_ih, dw_hh, db

    return Elman.apply


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from odespec.layers.torch_modules import RecurrentEncoder

    enc = RecurrentEncoder("RNN", F, H, reverse=True, sequence=False, bias=True)
    rnn = enc.rnn
    w_ih, w_hh, b_ih, b_hh = rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0
    i2h, h2o = nn.Linear(F + H, H), nn.Linear(H, 8)
    with torch.no_grad():
        i2h.weight.copy_(torch.cat([w_ih, w_hh], 1))
        i2h.bias.copy_(b_ih + b_hh)
    x = torch.randn(B, T, F)
    g = torch.randn(B, H)

    def example(out_layer: bool) -> torch.Tensor:
        h = torch.zeros(B, H)
        for t in reversed(range(T)):
            h = torch.tanh(i2h(torch.cat((x[:, t, :], h), 1)))
            if out_layer:
                h2o(h)
        return h

    def index_loop(time_major: bool) -> torch.Tensor:
        h = torch.zeros(B, H)
        if time_major:
            xp = nn.functional.linear(x.flip(1).transpose(0, 1), w_ih, b_ih + b_hh).contiguous()
            for t in range(T):
                h = torch.tanh(torch.addmm(xp[t], h, w_hh.t()))
        else:
            xp = nn.functional.linear(x, w_ih, b_ih + b_hh)
            for t in reversed(range(T)):
                h = torch.tanh(xp[:, t] + h @ w_hh.t())
        return h

    def unbind_loop() -> torch.Tensor:
        xp = nn.functional.linear(x.flip(1).transpose(0, 1), w_ih, b_ih + b_hh).contiguous()
        h = torch.zeros(B, H)
        for xt in xp.unbind(0):
            h = torch.tanh(torch.addmm(xt, h, w_hh.t()))
        return h

    cands: dict[str, Callable[[], torch.Tensor]] = {
        "nn.RNN": lambda: rnn(x.flip(1))[0][:, -1],
        "example loop": lambda: example(False),
        "example loop +h2o": lambda: example(True),
        "index loop xp[:, t]": lambda: index_loop(False),
        "index loop xp[t]": lambda: index_loop(True),
        "unbind loop": unbind_loop,
    }
    for act in ("tanh", "sig"):
        for layout in ("bm", "fm"):
            fn = written_out(act, layout)
            cands[f"Function {layout} {act}"] = lambda fn=fn: fn(x, w_ih, w_hh, b_ih + b_hh)
    cands["odespec rnn"] = lambda: enc(x)

    params = [w_ih, w_hh, b_ih, b_hh, i2h.weight, i2h.bias]
    exact = nn.RNN(F, H, batch_first=True).double()
    exact.load_state_dict({k: v.double() for k, v in rnn.state_dict().items()})
    with torch.no_grad():
        h64 = exact(x.double().flip(1))[0][:, -1]
    res: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in cands}
    err = {}
    for r in range(args.rounds + 1):
        for n, f in cands.items():
            t0 = time.perf_counter()
            h = f()
            t1 = time.perf_counter()
            (h * g).sum().backward()
            t2 = time.perf_counter()
            for p in params:
                p.grad = None
            if r:  # round 0 warms up
                res[n][0].append(t1 - t0)
                res[n][1].append(t2 - t1)
            else:
                err[n] = (h.detach().double() - h64).abs().max().item()
    print(f"Elman RNN, batch {B}, {T} steps, input {F}, hidden {H}, 1 thread: medians of {args.rounds} rounds")
    print(f"{'implementation':22s} {'fwd ms':>8s} {'bwd ms':>8s} {'total':>8s} {'max |h - h64|':>14s}")
    for n, (fw, bw) in res.items():
        f, b = 1e3 * statistics.median(fw), 1e3 * statistics.median(bw)
        print(f"{n:22s} {f:8.2f} {b:8.2f} {f + b:8.2f} {err[n]:14.1e}")


if __name__ == "__main__":
    main()
