"""The inference runtimes an exported graph is checked and run on, behind one interface.

A :class:`Runtime` says whether this machine can run it (:meth:`Runtime.unavailable`), what it
is (:meth:`Runtime.describe`) and opens a model (:meth:`Runtime.load`) as a :class:`Session`,
which runs feeds (cast to the types the graph declares: a float16 graph is fed float16) and
tells the graph's inputs, outputs and metadata. Parity, latency, ``odespec run`` and
``odespec build --verify`` all go through it; the registry holds one object per name of the
spec language's :data:`~odespec.spec.schema.EXPORT_RUNTIMES`.

- ``onnxruntime``: the CPU execution provider (:func:`odespec.export.session.ort_session`).
- ``onnxruntime-cuda``, ``onnxruntime-tensorrt``: onnxruntime's GPU execution providers, where
  the installed onnxruntime has them (``onnxruntime-gpu``) and a GPU answers; otherwise they are
  unavailable with a one-line reason, and a build that lists them skips them with it.
- ``openvino``: Intel OpenVINO on the CPU (``pip install 'odespec[openvino]'``). On CPUs with
  bfloat16 units OpenVINO computes in bfloat16 unless told otherwise, which is far from the
  graph's float32; it is loaded with ``INFERENCE_PRECISION_HINT: f32`` (:data:`OPENVINO_CONFIG`,
  recorded in the file's metadata by the build), and :meth:`OpenVinoRuntime.load` with
  ``default_precision=True`` gives the unhinted compile whose error the build reports too.

Imports no torch (``odespec run`` uses it); each runtime's package is imported when used.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from odespec.errors import ExportError, OdespecError
from odespec.export.session import ModelSource, ort_session
from odespec.spec.schema import EXPORT_RUNTIMES

__all__ = ["Port", "Session", "Runtime", "register", "get_runtime", "runtime_names", "OPENVINO_CONFIG",
           "METADATA_KEY_OPENVINO"]

#: how odespec compiles a model in OpenVINO for the CPU: float32 compute (its default on CPUs
#: with bfloat16 units is bfloat16, errors of ~1e-3 on a float32 ODE solve)
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
#: the metadata entry of a file verified on OpenVINO: the configuration it was verified with
METADATA_KEY_OPENVINO = "openvino_config"

#: element types as onnxruntime names them (``NodeArg.type``), and numpy's
_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
          "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
          "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
_OPENVINO_TYPES = {"f16": "tensor(float16)", "f32": "tensor(float)", "f64": "tensor(double)", "i64": "tensor(int64)",
                   "i32": "tensor(int32)", "i16": "tensor(int16)", "i8": "tensor(int8)", "u64": "tensor(uint64)",
                   "u32": "tensor(uint32)", "u16": "tensor(uint16)", "u8": "tensor(uint8)", "boolean": "tensor(bool)"}


class Port(NamedTuple):
    """A graph input or output: its name, its element type as onnxruntime writes it
    (``tensor(float)``) and its shape (ints, and names or None for symbolic dimensions)."""

    name: str
    type: str
    shape: tuple[Any, ...]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class Session:
    """A model loaded in a runtime. ``run(None, feeds)`` as onnxruntime's sessions, so that code
    written for those takes any runtime's."""

    runtime: str

    def run(self, output_names: Optional[Sequence[str]], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs (all of them: ``output_names`` None) for ``feeds``, input name -> array; a
        floating array is cast to the type the graph declares for that input."""
        outs = self._run(self.cast(feeds))
        if output_names is None:
            return outs
        names = [p.name for p in self.get_outputs()]
        return [outs[names.index(n)] for n in output_names]

    def cast(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` with each floating array in the type the graph declares for its input."""
        types = {p.name: p.type for p in self.get_inputs()}
        return {k: _as_declared(v, types.get(k)) for k, v in feeds.items()}

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def get_inputs(self) -> list[Port]:
        """The graph's inputs, in order."""
        raise NotImplementedError

    def get_outputs(self) -> list[Port]:
        """The graph's outputs, in order."""
        raise NotImplementedError

    @property
    def metadata(self) -> dict[str, str]:
        """The ONNX file's ``metadata_props``."""
        raise NotImplementedError


def _as_declared(x: np.ndarray, declared: Optional[str]) -> np.ndarray:
    want = _TYPES.get(declared or "")
    x = np.asarray(x)
    if want is not None and x.dtype.kind == "f" and np.dtype(want).kind == "f" and x.dtype != want:
        return x.astype(want)
    return x


class Runtime:
    """One inference runtime. Subclasses set :attr:`name` (a name of
    :data:`~odespec.spec.schema.EXPORT_RUNTIMES`) and implement the methods."""

    name: ClassVar[str]
    #: needs hardware a build machine may lack (a GPU): listed but unavailable, it is skipped
    #: with its reason instead of failing the build
    needs_device: ClassVar[bool] = False
    #: how to get it when it is not installed
    install_hint: ClassVar[str] = ""

    def unavailable(self) -> Optional[str]:
        """None when this machine can run it; else why not, in one line."""
        raise NotImplementedError

    def load(self, model: ModelSource, *, threads: Optional[int] = None,
             load_error: Optional[Callable[[Exception], OdespecError]] = None) -> Session:
        """``model`` (serialized bytes or a path) loaded for running. ``threads``: that many
        intra-op threads and one stream, so that latencies compare (None: the runtime's
        defaults). ``load_error`` turns a failure to load into the caller's error (default: an
        :class:`ExportError` naming the runtime)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What it is, for the report: name, version, device, and the precision it computes in."""
        raise NotImplementedError

    def _load_error(self, load_error: Optional[Callable[[Exception], OdespecError]]) -> Callable[[Exception], OdespecError]:
        if load_error is not None:
            return load_error
        return lambda e: ExportError(f"{self.name} could not load the exported model: {_first_line(e)}")


_REGISTRY: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    """Add ``runtime`` to the registry. :class:`ExportError` for a name already registered, or
    one the spec language does not know (``export.onnx.verify`` could not name it)."""
    if runtime.name in _REGISTRY:
        raise ExportError(f"a runtime named {runtime.name!r} is already registered")
    if runtime.name not in EXPORT_RUNTIMES:
        raise ExportError(f"runtime {runtime.name!r} is not one of the spec language's runtimes "
                          f"({', '.join(EXPORT_RUNTIMES)})", "add it to odespec.spec.schema.EXPORT_RUNTIMES")
    _REGISTRY[runtime.name] = runtime
    return runtime


def runtime_names() -> list[str]:
    """The registered runtimes' names, in registration order."""
    return list(_REGISTRY)


def get_runtime(name: str) -> Runtime:
    """The registered runtime ``name``; :class:`ExportError` with a did-you-mean otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"the runtimes are {', '.join(_REGISTRY)}"
    raise ExportError(f"unknown runtime {name!r}", hint)


# -- onnxruntime ---------------------------------------------------------------------------------


class _OrtSession(Session):
    def __init__(self, sess: Any, runtime: str):
        self.sess = sess
        self.runtime = runtime

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.sess.run(None, feeds))

    def get_inputs(self) -> list[Port]:
        return [Port(i.name, i.type, tuple(i.shape)) for i in self.sess.get_inputs()]

    def get_outputs(self) -> list[Port]:
        return [Port(o.name, o.type, tuple(o.shape)) for o in self.sess.get_outputs()]

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.sess.get_modelmeta().custom_metadata_map)


class OnnxRuntime(Runtime):
    """onnxruntime with one execution provider (the CPU's by default)."""

    name = "onnxruntime"
    provider: ClassVar[str] = "CPUExecutionProvider"

    def unavailable(self) -> Optional[str]:
        import onnxruntime as ort

        if self.provider not in ort.get_available_providers():
            return (f"this onnxruntime ({ort.__version__}, {ort.get_device()}) has no {self.provider}; "
                    "install onnxruntime-gpu on a machine with an NVIDIA GPU")
        return None

    def load(self, model: ModelSource, *, threads: Optional[int] = None,
             load_error: Optional[Callable[[Exception], OdespecError]] = None) -> Session:
        sess = ort_session(model, threads=threads, load_error=self._load_error(load_error), providers=[self.provider])
        if self.provider not in sess.get_providers():  # onnxruntime falls back to the CPU quietly
            raise self._load_error(load_error)(RuntimeError(f"{self.provider} did not start (no usable GPU?)"))
        return _OrtSession(sess, self.name)

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runtime": self.name, "version": ort.__version__, "provider": self.provider,
                "precision": "the graph's types"}


class OnnxRuntimeCuda(OnnxRuntime):
    """onnxruntime's CUDA execution provider (``onnxruntime-gpu``)."""

    name = "onnxruntime-cuda"
    provider = "CUDAExecutionProvider"
    needs_device = True


class OnnxRuntimeTensorRT(OnnxRuntime):
    """onnxruntime's TensorRT execution provider (``onnxruntime-gpu`` and TensorRT's libraries)."""

    name = "onnxruntime-tensorrt"
    provider = "TensorrtExecutionProvider"
    needs_device = True


# -- OpenVINO ------------------------------------------------------------------------------------


class _OpenVinoSession(Session):
    runtime = "openvino"

    def __init__(self, compiled: Any, source: ModelSource):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self._source = source
        self._metadata: Optional[dict[str, str]] = None

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        # the arrays are views of the request's buffers, which the next run overwrites
        return [np.array(result[o], copy=True) for o in self.compiled.outputs]

    @staticmethod
    def _port(p: Any) -> Port:
        shape = tuple(d.get_length() if d.is_static else None for d in p.get_partial_shape())
        kind = p.get_element_type().get_type_name()
        return Port(p.get_any_name(), _OPENVINO_TYPES.get(kind, kind), shape)

    def get_inputs(self) -> list[Port]:
        return [self._port(p) for p in self.compiled.inputs]

    def get_outputs(self) -> list[Port]:
        return [self._port(p) for p in self.compiled.outputs]

    @property
    def metadata(self) -> dict[str, str]:
        # OpenVINO does not keep ONNX metadata_props: read them from the file
        if self._metadata is None:
            import onnx

            proto = (onnx.load_model_from_string(self._source) if isinstance(self._source, bytes)
                     else onnx.load(os.fspath(self._source), load_external_data=False))
            self._metadata = {p.key: p.value for p in proto.metadata_props}
        return self._metadata


class OpenVinoRuntime(Runtime):
    """Intel OpenVINO on the CPU, compiled with :data:`OPENVINO_CONFIG` (float32)."""

    name = "openvino"
    install_hint = "pip install 'odespec[openvino]'"

    def unavailable(self) -> Optional[str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"OpenVINO is not installed ({self.install_hint})"
        return None

    def _core(self) -> Any:
        if self.unavailable():
            raise ExportError(f"OpenVINO is not installed; it is needed to run on {self.name}", self.install_hint)
        import openvino as ov

        return ov.Core()

    def load(self, model: ModelSource, *, threads: Optional[int] = None,
             load_error: Optional[Callable[[Exception], OdespecError]] = None,
             default_precision: bool = False) -> Session:
        """As :meth:`Runtime.load`; ``default_precision``: without the f32 hint (OpenVINO's own
        choice, bfloat16 on CPUs with bfloat16 units), to measure what a user gets unhinted."""
        core = self._core()
        config: dict[str, Any] = {} if default_precision else dict(OPENVINO_CONFIG)
        if threads is not None:
            config.update({"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        try:
            source = model if isinstance(model, bytes) else os.fspath(model)
            compiled = core.compile_model(core.read_model(source), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError with long C++ traces
            raise self._load_error(load_error)(e) from e
        return _OpenVinoSession(compiled, model)

    def default_precision(self) -> str:
        """The CPU's inference precision when none is hinted (``bf16`` on CPUs with bfloat16 units)."""
        hint = self._core().get_property("CPU", "INFERENCE_PRECISION_HINT")
        return str(hint.get_type_name())  # an openvino.Type: bf16, f16, f32

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        return {"runtime": self.name, "version": ov.get_version(), "device": "CPU",
                "precision": "f32 (INFERENCE_PRECISION_HINT)"}


for _runtime in (OnnxRuntime(), OnnxRuntimeCuda(), OnnxRuntimeTensorRT(), OpenVinoRuntime()):
    register(_runtime)
