"""The GAP fold of the CPU fast path: ``fastpath.conv_mean`` (the mean over positions of a
convolution without its output map) and SmallGAP's logits through it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxadv.models import fastpath, get_model, init_variables, layers
from tests.conftest import most_optimizations_off
from tests.models.test_fastpath import CASES, NHWC, _close, _data


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    with most_optimizations_off():
        yield


def _mean_of_conv(x, w, b, strides, padding, dilation):
    out = lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                   dimension_numbers=NHWC)
    out = jnp.mean(out, axis=(1, 2))
    return out if b is None else out + b


@pytest.mark.parametrize("case", CASES, ids=[f"{c[4]}x{c[5]}-s{c[7]}-{c[8]}-d{c[9]}" for c in CASES])
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_mean_matches_mean_of_convolution(case, with_bias):
    """Values, and gradients wrt input, kernel and bias, for every stride, padding (asymmetric,
    beyond the kernel, unused last rows) and dilation of the fast path's test cases."""
    b, h, w, c, kh, kw, o, strides, padding, dilation = case
    x, k = _data(b, h, w, c, kh, kw, o)
    bias = jax.random.normal(jax.random.key(3), (o,)) if with_bias else None
    probe = jax.random.normal(jax.random.key(4), (b, o))

    def fold(x, k, bias):
        return fastpath.conv_mean(x, k, bias, strides=strides, padding=padding, dilation=dilation)

    def ref(x, k, bias):
        return _mean_of_conv(x, k, bias, strides, padding, dilation)

    _close(fold(x, k, bias), ref(x, k, bias))
    argnums = (0, 1, 2) if with_bias else (0, 1)
    g_fold = jax.grad(lambda *a: jnp.sum(fold(*a) * probe), argnums)(x, k, bias)
    g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * probe), argnums)(x, k, bias)
    for a, r in zip(g_fold, g_ref, strict=True):
        _close(a, r)


def test_conv_mean_second_order():
    """Double backprop (the gradient of an input-gradient norm wrt the kernel) equals the
    standard convolution's."""
    x, k = _data(3, 7, 7, 3, 7, 7, 4)
    bias = jnp.zeros((4,))

    def norm_of_input_grad(f, k):
        g = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x, k, bias))))(x)
        return jnp.sum(g ** 2)

    fold = lambda x, k, b: fastpath.conv_mean(x, k, b, padding="SAME")
    ref = lambda x, k, b: _mean_of_conv(x, k, b, (1, 1), "SAME", (1, 1))
    _close(jax.grad(lambda k: norm_of_input_grad(fold, k))(k),
           jax.grad(lambda k: norm_of_input_grad(ref, k))(k), 1e-4)


def test_conv_mean_bad_input():
    x, k = _data(2, 5, 5, 3, 3, 3, 4)
    with pytest.raises(ValueError, match="kernel"):
        fastpath.conv_mean(x, k[:, :, :2], None)
    with pytest.raises(ValueError, match="does not fit"):
        fastpath.conv_mean(x[:, :2, :2], k, None, padding="VALID")
    with pytest.raises(ValueError, match="padding"):
        fastpath.conv_mean(x, k, None, padding=((1, 1),))


def _smallgap(widths=(4, 6, 8)):
    model = get_model("smallgap", widths=widths)
    variables = jax.jit(lambda key: init_variables(model, key, (1, 28, 28, 1)))(jax.random.key(0))
    return model, variables


def _shapes_in_jaxpr(fn, *args) -> set[tuple[int, ...]]:
    shapes = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def test_smallgap_logits_take_the_fold_and_match():
    """With the fast path on, SmallGAP's logits never build the 7x7xO map of its last layer (its
    output feeds the GAP head directly) and equal the standard lowering's, as do the input and
    parameter gradients; features and CAM still give the map, and mean(CAM) == logits."""
    model, variables = _smallgap()
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    y = jnp.arange(5) % 10

    def loss(v, x):
        return jnp.sum(jax.nn.log_softmax(model.apply(v, x))[jnp.arange(5), y])

    results = {}
    for on in (True, False):
        with fastpath.enabled(on):
            assert layers.conv_mean_available(model.bind(variables).conv3) is on
            results[on] = (jax.jit(model.apply)(variables, x),
                           jax.jit(jax.grad(loss, (0, 1)))(variables, x))
            shapes = _shapes_in_jaxpr(lambda x: model.apply(variables, x), x)
            assert ((5, 7, 7, 8) in shapes) is not on
    _close(results[True][0], results[False][0], 1e-5)
    jax.tree.map(lambda a, b: _close(a, b, 1e-5), results[True][1], results[False][1])
    with fastpath.enabled(True):
        feats = model.apply(variables, x, method="features")
        cam = model.apply(variables, feats, method="cam")
    assert feats.shape == (5, 7, 7, 8)
    _close(jnp.mean(cam, axis=(1, 2)), results[True][0], 1e-5)


def test_smallgap_initialises_the_same_with_the_fold():
    """Initialisation goes through the convolution (conv_mean needs existing parameters), so
    the parameter tree and values do not depend on the fast path."""
    model = get_model("smallgap", widths=(4, 6, 8))
    trees = {}
    for on in (True, False):
        with fastpath.enabled(on):
            trees[on] = init_variables(model, jax.random.key(0), (1, 28, 28, 1))
    assert jax.tree.structure(trees[True]) == jax.tree.structure(trees[False])
    jax.tree.map(np.testing.assert_array_equal, trees[True], trees[False])
