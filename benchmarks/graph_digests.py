"""Build every shipped spec and print a digest of each ONNX graph (nodes and initializers,
metadata left out), so that a refactoring can show it changed no exported graph.

    .venv/bin/python benchmarks/graph_digests.py OUT_DIR      # writes OUT_DIR/digests.json

Compare two checkouts' digests.json files; equal digests mean byte-identical graphs.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import onnx


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    digests = {}
    for spec in sorted(glob.glob("specs/*.yaml")):
        name = os.path.basename(spec)[:-5]
        target = os.path.join(out, name)
        run = subprocess.run([sys.executable, "-m", "odespec", "build", spec, "-o", target],
                             capture_output=True, text=True)
        if run.returncode:
            digests[name] = "FAIL " + run.stderr[-300:]
            continue
        model = onnx.load(glob.glob(os.path.join(target, "*.onnx"))[0])
        graph = model.graph
        digests[name] = (hashlib.sha256(graph.SerializeToString()).hexdigest()[:16]
                         + f" nodes={len(graph.node)} inits={len(graph.initializer)}")
        print(name, digests[name], flush=True)
    with open(os.path.join(out, "digests.json"), "w") as f:
        json.dump(digests, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "graph-digests")
