"""Ctrl-C during training: the guard (:mod:`odespec.train.interrupt`) holds it back except inside
its interruptible blocks, and the loop puts only work that changes no kept state in those. The
sweep at the end delivers a real SIGINT at every point of an iteration where CPython can run a
signal handler, one run per point, and checks each interrupted run resumes bit for bit."""

from __future__ import annotations

import dis
import json
import os
import re
import signal
import sys
import threading
from pathlib import Path
from types import CodeType, FrameType
from typing import Any, Callable, Optional

import pytest
import torch
from safetensors.torch import load_file

from odespec.train import TrainingInterrupted
from odespec.train.checkpoint import latest_checkpoint
from odespec.train.interrupt import InterruptGuard
from odespec.train.loop import resume, train

from train_helpers import demo_spec, write


def sigint() -> None:
    """A real SIGINT to this process; on Linux its handler has run when os.kill returns."""
    os.kill(os.getpid(), signal.SIGINT)


# -- the guard ------------------------------------------------------------------------------------------
def test_ctrl_c_is_held_back_outside_interruptible_blocks_and_stops_them_at_once():
    guard = InterruptGuard()
    with pytest.raises(KeyboardInterrupt):
        with guard:
            sigint()  # held back
            reached = True
            with guard.interruptible():  # ... and stops the next interruptible block on entry
                pytest.fail("the held-back Ctrl-C did not stop the block on entry")
    assert reached
    with pytest.raises(KeyboardInterrupt):
        with guard, guard.interruptible():
            sigint()
            pytest.fail("Ctrl-C inside an interruptible block did not stop it at once")


def test_a_deferred_block_inside_an_interruptible_one_finishes_first():
    guard = InterruptGuard()
    done = []
    with pytest.raises(KeyboardInterrupt):
        with guard, guard.interruptible():
            with guard.deferred():
                sigint()
                done.append("deferred")
            done.append("after")
    assert done == ["deferred"]


def test_an_error_in_a_deferred_block_wins_over_a_held_back_ctrl_c():
    guard = InterruptGuard()
    with pytest.raises(ValueError):
        with guard, guard.interruptible(), guard.deferred():
            sigint()
            raise ValueError("the error that stops the run")


def test_a_ctrl_c_held_back_until_the_end_goes_to_the_previous_handler():
    seen: list[int] = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with InterruptGuard():
            sigint()
            assert seen == []
        assert seen == [signal.SIGINT]  # delivered once the guarded block had ended
        with pytest.raises(RuntimeError):
            with InterruptGuard():
                sigint()
                raise RuntimeError("stopping already")
        assert seen == [signal.SIGINT]  # an error ends the block: the Ctrl-C is not delivered again
    finally:
        signal.signal(signal.SIGINT, before)


def test_after_a_keyboard_interrupt_further_ctrl_c_is_held_back():
    """While the first KeyboardInterrupt unwinds (the checkpoint of the interruption is written
    then), a second Ctrl-C must not cut it short."""
    guard = InterruptGuard()
    with guard:
        try:
            with guard.interruptible():
                sigint()
        except KeyboardInterrupt:
            sigint()
            written = True
        else:
            pytest.fail("no KeyboardInterrupt")
        # the exception was handled: the second Ctrl-C is still held, for the next interruptible block
        with pytest.raises(KeyboardInterrupt):
            with guard.interruptible():
                pass
    assert written


def test_the_guard_puts_back_an_ignored_sigint():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a shell script
    try:
        with pytest.raises(KeyboardInterrupt):
            with InterruptGuard() as guard, guard.interruptible():
                sigint()  # stops the run all the same (kill -INT to such a job)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_outside_the_main_thread_the_guard_installs_nothing():
    handlers: list[Any] = []

    def body() -> None:
        with InterruptGuard() as guard, guard.interruptible():
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signal.SIGINT)]


