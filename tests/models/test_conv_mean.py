"""The GAP fold of the CPU fast path: ``fastpath.conv_mean`` (the mean over positions of a
convolution without its output map) and SmallGAP's logits through it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend.core import jaxprs_in_params

from jaxadv.models import fastpath, get_model, init_variables, layers
from tests.conftest import most_optimizations_off
from tests.models.test_fastpath import CASES, NHWC, _close, _data


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    with most_optimizations_off():
        yield


@pytest.fixture
def fold_always(monkeypatch):
    """The fold whatever the batch (the suite runs on 8 host devices, where its rule needs 512
    examples; ``test_fold_rule`` checks the rule)."""
    monkeypatch.setattr(fastpath, "_fold_pay", lambda batch: True)


@pytest.mark.parametrize("batch,devices,expected", [
    (5, 1, True), (128, 2, True), (127, 2, False), (128, 8, False), (512, 8, True)])
def test_fold_rule(monkeypatch, batch, devices, expected):
    """At least 64 examples per device where the batch may be split (XLA:CPU rounds matmuls of
    <= 32 rows differently, so smaller per-device batches would make the mesh step differ from
    the single-device one); any batch on one device."""
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    assert fastpath._fold_pay(batch) is expected


def test_fold_is_batch_invariant_where_used():
    """SmallGAP's logits and input gradients of an example do not depend on the batch it is in,
    for batches of 64 and more (the rule's threshold; float32, exact equality)."""
    model, variables = _smallgap(widths=(16, 32, 100))
    x = jax.random.uniform(jax.random.key(1), (256, 28, 28, 1))

    def grads(x):
        return jax.grad(lambda z: jnp.sum(jax.nn.log_softmax(model.apply(variables, z))[:, 0]))(x)

    with fastpath.enabled(True):
        logits, g = jax.jit(model.apply)(variables, x), jax.jit(grads)(x)
        for n in (64, 100):
            np.testing.assert_array_equal(jax.jit(model.apply)(variables, x[:n]), logits[:n])
            np.testing.assert_array_equal(jax.jit(grads)(x[:n]), g[:n])


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


def _count_primitives(fn, *args) -> dict:
    counts = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] = counts.get(eqn.primitive.name, 0) + 1
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return counts


@pytest.mark.parametrize("case", CASES, ids=[f"{c[4]}x{c[5]}-s{c[7]}-{c[8]}-d{c[9]}" for c in CASES])
def test_window_sums_forms_agree_and_forward_mode_works(case):
    """The add chain (the value) equals the slice-and-reduce form (the tangent) at every tap,
    for every stride, padding and dilation of the cases, and with the windows past the chain's
    limit (the reduce form then gives the value); forward-mode derivatives of the fold (jvp, its
    tangent rule) equal the standard convolution's."""
    b, h, w, c, kh, kw, o, strides, padding, dilation = case
    x, k = _data(b, h, w, c, kh, kw, o)
    dilated = [(n - 1) * d + 1 for n, d in zip((kh, kw), dilation, strict=True)]
    pads = fastpath._pairs(padding, x.shape[1:3], dilated, strides)
    out_hw = [(n + lo + hi - kk) // st + 1 for n, (lo, hi), kk, st
              in zip(x.shape[1:3], pads, dilated, strides, strict=True)]
    for axis in (1, 2):
        args = (axis, (kh, kw)[axis - 1], strides[axis - 1], dilation[axis - 1],
                pads[axis - 1][0], out_hw[axis - 1])
        _close(fastpath._window_sums(x, *args), fastpath._window_sums_by_reduce(x, *args), 1e-6)
    tangent = jax.random.normal(jax.random.key(5), x.shape)
    fold = lambda x: fastpath.conv_mean(x, k, None, strides=strides, padding=padding,
                                        dilation=dilation)
    ref = lambda x: _mean_of_conv(x, k, None, strides, padding, dilation)
    for f_out, r_out in zip(jax.jvp(fold, (x,), (tangent,)), jax.jvp(ref, (x,), (tangent,)),
                            strict=True):
        _close(f_out, r_out)


