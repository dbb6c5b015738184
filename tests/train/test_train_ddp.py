"""Data-parallel training: ``torchrun --nproc-per-node 2 -m odespec train`` with gloo on this
machine trains the same weights as one process on the same global batch (float64, a
fixed-step solver), and only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from odespec.train.distributed import setup
from odespec.train.errors import TrainError
from odespec.train.loop import train

from train_helpers import demo_spec, write


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    """The command that starts ``args`` in two processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *args]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_two_processes_train_like_one(tmp_path: Path):
    text = demo_spec(iterations=5).replace("odespec: 1\n", "odespec: 1\ndtype: float64\n")
    spec = write(tmp_path, text)
    single = tmp_path / "single"
    train(spec, single, progress=False)
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun("-m", "odespec", "train", str(spec), "-o", str(ddp)),
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("trained tiny-demo: 5 iterations") == 1  # rank 0 reports
    a, b = load_file(str(ddp / "model.safetensors")), load_file(str(single / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-9)
    ra = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in ra] == [1, 2, 3, 4, 5]  # one writer, no duplicated lines
    for x, y in zip(ra, rb):  # the logged loss is the global batch's (the ranks' mean)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-9) and x["nfe_forward"] == y["nfe_forward"]
    info = json.loads((ddp / "run.json").read_text())
    assert info["status"] == "finished" and info["processes"] == 2


@pytest.mark.skipif(not torch.distributed.is_available() or not Path("/proc/self/task").is_dir(),
                    reason="torch without distributed support, or no /proc to list threads")
def test_teardown_frees_the_process_group(tmp_path: Path):
    """After train() every rank's gloo threads are gone: teardown really destroyed the process
    group. A group left alive lets a worker thread take the GIL while the interpreter exits,
    which aborted a rank now and then ("terminate called without an active exception"); this
    checks the cause deterministically."""
    spec = write(tmp_path, demo_spec(iterations=2))
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""\
        import json, os, sys
        from pathlib import Path
        from odespec.train.loop import train
        train(sys.argv[1], sys.argv[2], progress=False)
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
        Path(f"threads-{os.environ['RANK']}.json").write_text(json.dumps(sorted(names)))
        """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(torchrun(str(probe), str(spec), str(tmp_path / "run")),
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in (0, 1):  # torch names them pt_gloo_runloop and gloo_tcp_loop
        names = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert not [n for n in names if "gloo" in n], (rank, names)


@pytest.fixture
def two_cuda_ranks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, object]]:
    """torchrun's environment for rank 1 of 2 on a machine with two GPUs, with CUDA and the
    process group stood in for, so that :func:`setup`'s CUDA branch runs on any machine; the
    list records the calls that would have reached them."""
    import torch.distributed as dist

    calls: list[tuple[str, object]] = []
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init_process_group", backend)))
    return calls


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_setup_on_cuda_takes_the_local_gpu_and_nccl(two_cuda_ranks: list[tuple[str, object]]):
    """``torchrun --nproc-per-node 2`` with ``device: cuda``: each rank selects GPU LOCAL_RANK
    and the group uses nccl (a function-local ``import torch...`` once made ``torch`` unbound
    here, an UnboundLocalError before training started)."""
    ctx = setup("cuda")
    assert (ctx.rank, ctx.world, ctx.local_rank, ctx.owns_group) == (1, 2, 1, True)
    assert two_cuda_ranks == [("set_device", 1), ("init_process_group", "nccl")]
    assert ctx.device_name("cuda") == "cuda:1"


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed support")
def test_setup_on_cuda_refuses_a_rank_without_its_gpu(two_cuda_ranks: list[tuple[str, object]],
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TrainError, match=r"process 1 needs GPU 1, but only 1 are visible") as info:
        setup("cuda")
    assert "--nproc-per-node" in str(info.value)
    assert two_cuda_ranks == []
