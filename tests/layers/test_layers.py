"""Each layer's shape rule and parameter count must agree with the torch module it builds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from odespec.layers import LayerContext, LayerType, ShapeError, registry
from odespec.layers.base import LayerContext as Ctx


def _check(kind: str, value, shape, ctx: LayerContext = Ctx()) -> None:
    ltype = registry.get(kind)
    options = ltype.normalize(value)
    try:
        out = ltype.output_shape(options, tuple(shape), ctx)
    except ShapeError:
        return  # refused by the rule: nothing to compare (refusals are tested separately)
    n = ltype.num_params(options, tuple(shape), ctx)
    module = ltype.build(options, tuple(shape), ctx)
    x = torch.randn(2, *shape)
    y = module(torch.tensor(0.3), x) if ctx.time_concat and ltype.takes_time else module(x)
    assert tuple(y.shape[1:]) == out, (kind, value, shape)
    assert sum(p.numel() for p in module.parameters()) == n, (kind, value, shape)


small = st.integers(1, 6)


@settings(max_examples=60, deadline=None)
@given(
    c_in=small, c_out=small, h=st.integers(1, 12), w=st.integers(1, 12), k=st.integers(1, 4),
    s=st.integers(1, 3), p=st.one_of(st.integers(0, 2), st.just("same")), d=st.integers(1, 2),
    g=st.sampled_from([1, 2]), bias=st.booleans(), tc=st.booleans(),
)
def test_conv2d_shape_and_params_match_torch(c_in, c_out, h, w, k, s, p, d, g, bias, tc):
    value = {"channels": c_out * g, "kernel": k, "stride": s, "padding": p, "dilation": d, "groups": g, "bias": bias}
    _check("conv2d", value, (c_in * g - (1 if tc else 0) or g, h, w), Ctx(in_dynamics=tc, time_concat=tc))


@settings(max_examples=40, deadline=None)
@given(c=small, length=st.integers(1, 20), k=st.integers(1, 5), s=st.integers(1, 3), p=st.integers(0, 2))
def test_conv1d_shape_and_params_match_torch(c, length, k, s, p):
    _check("conv1d", {"channels": 3, "kernel": k, "stride": s, "padding": p}, (c, length))


@settings(max_examples=40, deadline=None)
@given(dims=st.lists(st.integers(1, 6), min_size=1, max_size=3), f=st.integers(1, 8), bias=st.booleans(), tc=st.booleans())
def test_linear_shape_and_params_match_torch(dims, f, bias, tc):
    _check("linear", {"features": f, "bias": bias}, tuple(dims), Ctx(in_dynamics=tc, time_concat=tc))


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(["avgpool", "maxpool"]), c=small, h=st.integers(1, 10), w=st.integers(1, 10),
       k=st.integers(1, 4), glob=st.booleans(), rank=st.sampled_from([2, 3]))
def test_pooling_shape_matches_torch(mode, c, h, w, k, glob, rank):
    shape = (c, h, w) if rank == 3 else (c, h)
    _check(mode, "global" if glob else {"kernel": k}, shape)


@pytest.mark.parametrize(
    "kind,value,shape",
    [
        ("groupnorm", 2, (4, 3, 3)),
        ("layernorm", None, (5,)),
        ("batchnorm", None, (4, 3, 3)),
        ("batchnorm", None, (4,)),
        ("flatten", None, (2, 3, 4)),
        ("reshape", [3, -1], (2, 3, 4)),
        ("power", 3, (2,)),
        ("dropout", 0.1, (7,)),
        ("relu", None, (3,)),
        ("tanh", None, (3,)),
        ("sigmoid", None, (3,)),
        ("silu", None, (3,)),
        ("gelu", "tanh", (3,)),
        ("softplus", 2.0, (3,)),
        ("elu", 0.5, (3,)),
        ("leaky_relu", 0.2, (3,)),
    ],
)
def test_other_layers_match_torch(kind, value, shape):
    _check(kind, value, shape)


@pytest.mark.parametrize(
    "kind,value,shape,fragment",
    [
        ("groupnorm", 3, (4, 2, 2), "cannot be split into 3 groups"),
        ("conv2d", 8, (3, 28), "rank 3"),
        ("conv2d", {"channels": 8, "kernel": 5}, (1, 3, 3), "too small"),
        ("conv2d", {"channels": 8, "stride": 2, "padding": "same"}, (1, 8, 8), "stride 1"),
        ("reshape", [5, 5], (2, 3, 4), "cannot reshape"),
        ("avgpool", {"kernel": 4}, (1, 2, 2), "smaller than the pooling window"),
    ],
)
def test_shape_rules_refuse_with_a_reason(kind, value, shape, fragment):
    ltype = registry.get(kind)
    with pytest.raises(ShapeError, match=fragment):
        ltype.output_shape(ltype.normalize(value), shape, Ctx())


def test_registry_refuses_duplicates_and_suggests_names():
    class Linear2(LayerType):
        name = "linear"
        description = "dup"

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Linear2)
    with pytest.raises(registry.UnknownLayerError) as e:
        registry.get("linaer")
    assert e.value.suggestion == "linear"


def test_every_layer_documents_its_options():
    for t in registry.all_types():
        assert t.description
        for name, prop in t.properties.items():
            assert prop.get("description"), (t.name, name)
            # an option without a default says in words what happens when it is left out
            assert name in t.required or "default" in prop or "default" in prop["description"].lower(), (t.name, name)
            assert prop.get("default", "given") is not None, (t.name, name)  # editors would insert `null`


def test_layers_import_no_torch():
    import subprocess
    import sys

    code = "import sys, odespec.layers as L; L.names(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the rnn layer's written-out CPU loop (issue #6) against torch.nn.RNN ---------------------------


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("output", ["last", "sequence"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_loop_matches_torch_rnn_values_and_gradients(reverse, output, bias):
    torch.manual_seed(0)
    ltype = registry.get("rnn")
    options = ltype.normalize({"hidden": 5, "reverse": reverse, "output": output, "bias": bias})
    enc = ltype.build(options, (7, 3), Ctx()).double()
    # the parameters are nn.RNN's, under its state-dict keys (checkpoints and exports rely on them)
    assert set(enc.state_dict()) == {f"rnn.{k}" for k in enc.rnn.state_dict()}
    x = torch.randn(4, 7, 3, dtype=torch.float64, requires_grad=True)
    params = [x, *enc.parameters()]
    out, _ = enc.rnn(x.flip(1) if reverse else x)
    want = out if output == "sequence" else out[:, -1]
    got = enc(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad((got * g).sum(), params), torch.autograd.grad((want * g).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    small = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, *p: enc(v), (small, *enc.parameters()))


def test_rnn_loop_float32_is_as_close_to_float64_as_torch_rnn():
    # tanh(a) = 2 sigmoid(2a) - 1 in the loop: its float32 rounding stays at nn.RNN's level
    torch.manual_seed(1)
    enc = registry.get("rnn").build({"hidden": 25, "reverse": True, "output": "last", "bias": True}, (100, 2), Ctx())
    x = torch.randn(300, 100, 2)
    with torch.no_grad():
        exact = enc.double()(x.double())
        enc.float()
        ours = (enc(x).double() - exact).abs().max().item()
        theirs = (enc.rnn(x.flip(1))[0][:, -1].double() - exact).abs().max().item()
    assert ours < 1e-6 and ours < 4 * max(theirs, 1e-7)
    # one step and no gradient
    with torch.no_grad():
        one = torch.randn(3, 1, 2)
        torch.testing.assert_close(enc(one), enc.rnn(one)[0][:, -1])