def test_window_sums_past_the_chain_limit_reduce(monkeypatch):
    x, k = _data(2, 7, 7, 3, 7, 7, 2)
    chained = fastpath.conv_mean(x, k, None)
    monkeypatch.setattr(fastpath, "_WINDOW_ADDS_MAX_ROWS", 2)
    assert "reduce_sum" in _count_primitives(lambda x: fastpath.conv_mean(x, k, None), x)
    _close(fastpath.conv_mean(x, k, None), chained, 1e-6)


def test_fold_sums_with_adds_and_differentiates_through_reduces():
    """SmallGAP's fold (7x7 kernel on its 7x7 map): the value's window sums are add chains, no
    reduce (XLA:CPU hands each reduce to YNNPACK as a fusion of its own: 1.5x slower forward
    pass); the input gradient is the reduce form's transpose, one pad per tap (14), not the add
    chain's one per position (about 80)."""
    x, k = _data(4, 7, 7, 3, 7, 7, 2)
    fold = lambda x: fastpath.conv_mean(x, k, None, padding="SAME")
    assert "reduce_sum" not in _count_primitives(fold, x)
    pads = _count_primitives(jax.grad(lambda x: jnp.sum(fold(x) ** 2)), x).get("pad", 0)
    assert 0 < pads <= 2 * 7


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
            for sub in jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def test_smallgap_logits_take_the_fold_and_match(fold_always):
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
            assert layers.conv_mean_available(model.bind(variables).conv3, 5) is on
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


def test_smallgap_initialises_the_same_with_the_fold(fold_always):
    """Initialisation goes through the convolution (conv_mean needs existing parameters), so
    the parameter tree and values do not depend on the fast path."""
    model = get_model("smallgap", widths=(4, 6, 8))
    trees = {}
    for on in (True, False):
        with fastpath.enabled(on):
            trees[on] = init_variables(model, jax.random.key(0), (1, 28, 28, 1))
    assert jax.tree.structure(trees[True]) == jax.tree.structure(trees[False])
    jax.tree.map(np.testing.assert_array_equal, trees[True], trees[False])


def test_smallgap_cam_takes_the_composed_kernel_and_matches(fold_always):
    """``logits_and_cam`` with the fast path on composes the last convolution with the head (a
    7x7 convolution to K = 10 channels, no 7x7xO map) and equals the feature-map route (fast path
    off), values and gradients wrt parameters and input (double backprop included, as Int/Int2
    training needs); mean(CAM) == logits."""
    model, variables = _smallgap()
    x = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    probe = jax.random.normal(jax.random.key(2), (5, 7, 7, 10))

    def loss(v, x):
        logits, cam = model.apply(v, x, method="logits_and_cam")
        return jnp.sum(cam * probe) + jnp.sum(jnp.tanh(logits))

    def input_grad_norm(v):
        return jnp.sum(jax.grad(loss, 1)(v, x) ** 2)

    results = {}
    for on in (True, False):
        with fastpath.enabled(on):
            results[on] = (jax.jit(lambda v, x: model.apply(v, x, method="logits_and_cam"))(
                variables, x), jax.jit(jax.grad(loss, (0, 1)))(variables, x),
                jax.jit(jax.grad(input_grad_norm))(variables))
            shapes = _shapes_in_jaxpr(lambda x: model.apply(variables, x,
                                                            method="logits_and_cam"), x)
            assert ((5, 7, 7, 8) in shapes) is not on
    (logits, cam), _, _ = results[True]
    assert cam.shape == (5, 7, 7, 10)
    _close(jnp.mean(cam, axis=(1, 2)), logits, 1e-5)
    jax.tree.map(lambda a, b: _close(a, b, 1e-4), results[True], results[False])


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_then_dense_matches_dense_of_conv(use_bias):
    """The composed kernel and bias equal applying the convolution then the dense map per
    position, for a strided, asymmetrically padded layer with and without a convolution bias."""
    import flax.linen as nn

    class Net(nn.Module):
        def setup(self):
            self.conv = layers.conv(6, 3, strides=2, padding=((1, 0), (0, 2)), use_bias=use_bias)
            self.dense = nn.Dense(4)

        def __call__(self, x):
            return self.dense(self.conv(x))

        def folded(self, x):
            return layers.conv_then_dense(self.conv, x, self.dense)

    net = Net()
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
    v = net.init(jax.random.key(1), x)
    _close(net.apply(v, x, method="folded"), net.apply(v, x))
