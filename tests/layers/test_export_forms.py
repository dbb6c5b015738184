"""Each layer type declares its export form (``LayerType.export_form``): the module the ONNX export
traces in place of the built one. It must compute the same function with the same call signature."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odespec.layers import ExportContext, LayerContext, LayerUse, ShapeError, registry
from odespec.spec.model import LayerSpec, Location

#: inside dynamics with ``time: concat`` (only layer types that take time get t)
DYN = LayerContext(in_dynamics=True, time_concat=True)
IN_DYN = LayerContext(in_dynamics=True)
#: a top-level layer of a model that reads times and masks, or query times
SERIES = LayerContext(times=True, mask=True)
TIMES = LayerContext(times=True)
QUERY = LayerContext(query=3)
_LOC = Location("test.yaml", 1, 1, "model[0]")


def _entry(kind: str, value: Any, shape: tuple[int, ...], ctx: LayerContext = LayerContext()) -> LayerSpec:
    """The LayerSpec the validator would make (container layers hold their inner layers as LayerSpecs)."""
    ltype = registry.get(kind)
    options = ltype.normalize(value)
    if ltype.children_key:
        children, inner = [], ltype.children_shape(options, shape)
        for k, v in options[ltype.children_key]:
            children.append(_entry(k, v, inner))
            inner = children[-1].out_shape
        options[ltype.children_key] = children
    return LayerSpec(kind, options, _LOC, ltype.output_shape(options, shape, ctx))


def _use(kind: str, value: Any, shape: tuple[int, ...], ctx: LayerContext = LayerContext()) -> LayerUse:
    return LayerUse(_entry(kind, value, shape, ctx), shape, ctx)


def _assert_same_function(use: LayerUse, dtype: torch.dtype, tol: float) -> torch.nn.Module:
    """Build ``use``, take its export form, and compare the two on random inputs and times."""
    torch.manual_seed(0)
    module = use.build().to(dtype).eval()
    _randomise(module)
    form = use.export_form(module, ExportContext(dtype=dtype)).eval()
    with torch.no_grad():
        for batch, t in ((1, 0.0), (3, -0.7), (5, 2.5)):
            x = torch.randn(batch, *use.shape, dtype=dtype)
            tt = torch.tensor(t, dtype=dtype)
            if getattr(module, "reads_series", False):
                series = _series(batch, use, dtype)
                want, got = module(x.clone(), series), form(x.clone(), series)
            else:
                want = module(tt, x.clone()) if use.ctx.time_concat else module(x.clone())
                got = form(tt, x.clone()) if use.ctx.time_concat else form(x.clone())
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    return form


def _series(batch: int, use: LayerUse, dtype: torch.dtype) -> Any:
    """Random series inputs for a layer that reads them: sorted times, a random mask, sorted query times."""
    from odespec.layers.series_modules import Series

    ctx = use.ctx
    times = torch.sort(torch.rand(batch, use.shape[0], dtype=dtype) * 3, dim=1).values if ctx.times else None
    mask = (torch.rand(batch, *use.shape) > 0.3).to(dtype) if ctx.mask else None
    query = torch.sort(torch.rand(batch, ctx.query, dtype=dtype) * 3, dim=1).values if ctx.query else None
    return Series(times, mask, query)


def _randomise(module: torch.nn.Module) -> None:
    """Non-trivial affine parameters and running statistics (the defaults are ones and zeros)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("weight", "bias")) and p.dim() == 1:
                p.copy_(torch.randn_like(p))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


#: one or more uses of every built-in layer type, in every context that changes its form
CASES: list[tuple[str, Any, tuple[int, ...], LayerContext]] = [
    ("linear", 4, (3,), LayerContext()),
    ("linear", {"features": 4, "bias": False}, (2, 3), DYN),
    ("linear", 5, (3,), DYN),
    ("conv1d", {"channels": 3, "kernel": 3, "padding": 1}, (2, 9), DYN),
    ("conv1d", {"channels": 3, "kernel": 2, "stride": 2}, (2, 9), LayerContext()),
    ("conv2d", {"channels": 4, "kernel": 3, "padding": 1, "bias": False}, (3, 6, 5), DYN),
    ("conv2d", {"channels": 4, "kernel": 3, "stride": 2, "dilation": 2, "padding": 2}, (3, 9, 8), DYN),
    ("conv2d", {"channels": 4, "kernel": 3, "groups": 2}, (3, 6, 6), DYN),  # 3 + t channel in 2 groups
    ("conv2d", 4, (3, 6, 6), LayerContext()),
    ("groupnorm", 2, (4, 3, 3), LayerContext()),
    ("groupnorm", {"groups": 3, "affine": False}, (6, 5), IN_DYN),
    ("groupnorm", 1, (4,), LayerContext()),
    ("layernorm", None, (5,), LayerContext()),
    ("batchnorm", None, (4, 3, 3), LayerContext()),
    ("avgpool", "global", (3, 4, 4), LayerContext()),
    ("maxpool", {"kernel": 2}, (3, 4, 4), LayerContext()),
    ("flatten", None, (2, 3, 4), LayerContext()),
    ("reshape", [3, -1], (2, 3, 4), LayerContext()),
    ("power", 3, (2,), LayerContext()),
    ("dropout", 0.1, (7,), LayerContext()),
    ("residual", [("groupnorm", 2), ("relu", None), ("conv2d", {"channels": 4, "padding": 1})], (4, 5, 5),
     LayerContext()),
    ("known_linear", {"matrix": [[-2.0, 1.0], [0.5, -3e3]], "layers": [("linear", 2), ("tanh", None)]}, (2,),
     IN_DYN),
    ("rnn", {"hidden": 5, "reverse": True}, (6, 3), LayerContext()),
    ("gru", {"hidden": 4, "output": "sequence"}, (6, 3), LayerContext()),
    ("rnn", {"hidden": 5, "time_gaps": True}, (6, 3), SERIES),
    ("gru", {"hidden": 4, "time_gaps": True, "reverse": True, "output": "sequence"}, (6, 3), TIMES),
    ("ode_rnn", {"hidden": 4, "dynamics": [("linear", 4), ("tanh", None), ("linear", 4)]}, (5, 2), SERIES),
    ("ode_rnn", {"hidden": 4, "reverse": False, "output": "sequence", "dynamics": [("groupnorm", 2), ("linear", 4)]},
     (5, 2), TIMES),
    ("rnn_decoder", None, (4,), QUERY),
    ("rnn_decoder", {"cell": "rnn", "hidden": 4}, (4,), QUERY),
    ("gaussian", None, (6,), LayerContext()),
    ("relu", None, (3,), LayerContext()),
    ("tanh", None, (3,), LayerContext()),
    ("sigmoid", None, (3,), LayerContext()),
    ("silu", None, (3,), LayerContext()),
    ("gelu", "tanh", (3,), LayerContext()),
    ("softplus", 2.0, (3,), LayerContext()),
    ("elu", 0.5, (3,), LayerContext()),
    ("leaky_relu", 0.2, (3,), LayerContext()),
]


