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
