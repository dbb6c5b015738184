"""Weights and checkpoints, written atomically and read without pickle.

A checkpoint is two files in ``RUN/checkpoints/``:

* ``iter-NNNNNNNN.safetensors``: the model's state dict under ``model.``, the optimizer's
  per-parameter tensors flattened to ``optimizer.<param index>.<name>``, and any further tensors
  the loop keeps under prefixes of their own (the best weights so far under ``best.``);
* ``iter-NNNNNNNN.json``: the iteration count, the RNG states (base64 of torch's byte tensors), the data
  cursor, the optimizer's non-tensor state, and the SHA-256 of the tensors file. It is written
  last, so a checkpoint whose JSON exists and whose hash matches is complete.

The optimizer's hyperparameters are not stored: they come from the spec, and the rate from the
schedule, so the live optimizer's ``param_groups`` are reused when loading.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from odespec.fileio import atomic_write_bytes, atomic_write_text
from odespec.train.errors import TrainError

__all__ = ["save_weights", "save_checkpoint", "load_checkpoint", "checkpoint_iteration", "checkpoint_model_state",
           "checkpoint_tensors_file",
           "latest_checkpoint", "capture_rng", "restore_rng", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "odespec-checkpoint/1"
#: the tensors of the model and the optimizer; ``extra`` tensors are named outside these
_OWN_PREFIXES = ("model.", "optimizer.")
PathLike = Union[str, "os.PathLike[str]"]


def _cpu_tensors(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share memory, and a view must not pin a larger buffer
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def save_weights(path: PathLike, weights: Union[torch.nn.Module, Mapping[str, torch.Tensor]],
                 metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write a model's state dict (or a state dict itself) as a safetensors file, atomically."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    data = st_save(_cpu_tensors(state), metadata=dict(metadata or {}))
    return atomic_write_bytes(path, data)


# -- RNG states ---------------------------------------------------------------------------------------
def capture_rng(device: torch.device) -> dict[str, Any]:
    """The global torch RNG states (CPU, and CUDA when training there), JSON-ready."""
    out: dict[str, Any] = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if device.type == "cuda":
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8).clone()


def restore_rng(state: Mapping[str, Any]) -> None:
    """Set the global RNG states :func:`capture_rng` recorded."""
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


# -- checkpoints -----------------------------------------------------------------------------------------
def _stem(iteration: int) -> str:
    return f"iter-{iteration:08d}"


def save_checkpoint(directory: Path, iteration: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: Mapping[str, Any], extra: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Write the checkpoint after ``iteration`` iterations; ``state`` is the JSON part (RNG, cursor, ...),
    ``extra`` more tensors, named outside the ``model.`` and ``optimizer.`` prefixes. Returns the
    JSON file's path."""
    tensors = _cpu_tensors(model.state_dict(), "model.")
    if any(k.startswith(_OWN_PREFIXES) for k in extra or {}):
        raise ValueError("extra checkpoint tensors may not use the model. or optimizer. prefixes")
    tensors.update(_cpu_tensors(extra or {}))
    scalars: dict[str, Any] = {}
    for index, per_param in optimizer.state_dict()["state"].items():
        for name, value in per_param.items():
            key = f"optimizer.{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[key] = value  # plain numbers, booleans or None in torch's optimizers
    data = st_save(tensors)
    stem = _stem(iteration)
    atomic_write_bytes(directory / f"{stem}.safetensors", data)
    doc = {"format": CHECKPOINT_FORMAT, "iteration": iteration, "tensors": f"{stem}.safetensors",
           "tensors_sha256": hashlib.sha256(data).hexdigest(), "optimizer_scalars": scalars, **state}
    return atomic_write_text(directory / f"{stem}.json", json.dumps(doc, indent=1) + "\n")


def _valid(json_path: Path) -> Optional[dict[str, Any]]:
    """The checkpoint's JSON if it and its tensors file are complete, else None."""
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
        data = (json_path.parent / doc["tensors"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if doc.get("format") != CHECKPOINT_FORMAT or hashlib.sha256(data).hexdigest() != doc.get("tensors_sha256"):
        return None
    return doc


def latest_checkpoint(directory: Path) -> Optional[Path]:
    """The JSON of the newest complete checkpoint in ``directory``, or None."""
    for p in sorted(directory.glob("iter-*.json"), reverse=True):
        if _valid(p) is not None:
            return p
    return None


def checkpoint_model_state(tensors: Mapping[str, torch.Tensor]) -> Optional[dict[str, torch.Tensor]]:
    """The model's state dict in a checkpoint's tensors (its ``model.`` entries, the weights at
    the checkpoint's iteration), or None when ``tensors`` hold no checkpoint's model."""
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return state or None


def checkpoint_tensors_file(json_path: Path) -> Optional[Path]:
    """The tensors file of the checkpoint whose JSON is ``json_path``, when that JSON is an odespec
    checkpoint's and its tensors are complete (their hash matches); else None."""
    doc = _valid(json_path)
    return None if doc is None else json_path.parent / doc["tensors"]


def checkpoint_iteration(json_path: Path) -> int:
    """The iteration count of a complete checkpoint (as :func:`latest_checkpoint` finds them)."""
    return int(json.loads(json_path.read_text(encoding="utf-8"))["iteration"])


def load_checkpoint(json_path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load a checkpoint's weights and optimizer state; return its JSON part and the ``extra``
    tensors it was saved with."""
    doc = _valid(json_path)
    if doc is None:
        raise TrainError(f"checkpoint {json_path} is damaged or incomplete")
    tensors = st_load((json_path.parent / doc["tensors"]).read_bytes())
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    per_param: dict[int, dict[str, Any]] = {}
    flat = {**{k: v for k, v in tensors.items() if k.startswith("optimizer.")}, **doc["optimizer_scalars"]}
    for key, value in flat.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": optimizer.state_dict()["param_groups"]})
    return doc, {k: v for k, v in tensors.items() if not k.startswith(_OWN_PREFIXES)}