def test_the_cases_cover_every_built_in_layer_type():
    # a new layer type joins CASES, so that its export form is checked against its module
    assert {kind for kind, *_ in CASES} >= set(registry.names()) - set(registry.plugin_names())


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("kind,value,shape,ctx", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_export_form_computes_the_built_modules_function(kind, value, shape, ctx, dtype, tol):
    _assert_same_function(_use(kind, value, shape, ctx), dtype, tol)


@pytest.mark.parametrize(
    "kind,value,shape,ctx,rewritten",
    [
        ("linear", 4, (3,), DYN, True),
        ("linear", 4, (3,), LayerContext(), False),
        ("conv2d", {"channels": 4, "padding": 1}, (3, 5, 5), DYN, True),
        ("conv1d", {"channels": 4}, (3, 5), DYN, True),
        ("conv2d", {"channels": 4}, (3, 5, 5), LayerContext(), False),
        ("conv2d", {"channels": 4, "groups": 2}, (3, 5, 5), DYN, False),
        ("groupnorm", 2, (4, 3, 3), LayerContext(), True),
        ("groupnorm", 2, (4,), IN_DYN, True),
        ("tanh", None, (3,), IN_DYN, False),
        ("residual", [("groupnorm", 2)], (4, 3), LayerContext(), False),
    ],
)
def test_the_declared_rewrites_apply_where_they_are_declared(kind, value, shape, ctx, rewritten):
    use = _use(kind, value, shape, ctx)
    module = use.build()
    form = use.export_form(module, ExportContext(dtype=torch.float32))
    assert (form is not module) == rewritten
    if rewritten:  # the form's graph concatenates no time channel and reads no shape at run time
        names = {type(m).__name__ for m in form.modules()}
        assert not names & {"TimeConcat", "GroupNorm"}


def test_time_concat_forms_take_their_weights_from_the_module_at_export_time():
    use = _use("linear", 2, (3,), DYN)
    module = use.build().double()
    with torch.no_grad():
        module.layer.weight.mul_(-3.0)  # trained weights: the form must see these, not the initial ones
    form = _assert_same_function(use, torch.float64, 1e-12)
    assert form is not module


@settings(max_examples=40, deadline=None)
@given(
    c_in=st.integers(1, 4), c_out=st.integers(1, 4), h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 3),
    s=st.integers(1, 2), p=st.one_of(st.integers(0, 2), st.just("same")), d=st.integers(1, 2),
    dims=st.sampled_from([1, 2]),
)
def test_the_split_time_convolution_matches_for_any_geometry(c_in, c_out, h, w, k, s, p, d, dims):
    if p == "same":
        s, k = 1, 2 * (k // 2) + 1
    shape = (c_in, h, w) if dims == 2 else (c_in, h)
    value = {"channels": c_out, "kernel": k, "stride": s, "padding": p, "dilation": d}
    try:
        use = _use(f"conv{dims}d", value, shape, DYN)
    except ShapeError:  # refused by the shape rule (input too small for the kernel)
        return
    _assert_same_function(use, torch.float64, 1e-12)


def test_layer_uses_copy_and_pickle_with_the_model():
    import odespec
    from odespec.spec import parse_spec

    spec = parse_spec(
        "odespec: 1\nname: u\ninput: {shape: [2]}\nmodel:\n  - linear: 4\n  - relu\n"
        "  - ode:\n      t: [0, 1]\n      dynamics: {time: concat, layers: [linear: 4, tanh]}\n"
    )
    model = odespec.build(spec)
    assert [u.layer.kind if u else None for u in model.uses] == ["linear", "relu", None]
    dyn = model[2].dynamics
    assert [(u.layer.kind, u.shape, u.ctx.time_concat) for u in dyn.uses] == [("linear", (4,), True), ("tanh", (4,), False)]
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert twin.uses == model.uses and twin[2].dynamics.uses == dyn.uses
