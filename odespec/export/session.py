"""The one way odespec opens an onnxruntime session: on the CPU (or the execution provider the
runtime names, :mod:`odespec.export.runtimes`), logging errors only, and with a fixed thread
count where latencies are compared.

Imports no torch (``odespec run`` uses it).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from odespec.errors import ExportError, OdespecError

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

__all__ = ["ModelSource", "ort_session"]

#: a serialized model (bytes) or the path of an ONNX file
ModelSource = Union[bytes, str, "os.PathLike[str]"]


def _exported_model_error(e: Exception) -> OdespecError:
    return ExportError(f"onnxruntime could not load the exported model: {e}")


def ort_session(model: ModelSource, *, threads: Optional[int] = None,
                load_error: Callable[[Exception], OdespecError] = _exported_model_error,
                providers: Sequence[str] = ("CPUExecutionProvider",)) -> "onnxruntime.InferenceSession":
    """An onnxruntime session for ``model`` (serialized bytes or a file path), on the CPU unless
    ``providers`` names others.

    ``threads``: that many intra-op threads, no inter-op pool and sequential execution, so that
    latencies measured in different sessions are comparable; ``None``: onnxruntime's defaults.
    ``load_error`` turns onnxruntime's failure to load the model (it raises untyped errors) into
    the caller's error; by default an :class:`~odespec.errors.ExportError`, for a graph odespec
    has just exported.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    source = model if isinstance(model, bytes) else os.fspath(model)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise load_error(e) from e