def test_a_run_started_with_sigint_ignored_stops_at_ctrl_c_and_ignores_it_again(tmp_path: Path):
    """pytest started as a background job of a shell script inherits SIGINT ignored; the guard
    puts back what it found, which is not Python's default handler then."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def callback(record: dict) -> None:
            if record["iteration"] == 2:
                sigint()

        with pytest.raises(TrainingInterrupted) as e:
            train(write(tmp_path, demo_spec(iterations=4)), tmp_path / "run", callbacks=[callback], progress=False)
        assert e.value.iteration == 2
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


# -- the sweep ------------------------------------------------------------------------------------------
#: the instructions after which CPython runs pending signal handlers (besides a function's start
#: and a generator's resumption): a call's return and a loop's back edge, in the versions we support
HANDLER_CHECKS = {"CALL", "CALL_FUNCTION", "CALL_METHOD", "CALL_KW", "CALL_FUNCTION_EX", "JUMP_BACKWARD",
                  "JUMP_ABSOLUTE"}
#: the code a SIGINT is delivered in: the loop and the guard, the best weights, and the context
#: managers they enter and leave (contextlib's, torch's grad modes and RNG fork)
WATCHED = re.compile(r"(odespec[\\/]train[\\/](loop|interrupt|best)|contextlib|torch[\\/]autograd[\\/]grad_mode"
                     r"|torch[\\/]utils[\\/]_contextlib|torch[\\/]random)\.py$")


class SigintAt:
    """A trace function that sends one SIGINT at the ``k``-th point (counted from :meth:`arm`)
    where CPython may run a signal handler, in the code :data:`WATCHED`."""

    def __init__(self, k: int):
        self.k = k
        self.count = 0
        self.armed = False
        self.where: Optional[str] = None
        self._previous_op: dict[int, Optional[str]] = {}
        self._ops: dict[CodeType, dict[int, str]] = {}

    def arm_after(self, iteration: int) -> Callable[[dict], None]:
        """A training callback that starts the count after ``iteration``."""
        def callback(record: dict) -> None:
            if record["iteration"] == iteration:
                self.armed = True
        return callback

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if not WATCHED.search(frame.f_code.co_filename):
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        self._point(frame, "start")  # a function's start, or a generator's resumption
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            previous = self._previous_op.get(id(frame))
            self._previous_op[id(frame)] = self._opname(frame.f_code, frame.f_lasti)
            if previous in HANDLER_CHECKS:
                self._point(frame, f"after {previous}")
        elif event == "return":
            self._previous_op.pop(id(frame), None)
        return self._local

    def _opname(self, code: CodeType, offset: int) -> str:
        if code not in self._ops:
            self._ops[code] = {i.offset: i.opname for i in dis.get_instructions(code)}
        return self._ops[code].get(offset, "")

    def _point(self, frame: FrameType, what: str) -> None:
        if not self.armed or self.where is not None:
            return
        if self.count == self.k:
            self.where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {frame.f_code.co_name} ({what})"
            sigint()  # the handler runs here, raising KeyboardInterrupt from this point or holding it back
        self.count += 1


def outcome(run: Path) -> dict[str, Any]:
    """What a run left: its records (without wall times), weights, kept choice and status."""
    records = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    files = {name: load_file(str(run / name)) for name in ("model.safetensors", "model.last.safetensors")
             if (run / name).is_file()}
    info = json.loads((run / "run.json").read_text())
    return {"records": records, "files": files, "kept": info.get("kept"), "status": info["status"]}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["records"] == b["records"] and a["kept"] == b["kept"] and a["status"] == b["status"]
            and a["files"].keys() == b["files"].keys()
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                    for x, y in zip(a["files"].values(), b["files"].values(), strict=True)))


def resume_state(run: Path) -> str:
    """All a resume starts from: the latest checkpoint (tensors by hash) and the records up to it."""
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None
    doc = json.loads(ckpt.read_text())
    doc.pop("seconds")
    records = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return json.dumps([doc, [r for r in records if r["iteration"] <= doc["iteration"]]], sort_keys=True)


@pytest.mark.slow
def test_ctrl_c_at_any_point_of_an_iteration_resumes_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The last iteration of a two-iteration run evaluates, offers its weights to the best ones,
    checkpoints, calls back and writes the final weights. A SIGINT at each point of it where a
    handler can run (in the loop, the guard, the best weights, and the context managers they
    enter) either stops the run with a checkpoint it resumes from to the uninterrupted run's
    records and weights, or (held back through the final bookkeeping) reaches the caller as
    KeyboardInterrupt after the run finished; and it leaves the caller's grad mode, RNG and SIGINT
    handler as they were."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # hundreds of runs; durability is not tested here
    # a Ctrl-C held back to the end goes to the handler the run started with: Python's default,
    # unless the suite runs as a background job of a script, which starts with SIGINT ignored
    # (then the guard rightly passes it on to SIG_IGN, and nothing would reach this test)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _every_point(tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)


def _every_point(tmp_path: Path) -> None:
    spec = write(tmp_path, demo_spec(iterations=2).replace("eval_every: 4", "eval_every: 1"))
    train(spec, tmp_path / "reference", progress=False)
    reference = outcome(tmp_path / "reference")
    verified: dict[str, bool] = {}  # resume states already resumed, and whether that matched
    failures: list[str] = []
    k = 0
    while True:
        run = tmp_path / f"run-{k}"
        tracer = SigintAt(k)
        torch.manual_seed(123)
        caller_rng = torch.get_rng_state()
        handler = signal.getsignal(signal.SIGINT)
        previous_trace = sys.gettrace()
        sys.settrace(tracer)
        try:
            train(spec, run, callbacks=[tracer.arm_after(1)], progress=False)
            how = "finished"
        except TrainingInterrupted:
            how = "interrupted"
        except KeyboardInterrupt:
            how = "finished, then KeyboardInterrupt"
        finally:
            sys.settrace(previous_trace)
        if tracer.where is None:
            break  # past the last point
        changed = {"grad mode off": not torch.is_grad_enabled(),
                   "the caller's RNG changed": not torch.equal(torch.get_rng_state(), caller_rng),
                   "another SIGINT handler": signal.getsignal(signal.SIGINT) is not handler}
        left = [what for what, bad in changed.items() if bad]
        torch.set_grad_enabled(True)
        signal.signal(signal.SIGINT, handler)
        if how == "interrupted":
            state = resume_state(run)
            if state not in verified:
                resume(run, progress=False)
                verified[state] = same(outcome(run), reference)
            ok = verified[state]
        else:
            ok = how == "finished, then KeyboardInterrupt" and same(outcome(run), reference)
        if left or not ok:
            failures.append(f"SIGINT at {tracer.where}: {how}" + ("" if ok else ", not the uninterrupted run")
                            + "".join(f", {what}" for what in left))
        k += 1
    assert k > 100, f"only {k} points: the trace reached too little of the loop"
    assert not failures, f"{len(failures)} of {k} points:\n" + "\n".join(failures)
