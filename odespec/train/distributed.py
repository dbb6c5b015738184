"""Data-parallel training: ``torchrun --nproc-per-node N -m odespec train SPEC``.

torchrun starts N processes and tells each its rank through the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Training then runs the same loop in
every process, with the model wrapped in ``DistributedDataParallel`` (backend gloo on CPU, nccl
on CUDA, where rank r uses GPU ``LOCAL_RANK``):

* the batch of an iteration is a pure function of the iteration (:mod:`odespec.train.batches`),
  so every rank computes the same global batch and takes its own contiguous shard of it
  (``batch_size`` must divide by N); DDP averages the shards' gradients, which for losses that
  are batch means is the gradient of the global batch;
* the logged loss and metrics are averaged over the ranks (the global batch's values), the NFE
  the largest over the ranks (the slowest shard);
* only rank 0 writes: the run directory, metrics, checkpoints, progress, the final weights;
* random draws (the ``gaussian`` layer, dropout, Hutchinson probes) come from a generator
  seeded per iteration and rank, so the ranks draw independent noise and a resumed run draws
  the same as an uninterrupted one without the other ranks' RNG states in the checkpoint.

With deterministic models and fixed-step solvers N processes train exactly (to rounding) as one
process on the same global batch. Adaptive solvers choose their steps per shard, so there the
results agree only to the solver's tolerance.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from odespec.train.errors import TrainError

__all__ = ["DistContext", "setup", "teardown"]

#: stream tag of the per-iteration seeds (the data use 0 and 1, the batch order 2)
_SEED_STREAM = 3


@dataclass
class DistContext:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: True when this process initialised the process group (and so must destroy it)
    owns_group: bool = False
    #: the DistributedDataParallel wrapper :meth:`wrap` made; :func:`teardown` dismantles it
    ddp: Optional[nn.Module] = field(default=None, repr=False, compare=False)

    @property
    def active(self) -> bool:
        """More than one process trains."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """This process writes the run (rank 0)."""
        return self.rank == 0

    def device_name(self, name: str) -> str:
        """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA, else unchanged."""
        return f"cuda:{self.local_rank}" if self.active and name == "cuda" else name

    def shard(self, batch_size: int) -> tuple[int, int]:
        """This rank's ``(start, stop)`` within a global batch."""
        if batch_size % self.world:
            fit = batch_size - batch_size % self.world or self.world
            raise TrainError(f"batch_size {batch_size} does not divide among {self.world} processes",
                             f"use a multiple of {self.world}, e.g. batch_size: {fit}")
        per = batch_size // self.world
        return self.rank * per, (self.rank + 1) * per

    def seed(self, seed: int, iteration: int) -> None:
        """Seed the global RNG for ``iteration`` on this rank (see the module docstring)."""
        import numpy as np

        state = np.random.SeedSequence([seed, _SEED_STREAM, iteration, self.rank]).generate_state(2, np.uint32)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` for the training forward passes: DDP-wrapped when distributed."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(model, device_ids=ids)
        return self.ddp

    def _tensor(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float64, device=like.device)

    def mean(self, values: Sequence[float], like: torch.Tensor) -> list[float]:
        """The average of ``values`` over the ranks (element by element)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = self._tensor(values, like)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return (t / self.world).tolist()

    def max(self, values: Sequence[float], like: torch.Tensor) -> list[float]:
        """The largest of ``values`` over the ranks (element by element)."""
        if not self.active:
            return list(values)
        import torch.distributed as dist

        t = self._tensor(values, like)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def share_error(self, message: Optional[str]) -> None:
        """Rank 0's error (or None) reaches every rank; each then raises it, so none waits for
        the others in a collective that will never come."""
        if not self.active:
            if message is not None:
                raise TrainError(message)
            return
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise TrainError(box[0])


def setup(device: str) -> DistContext:
    """The context from torchrun's environment; initialises the process group when there is
    more than one process (and none exists yet)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    ctx = DistContext(rank=int(os.environ["RANK"]), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        if torch.cuda.device_count() <= ctx.local_rank:
            raise TrainError(f"process {ctx.rank} needs GPU {ctx.local_rank}, but only {torch.cuda.device_count()} "
                             "are visible", "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds ``group.WORLD`` as a default argument when it is
        # first imported, and DDP's constructor imports it (through torch._dynamo). Imported
        # after init_process_group, those defaults hold the group until the interpreter exits,
        # so destroy_process_group could never free it (see teardown); imported now, they hold None.
        # import_module binds no name: ``import torch.distributed.nn`` here would make ``torch``
        # a local of this function, unbound in the CUDA branch above.
        importlib.import_module("torch.distributed.nn")

        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
        ctx.owns_group = True
    elif dist.get_world_size() != world:
        raise TrainError(f"the process group has {dist.get_world_size()} processes, WORLD_SIZE says {world}")
    return ctx


#: process groups kept alive on purpose until the process exits (see teardown)
_KEPT: list[Any] = []


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup` created it.

    Destroying must really free the group: its gloo worker threads outlive it otherwise, and
    one of them may still have to drop a finished collective (DDP's gradient all-reduce keeps a
    Python object, the autograd context, in its thread-local state, and a gloo barrier keeps the
    collectives before it), which takes the GIL. A thread that takes the GIL while the
    interpreter finalises is ended by CPython with pthread_exit, whose unwinding through that
    noexcept C++ destructor is std::terminate: "terminate called without an active exception"
    and SIGABRT, most often on a rank > 0, which exits moments after its last collective.
    The group's destructor waits for the queued collectives and joins the threads, with the GIL
    released when the last reference goes from Python (as in destroy_process_group); so DDP's
    references go first, else the reducer's C++ destructor would drop the last one with the GIL
    held and the join could deadlock against a thread waiting for the GIL. (A barrier before
    destroying does not help: nothing is freed, and the barrier's own work then drops the
    collectives before it on the worker thread.)

    While an exception propagates (teardown runs in the callers' ``finally``: a failed or
    interrupted run), a rank may have a collective in flight that its peers never join, and the
    join would wait for gloo's timeout. The group is then only unregistered and kept alive until
    the process exits, on purpose: freed later by the reducer, with the GIL held, it could
    deadlock as above.
    """
    if not ctx.owns_group:
        return
    import torch.distributed as dist

    ddp, ctx.ddp = ctx.ddp, None
    ctx.owns_group = False
    if not dist.is_initialized():
        return
    if sys.exc_info()[1] is None:
        if ddp is not None:
            # the caller still holds the wrapper (training is over); drop what holds the group:
            # the logger (it holds the reducer), the C++ reducer, the group itself
            for name in ("logger", "reducer", "process_group"):
                ddp.__dict__.pop(name, None)
    else:
        _KEPT.append(dist.group.WORLD)
    dist.destroy_process_group()
