"""A finished (or stopped) run, loaded for plotting: its spec, its model with the final weights
(or the latest checkpoint's), in eval mode, and its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from odespec.compile.model import ODENet, compile_spec
from odespec.spec import load_spec
from odespec.spec.model import Spec
from odespec.train import data as sources
from odespec.train.checkpoint import latest_checkpoint
from odespec.train.data import LoadedData, Need
from odespec.train.errors import TrainError
from odespec.train.rundir import CHECKPOINTS, SPEC_FILE, WEIGHTS_FILE

__all__ = ["TrainedRun", "load_trained"]


@dataclass
class TrainedRun:
    """What the model plots need."""

    spec: Spec
    model: ODENet
    data: LoadedData
    info: dict[str, Any]
    #: the file the weights came from
    weights: Path

    @property
    def eval_x(self) -> Any:
        return self.data.x_eval if self.data.x_eval is not None else self.data.x

    @property
    def eval_y(self) -> Any:
        return self.data.y_eval if self.data.y_eval is not None else self.data.y

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _weights(run: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import load as st_load

    final = run / WEIGHTS_FILE
    if final.is_file():
        return final, st_load(final.read_bytes())
    ckpt = latest_checkpoint(run / CHECKPOINTS)
    if ckpt is None:
        raise TrainError(f"{run} has neither {WEIGHTS_FILE} nor a complete checkpoint to plot the model from")
    import json

    tensors_file = run / CHECKPOINTS / json.loads(ckpt.read_text(encoding="utf-8"))["tensors"]
    tensors = st_load(tensors_file.read_bytes())
    return tensors_file, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def load_trained(run: Path, info: dict[str, Any]) -> TrainedRun:
    """Load the run's model (CPU, eval mode) and data."""
    spec = load_spec(run / SPEC_FILE, data_dir=info["data_base_dir"])
    assert spec.train is not None
    model = compile_spec(spec, device="cpu")
    path, state = _weights(run)
    model.load_state_dict(state, strict=True)
    model.eval()
    ts = spec.train
    need = Need.of(spec.input_shape, spec.output_shape, ts.loss.kind == "cross_entropy", spec.series, spec.model)
    data = sources.get(ts.data.source).load(ts.data.options, seed=ts.seed, base_dir=Path(info["data_base_dir"]),
                                            need=need)
    return TrainedRun(spec=spec, model=model, data=data, info=info, weights=path)
