"""``odespec train`` keeps freed memory for the next iteration (glibc's malloc thresholds)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from odespec.train.allocator import keep_freed_memory

PROBE = """
import sys, torch
from odespec.train.allocator import keep_freed_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
x = torch.ones(16 << 20)  # 64 MiB, as one block
before = rss()
del x
print(before - rss())
"""


def _released_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
def test_freed_blocks_stay_in_the_process():
    assert _released_mb("default") > 50  # glibc's default: a 64 MiB block is unmapped when freed
    assert _released_mb("tuned") < 5  # kept for the next iteration's allocations


def test_the_users_malloc_settings_win(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
