"""The CPU fast path computes what the standard lowerings compute: outputs, input and kernel
gradients, second-order derivatives (double backprop, forward-over-reverse) and max-pool gradient
routing on ties, on odd sizes, strides 1/2, SAME/VALID/explicit padding, 1x1/3x3/4x4 kernels, and
batches that do not divide the device count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxadv import sharding
from jaxadv.models import fastpath, get_model, init_variables
from tests.conftest import most_optimizations_off

NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True, scope="module")
def fast_compile():
    with most_optimizations_off():
        yield


@pytest.fixture
def force_columns(monkeypatch):
    """Route every supported convolution through the per-column kernel gradient (on small test
    sizes the size rule would otherwise keep XLA's)."""
    monkeypatch.setattr(fastpath, "_kernel_grad_method", lambda *a: "columns")
    with fastpath.enabled(True):
        yield


@pytest.fixture(params=["columns", "taps", "xla", "rows", "patches", "taps_forward", "winograd"])
def kernel_grad(request, monkeypatch):
    """The fast path with each kernel gradient (per kernel column, per tap, or XLA's); the input
    gradient is the fast path's explicit-HWIO form in all. ``"rows"``: every stride-1 convolution
    as one matmul per output row (:func:`fastpath._rows_conv`: forward, input and kernel
    gradients), whatever it costs and however many devices; XLA's kernel gradient elsewhere.
    ``"patches"``: every convolution as im2col (:func:`fastpath._patches_conv`), whatever its
    channels. ``"taps_forward"``: every forward pass as the sum over kernel taps
    (:func:`fastpath._taps_conv`), whatever its channels; elsewhere the rule's own choice for
    one-channel forward passes (:func:`fastpath._taps_pay`). ``"winograd"``: the forward pass,
    input gradient and kernel gradient of every 3x3 stride-1 convolution by Winograd's
    F(2x2, 3x3) (:func:`fastpath._winograd_conv`), whatever its size and channels, in chunks of
    two images (batches of three or more go through the chunk loop, odd ones padded)."""
    monkeypatch.setattr(fastpath, "_rows_pay", lambda *a: False)
    monkeypatch.setattr(fastpath, "_patches_pay", lambda *a: request.param == "patches")
    if request.param == "taps_forward":
        monkeypatch.setattr(fastpath, "_taps_pay", lambda channels, out, op: op == "forward")
    monkeypatch.setattr(fastpath, "_kernel_grad_method", lambda *a: request.param
                        if request.param in ("columns", "taps") else "xla")
    monkeypatch.setattr(fastpath, "_winograd_pay", _winograd_everywhere
                        if request.param == "winograd" else lambda *a, **k: False)
    monkeypatch.setattr(fastpath, "_winograd_chunks", _two_images_per_chunk)
    if request.param == "rows":
        monkeypatch.setattr(fastpath, "_rows_pay",
                            lambda *a: fastpath._rows_flop_ratio(*a) < float("inf"))
    with fastpath.enabled(True):
        yield request.param


def _winograd_everywhere(in_hw, w_shape, strides, pads, dilation, op, *, ynnpack=None):
    return fastpath._winograd_applies(w_shape, strides, pads, dilation)


def _two_images_per_chunk(batch, tiles, channels, itemsize):
    return (1, batch) if batch <= 2 else (-(-batch // 2), 2)


def _std(x, w, strides, padding, dilation=(1, 1)):
    return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                    dimension_numbers=NHWC)


def _fast(x, w, strides, padding, dilation=(1, 1)):
    return fastpath.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                         dimension_numbers=NHWC)


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


def _data(b, h, w, c, kh, kw, o, seed=0):
    kx, kk = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (b, h, w, c)),
            jax.random.normal(kk, (kh, kw, c, o)) / np.sqrt(kh * kw * c))


CASES = [  # (B, H, W, C, kh, kw, O, strides, padding, dilation)
    (3, 9, 7, 2, 3, 3, 4, (1, 1), "SAME", (1, 1)),
    (3, 9, 7, 2, 3, 3, 4, (2, 2), "SAME", (1, 1)),
    (2, 9, 7, 3, 3, 3, 5, (2, 1), "VALID", (1, 1)),
    (2, 10, 11, 3, 3, 3, 2, (1, 2), ((2, 0), (1, 3)), (1, 1)),
    (2, 8, 8, 1, 4, 4, 3, (2, 2), "SAME", (1, 1)),  # SmallGAP's first layer, asymmetric pads
    (5, 7, 7, 3, 7, 7, 2, (1, 1), "SAME", (1, 1)),  # SmallGAP's last layer
    (2, 9, 9, 3, 3, 3, 4, (1, 1), "SAME", (2, 2)),
    (3, 9, 7, 4, 1, 1, 5, (1, 1), "VALID", (1, 1)),
    (3, 9, 7, 4, 1, 1, 5, (2, 2), "SAME", (1, 1)),  # ResNet's strided shortcut
    (2, 6, 6, 2, 1, 1, 3, (1, 1), ((1, 0), (0, 1)), (1, 1)),
    (2, 10, 9, 2, 3, 3, 3, (2, 2), "VALID", (1, 1)),  # last row and column unused
    (2, 9, 9, 2, 3, 3, 3, (1, 1), ((4, 0), (0, 3)), (1, 1)),  # padding beyond the kernel
    (2, 5, 6, 3, 3, 3, 4, (1, 1), "VALID", (1, 1)),  # Winograd: odd output rows, no padding
    (2, 7, 5, 2, 3, 3, 3, (1, 1), ((0, 2), (2, 1)), (1, 1)),  # Winograd: uneven padding
    (3, 1, 2, 2, 3, 3, 2, (1, 1), "SAME", (1, 1)),  # Winograd: one tile, mostly padding
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[4]}x{c[5]}-s{c[7]}-{c[8]}-d{c[9]}" for c in CASES])
def test_conv_matches_standard(case, kernel_grad):
    b, h, w, c, kh, kw, o, strides, padding, dilation = case
    x, k = _data(b, h, w, c, kh, kw, o)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, strides, padding, dilation)))

    def outputs(conv):
        return jax.jit(lambda x, k: (conv(x, k, strides, padding, dilation),
                                     *jax.grad(loss(conv), (0, 1))(x, k)))(x, k)

    for a, b in zip(outputs(_fast), outputs(_std), strict=True):  # output, d input, d kernel
        _close(a, b)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_second_order_matches_standard(strides, kernel_grad):
    x, k = _data(2, 9, 8, 2, 3, 3, 3, seed=1)

    def input_grad_penalty(conv):  # Int/Int2-style: a loss of the input gradient, w.r.t. weights
        f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, strides, "SAME")) ** 2)
        return lambda k: jnp.sum(jax.grad(f)(x, k) ** 2)

    # and forward mode (jvp), forward-over-reverse (Hessian-vector products)
    f = lambda conv: (lambda k: jnp.sum(jnp.tanh(conv(x, k, strides, "SAME")) ** 2))

    def outputs(conv):
        return jax.jit(lambda k: (jax.grad(input_grad_penalty(conv))(k),
                                  jax.jvp(f(conv), (k,), (k,))[1],
                                  jax.jvp(jax.grad(f(conv)), (k,), (jnp.cos(k),))[1]))(k)

    for a, b in zip(outputs(_fast), outputs(_std), strict=True):
        _close(a, b, 1e-4)


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_higher_orders_in_the_input_match_standard(strides, kernel_grad):
    """What IG-Norm's inner attack and attacks on gradient maps differentiate: the gradient, in
    the input, of a function of the input gradient (reverse over reverse), a third derivative, and
    the weights' gradient of that (the training step's double backprop)."""
    x, k = _data(2, 9, 8, 2, 3, 3, 3, seed=2)

    def outputs(conv):
        f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, strides, "SAME")) ** 2)
        g_norm = lambda x, k: jnp.sum(jnp.abs(jax.grad(f)(x, k)))
        third = lambda x, k: jnp.sum(jax.grad(lambda x: jnp.sum(jax.grad(f)(x, k) ** 2))(x) ** 2)
        return jax.jit(lambda x, k: (jax.grad(g_norm)(x, k), jax.grad(third)(x, k),
                                     jax.grad(lambda k: jnp.sum(jax.grad(g_norm)(x, k) ** 2))(k),
                                     jax.hessian(lambda x: f(x, k))(x[:1, :3, :3])))(x, k)

    for a, b in zip(outputs(_fast), outputs(_std), strict=True):
        _close(a, b, 1e-4)


def test_vmap_linearize_and_remat_match_standard(kernel_grad):
    """vmap over an extra leading axis of the input (IG's path points, folded into the batch) and
    over the kernel (ensembles of weights: the standard lowering), in either order with grad;
    linearize and checkpoint (remat) go through the same rules."""
    x, k = _data(2, 8, 8, 2, 3, 3, 3, seed=3)
    xs = jnp.stack([x, 0.5 * x, -x])
    ks = jnp.stack([k, 2 * k, -k])

    def outputs(conv):
        f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (2, 2), "SAME")) ** 2)
        gx = jax.grad(f)
        lin_out, lin_fn = jax.linearize(lambda x: conv(x, k, (1, 1), "SAME"), x)
        return jax.jit(lambda xs, ks: (
            jax.vmap(gx, (0, None))(xs, k), jax.grad(lambda xs: jnp.sum(
                jax.vmap(gx, (0, None))(xs, k) ** 2))(xs),
            jax.vmap(gx, (None, 0))(x, ks), jax.vmap(gx, (1, None))(jnp.moveaxis(xs, 0, 1), k),
            jax.vmap(jax.grad(lambda k: jnp.sum(gx(x, k) ** 2)))(ks),
            jax.grad(lambda x: jnp.sum(jax.checkpoint(gx)(x, k) ** 2))(x),
            lin_out, lin_fn(xs[1])))(xs, ks)

    for a, b in zip(outputs(_fast), outputs(_std), strict=True):
        _close(a, b, 1e-4)


def test_input_gradient_in_a_loop_uses_an_hwio_kernel():
    """Inside a while loop (attack loops) XLA:CPU keeps JAX's swapped-dimension (``01oi``) kernel
    for the input-gradient convolution and runs it ~2.5x slower; the fast path's explicit HWIO
    kernel avoids that form."""
    x, k = _data(4, 12, 12, 3, 4, 4, 8)

    def compiled_text(conv, order):
        g = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, k, (2, 2), "SAME"))))
        if order == 2:  # IG-Norm's inner attack: the gradient of a norm of input gradients
            g = jax.grad(lambda z, g=g: jnp.sum(jnp.abs(g(z))))
        loop = jax.jit(lambda z: lax.fori_loop(0, 3, lambda i, z: z + 0.1 * g(z), z))
        return loop.lower(x).compile().as_text()

    for order in (1, 2):
        with fastpath.enabled(True):
            assert "01oi" not in compiled_text(_fast, order)
        assert "01oi" in compiled_text(_std, order)  # what the test guards against


def test_changing_the_setting_retraces_functions_traced_before():
    """JAX caches traces by function: without clearing them, jitting a function again after
    ``enabled(...)`` changed would reuse the old trace (this made the step benchmark time the
    standard lowering of the functions it had first traced for XLA's FLOP count)."""
    x, k = _data(4, 12, 12, 3, 4, 4, 8)
    g = jax.grad(lambda z: jnp.sum(jnp.tanh(_fast(z, k, (2, 2), "SAME"))))

    def loop(z):
        return lax.fori_loop(0, 3, lambda i, z: z + 0.1 * g(z), z)

    with fastpath.enabled(False):
        assert "01oi" in jax.jit(loop).lower(x).compile().as_text()
    with fastpath.enabled(True):
        assert "01oi" not in jax.jit(loop).lower(x).compile().as_text()
        jitted = jax.jit(loop)
        jitted(x)
    with fastpath.enabled(False):  # the same jitted object retraces too
        assert "01oi" in jitted.lower(x).compile().as_text()


@pytest.mark.parametrize("x_shape,w_shape,strides,devices,expected", [
    ((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 1, "columns"),  # results/kernel_grad.json: 1.24x
    ((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 2, "columns"),  # ResNet-18 train step 1.07x
    ((128, 32, 32, 64), (3, 3, 64, 64), (1, 1), 8, "xla"),  # 16 per device: train step 0.66x
    ((128, 32, 32, 3), (3, 3, 3, 64), (1, 1), 1, "xla"),  # 3 input channels
    ((128, 28, 28, 1), (5, 5, 1, 32), (1, 1), 2, "xla"),  # PoolGAP on 2 devices: 0.76x
    ((128, 14, 14, 32), (5, 5, 32, 64), (1, 1), 1, "xla"),  # 5x5 kernels
    ((128, 7, 7, 32), (7, 7, 32, 100), (1, 1), 1, "xla"),  # SmallGAP's 7x7 on 7x7: 0.66x
    ((128, 16, 16, 128), (3, 3, 128, 256), (2, 2), 1, "xla"),  # 8x8 outputs: too few rows
])
def test_kernel_gradient_rule(monkeypatch, x_shape, w_shape, strides, devices, expected):
    """The per-column kernel gradient only where it measured faster than XLA's (see
    _kernel_grad_method): the batch counts as split over every device, and only against
    YNNPACK's convolutions (Eigen's kernel gradients beat it: results/kernel_grad_eigen_1dev.json,
    kernel_grad_train_steps_eigen_1dev.json)."""
    monkeypatch.setattr(jax, "device_count", lambda *a, **k: devices)
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: True)
    assert fastpath._kernel_grad_method(x_shape, w_shape, strides) == expected
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: False)
    assert fastpath._kernel_grad_method(x_shape, w_shape, strides) == "xla"


@pytest.mark.parametrize("in_hw,k_hw,strides,pads,devices,expected", [
    ((7, 7), (7, 7), (1, 1), ((3, 3), (3, 3)), 1, True),  # SmallGAP's last layer: 0.755
    ((7, 7), (7, 7), (1, 1), ((3, 3), (3, 3)), 2, False),  # one core per device: no gain
    ((8, 8), (7, 7), (1, 1), ((3, 3), (3, 3)), 1, False),  # SmallGAP on 32x32: 0.90
    ((7, 7), (7, 7), (2, 2), ((3, 3), (3, 3)), 1, False),  # strided
    ((4, 4), (3, 3), (1, 1), ((1, 1), (1, 1)), 1, False),  # 3x3 on 4x4: 1.11
    ((14, 14), (5, 5), (1, 1), ((2, 2), (2, 2)), 1, False),  # PoolGAP's second layer
])
def test_rows_rule(monkeypatch, in_hw, k_hw, strides, pads, devices, expected):
    """The row-matmul convolution only where it needs at most 0.8 of the convolution's
    multiply-adds and each host device has two cores or more (see fastpath._rows_pay)."""
    monkeypatch.setattr(jax, "local_device_count", lambda *a, **k: devices)
    monkeypatch.setattr(fastpath.os, "cpu_count", lambda: 2)
    assert fastpath._rows_pay(in_hw, k_hw, strides, pads, (1, 1)) is expected
    ratio = fastpath._rows_flop_ratio((7, 7), (7, 7), (1, 1), ((3, 3), (3, 3)), (1, 1))
    assert ratio == pytest.approx(37 * 7 / (7 * 49))


@pytest.mark.parametrize("channels,op,expected", [
    (1, "input", True), (3, "input", True), (4, "input", True), (16, "input", False),
    (1, "forward", False), (3, "forward", True), (32, "forward", False),
    (1, "kernel", False), (3, "kernel", True), (64, "kernel", False),
])
def test_patches_rule(channels, op, expected):
    """im2col for images of at most 4 channels: the input gradient always, the forward pass and
    kernel gradient from 2 channels on (results/conv_forms.json; one-channel forward passes take
    the sum over taps, which :func:`fastpath._matmul_form` checks first)."""
    assert fastpath._patches_pay(channels, op) is expected


@pytest.mark.parametrize("channels,out,op,ynnpack,expected", [
    (1, 32, "forward", False, True), (1, 16, "forward", False, True),
    (1, 16, "forward", True, True), (1, 17, "forward", True, False),  # YNNPACK's own layer
    (1, 32, "input", False, False), (1, 32, "kernel", False, False),
    (2, 32, "forward", False, False), (3, 64, "forward", False, False),
    (32, 64, "forward", False, False),
])
def test_taps_rule(monkeypatch, channels, out, op, ynnpack, expected):
    """The sum over taps for the forward pass of one-channel images, except where YNNPACK runs
    the convolution (results/step_speed_taps_1dev.json, step_speed_taps_2dev.json); the
    process's library by default."""
    assert fastpath._taps_pay(channels, out, op, ynnpack=ynnpack) is expected
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: ynnpack)
    assert fastpath._taps_pay(channels, out, op) is expected


@pytest.mark.parametrize("in_hw,w_shape,strides,pads,op,ynnpack,expected", [
    ((8, 8), (3, 3, 256, 256), (1, 1), ((1, 1), (1, 1)), "forward", False, True),  # stage 3
    ((4, 4), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), "input", False, True),  # stage 4
    ((4, 4), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), "kernel", False, True),
    ((4, 4), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), "forward", True, False),  # YNNPACK
    ((16, 16), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "forward", False, True),  # stage 2
    ((16, 16), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "kernel", False, True),
    ((32, 32), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "input", False, True),  # stage 1
    ((32, 32), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "kernel", False, False),  # 0.9x
    ((56, 56), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "forward", False, True),  # 1.4x
    ((112, 112), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), "forward", False, False),  # 0.9x
    ((8, 8), (3, 3, 64, 256), (1, 1), ((1, 1), (1, 1)), "forward", False, True),
    ((8, 8), (3, 3, 64, 256), (1, 1), ((1, 1), (1, 1)), "kernel", False, False),  # channels
    ((26, 26), (3, 3, 32, 64), (1, 1), ((0, 0), (0, 0)), "forward", False, False),  # 0.8x
    ((8, 8), (3, 3, 256, 256), (2, 2), ((0, 1), (0, 1)), "forward", False, False),  # strided
    ((8, 8), (5, 5, 256, 256), (1, 1), ((2, 2), (2, 2)), "forward", False, False),  # 5x5
    ((8, 8), (3, 3, 256, 256), (1, 1), ((3, 0), (1, 1)), "forward", False, False),  # pad 3
])
def test_winograd_rule(monkeypatch, in_hw, w_shape, strides, pads, op, ynnpack, expected):
    """Winograd's F(2x2, 3x3) for the forward pass and input gradient of 3x3 stride-1 layers
    with at least 64 channels in and out whose one image's transformed tiles fit a chunk, for
    the kernel gradient of those with at most 16x16 outputs and at least 128 channels, where
    Eigen runs the convolutions (results/conv_forms_winograd_chunked_1dev.json)."""
    assert fastpath._winograd_pay(in_hw, w_shape, strides, pads, (1, 1), op,
                                  ynnpack=ynnpack) is expected
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: ynnpack)
    assert fastpath._winograd_pay(in_hw, w_shape, strides, pads, (1, 1), op) is expected


@pytest.mark.parametrize("batch,tiles,channels,itemsize,expected", [
    (128, 256, 64, 4, (16, 8)),  # 32x32x64: 1 MiB of tiles per image, 8 per chunk
    (128, 64, 128, 4, (8, 16)), (128, 4, 512, 4, (2, 64)),
    (100, 256, 64, 4, (13, 8)),  # 13 chunks of 8, the last padded with 4 zero images
    (128, 256, 64, 8, (32, 4)),  # float64: half the images
    (3, 4096, 64, 4, (3, 1)),  # one image over the budget: one per chunk
    (5, 1, 8, 4, (1, 5)),
])
def test_winograd_chunks(batch, tiles, channels, itemsize, expected):
    """Chunks of images whose transformed tiles take about 8 MiB, as evenly as the batch
    allows."""
    assert fastpath._winograd_chunks(batch, tiles, channels, itemsize) == expected


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("hw,pads", [((8, 8), ((1, 1), (1, 1))), ((5, 7), ((0, 0), (0, 0))),
                                     ((6, 3), ((2, 0), (1, 2))), ((1, 1), ((1, 1), (1, 1)))])
def test_winograd_is_exact_in_float64(monkeypatch, hw, pads, chunked):
    """F(2x2, 3x3) is an exact identity: in float64 the form and its input and kernel gradients
    equal XLA's convolution's to rounding (1e-12), for odd sizes and every padding it accepts,
    whole or in chunks of two images (three images: the last chunk padded); in float32 to the
    few adds' rounding."""
    if chunked:
        monkeypatch.setattr(fastpath, "_winograd_chunks", _two_images_per_chunk)
    with jax.enable_x64(True):
        x, k = _data(3, *hw, 5, 3, 3, 6)
        x, k = x.astype(jnp.float64), k.astype(jnp.float64)
        y = fastpath._winograd_conv(x, k, pads, None)
        ref = _std(x, k, (1, 1), pads)
        _close(y, ref, 1e-12)
        g = jnp.sin(ref)
        dx = fastpath._winograd_input_grad(g, k, pads, None)
        _close(dx, jax.vjp(lambda x: _std(x, k, (1, 1), pads), x)[1](g)[0], 1e-12)
        dk = fastpath._winograd_kernel_grad(x, g, pads, None)
        _close(dk, jax.vjp(lambda k: _std(x, k, (1, 1), pads), k)[1](g)[0], 1e-12)
    x, k = _data(3, *hw, 5, 3, 3, 6)
    _close(fastpath._winograd_conv(x, k, pads, None), _std(x, k, (1, 1), pads), 1e-5)


def test_winograd_form_has_no_convolution(monkeypatch):
    """Where the rule picks Winograd (an 8x8 map, 128 channels, Eigen's convolutions), the
    forward pass, the input gradient in an attack loop and the kernel gradient compile to
    matmuls only, equal to the standard lowering's, also through the chunk loop (three images,
    two per chunk)."""
    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: False)
    monkeypatch.setattr(fastpath, "_winograd_chunks", _two_images_per_chunk)
    x, k = _data(3, 8, 8, 128, 3, 3, 128)
    with fastpath.enabled(True):
        def run(conv):
            f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME")) ** 2)
            loop = lambda x, k: lax.fori_loop(0, 2, lambda i, z: z + 0.1 * jax.grad(f)(z, k), x)
            return jax.jit(lambda x, k: (conv(x, k, (1, 1), "SAME"), loop(x, k),
                                         jax.grad(f, 1)(x, k)))

        text = run(_fast).lower(x, k).compile().as_text()
        assert "convolution(" not in text and "dot(" in text
        for a, b in zip(run(_fast)(x, k), run(_std)(x, k), strict=True):
            _close(a, b, 1e-5)


@pytest.mark.parametrize("strides,dilation,expected", [
    ((1, 1), (1, 1), False), ((2, 2), (1, 1), True), ((1, 2), (1, 1), True),
    ((3, 3), (1, 1), True), ((2, 2), (2, 2), False),
])
def test_phases_rule(strides, dilation, expected):
    """One convolution per output phase for every strided input gradient without kernel
    dilation."""
    assert fastpath._phases_pay(strides, dilation) is expected


PHASE_CASES = [  # (B, H, W, C, kh, kw, O, strides, padding)
    (3, 32, 32, 4, 3, 3, 6, (2, 2), "SAME"),  # ResNet-18's strided 3x3 (pads (0, 1))
    (2, 9, 7, 3, 3, 3, 5, (2, 2), "SAME"),  # odd sizes: phases of different lengths
    (2, 11, 10, 2, 5, 4, 3, (3, 2), "SAME"),
    (2, 10, 11, 3, 3, 3, 2, (1, 2), ((2, 0), (1, 3))),
    (2, 10, 9, 2, 3, 3, 3, (2, 2), "VALID"),  # last row and column unused
    (2, 11, 11, 2, 2, 2, 3, (3, 3), ((1, 0), (0, 2))),  # kernel < stride: phases without taps
    (1, 8, 8, 2, 4, 4, 3, (2, 2), ((3, 0), (0, 3))),  # padding beyond half the kernel
]


@pytest.mark.parametrize("case", PHASE_CASES, ids=[f"{c[4]}x{c[5]}-s{c[7]}-{c[8]}"
                                                    for c in PHASE_CASES])
def test_phase_input_grad_equals_the_dilated_form(case):
    """The strided convolution's input gradient as one stride-1 convolution per output phase
    equals JAX's transpose of the convolution (float32 tolerance), rows and columns the stride
    never reaches included, and its compiled form convolves no dilated cotangent."""
    b, h, w, c, kh, kw, o, strides, padding = case
    x, k = _data(b, h, w, c, kh, kw, o)
    pads = fastpath._pairs(padding, (h, w), (kh, kw), strides)
    y, vjp = jax.vjp(lambda x: _std(x, k, strides, pads), x)
    g = jax.random.normal(jax.random.key(7), y.shape)
    phases = jax.jit(lambda g, k: fastpath._phase_input_grad(g, k, (h, w), strides, pads, None))
    _close(phases(g, k), vjp(g)[0])
    assert "lhs_dilate" not in phases.lower(g, k).compile().as_text()


def test_strided_input_gradient_uses_phases():
    """Through the fast path (the model's convolution primitive), the input gradient of a
    strided layer is the phase form: no convolution of a dilated cotangent in the program."""
    x, k = _data(2, 16, 16, 8, 3, 3, 8)

    def compiled_text(conv):
        grad = jax.grad(lambda z: jnp.sum(jnp.tanh(conv(z, k, (2, 2), "SAME"))))
        return jax.jit(grad).lower(x).compile().as_text()

    with fastpath.enabled(True):
        assert "lhs_dilate" not in compiled_text(_fast)
    assert "lhs_dilate" in compiled_text(_std)  # what the test guards against


def test_stored_is_the_identity_bit_for_bit():
    """The fusion barrier in front of XLA's kernel gradient returns its input unchanged, NaN,
    infinities and signed zeros included (its predicate is true for every first element, NaN
    too), under jit and vmap, with the identity as derivative."""
    v = jnp.array([[np.nan, -0.0, 0.0, np.inf], [-np.inf, 1e-45, -3.5, 2.0]], jnp.float32)
    for first in (np.nan, np.inf, -0.0, 1.0):
        u = v.at[0, 0].set(first)
        out = jax.jit(fastpath._stored)(u)
        np.testing.assert_array_equal(np.asarray(out).view(np.uint32), np.asarray(u).view(np.uint32))
    batched = jax.vmap(fastpath._stored)(v)
    np.testing.assert_array_equal(np.asarray(batched).view(np.uint32), np.asarray(v).view(np.uint32))
    w = jnp.arange(6.0).reshape(2, 3)
    _, tangent = jax.jvp(fastpath._stored, (w,), (jnp.ones_like(w),))
    np.testing.assert_array_equal(tangent, jnp.ones_like(w))
    np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(fastpath._stored(z) * w))(w), w)


@pytest.mark.parametrize("channels,expected", [(1, False), (2, True), (64, True)])
def test_stored_rule(channels, expected):
    assert fastpath._stored_pay(channels) is expected


def test_kernel_gradient_reads_the_stored_input(monkeypatch):
    """XLA's kernel gradient of a convolution whose input is an element-wise function of
    another array (batch norm and ReLU in front of ResNet-18's convolutions) goes through the
    barrier, so the transpose in front of it reads the stored input instead of recomputing those
    operations in a transposed loop; the gradients equal the standard lowering's."""
    monkeypatch.setattr(fastpath, "_kernel_grad_method", lambda *a: "xla")
    x, k = _data(4, 10, 10, 6, 3, 3, 5)
    scale, shift = jnp.linspace(0.5, 1.5, 6), jnp.linspace(-0.2, 0.2, 6)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(jnp.maximum(x * scale + shift, 0.0), k, (1, 1),
                                                 "SAME")))

    grads = {name: jax.jit(jax.grad(loss(conv), (0, 1))) for name, conv in (("fast", _fast),
                                                                            ("std", _std))}
    with fastpath.enabled(True):
        text = grads["fast"].lower(x, k).compile().as_text()
        fast = grads["fast"](x, k)
    assert "conditional" in text
    assert "conditional" not in grads["std"].lower(x, k).compile().as_text()
    for a, b in zip(fast, grads["std"](x, k), strict=True):
        _close(a, b)


def test_ynnpack_convolutions_is_this_process_library():
    from jaxadv.devices import convolution_backend

    assert fastpath._ynnpack_convolutions() is (convolution_backend() == "ynnpack")


def test_one_channel_forward_is_one_loop_and_matches(monkeypatch):
    """A one-channel layer's forward pass (PoolGAP's first layer, odd sizes) compiles without an
    XLA convolution or matmul (the taps become broadcast multiply-adds), and its output, input
    gradient and kernel gradient equal the standard lowering's."""
    monkeypatch.setattr(fastpath, "_rows_pay", lambda *a: False)
    x, k = _data(3, 11, 9, 1, 5, 5, 6)
    with fastpath.enabled(True):
        text = jax.jit(lambda x, k: _fast(x, k, (1, 1), "SAME")).lower(x, k).compile().as_text()
        assert "convolution(" not in text and " dot(" not in text
        loss = lambda conv: lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME")) ** 2)
        fast = jax.jit(lambda x, k: (_fast(x, k, (1, 1), "SAME"),
                                     *jax.grad(loss(_fast), (0, 1))(x, k)))(x, k)
    std = jax.jit(lambda x, k: (_std(x, k, (1, 1), "SAME"),
                                *jax.grad(loss(_std), (0, 1))(x, k)))(x, k)
    for a, b in zip(fast, std, strict=True):
        _close(a, b)


def test_tap_sum_is_stored_for_its_consumers(monkeypatch):
    """The tap sum's output goes through the fusion barrier (PoolGAP: the max pool's
    first-maximum mask in the backward pass recomputed all 25 taps), and a one-channel layer
    followed by a max pool still has the standard lowering's output and gradients."""
    monkeypatch.setattr(fastpath, "_rows_pay", lambda *a: False)
    x, k = _data(3, 12, 10, 1, 5, 5, 6)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.tanh(fastpath.max_pool(
            conv(x, k, (1, 1), "SAME"), window=2, stride=2)) ** 2)

    with fastpath.enabled(True):
        grad = jax.jit(jax.grad(loss(_fast), (0, 1)))
        assert "conditional" in grad.lower(x, k).compile().as_text()
        fast = grad(x, k)
        monkeypatch.setattr(fastpath, "_taps_stored_pay", lambda: False)
        jax.clear_caches()
        assert "conditional" not in jax.jit(jax.grad(loss(_fast), (0, 1))).lower(
            x, k).compile().as_text()
    std = jax.jit(jax.grad(loss(_std), (0, 1)))(x, k)
    for a, b in zip(fast, std, strict=True):
        _close(a, b)


def test_image_layers_use_patches_and_match(monkeypatch):
    """An RGB first layer (ResNet's stem) compiles to matmuls only, forward, input gradient in a
    loop and kernel gradient, and equals the standard lowering."""
    monkeypatch.setattr(fastpath, "_rows_pay", lambda *a: False)
    _assert_matmuls_only_and_standard(*_data(3, 10, 9, 3, 3, 3, 8))


def _assert_matmuls_only_and_standard(x, k):
    """Forward pass, input gradient in a loop and kernel gradient of a stride-1 SAME layer
    compile to matmuls (no XLA convolution) and equal the standard lowering's."""
    with fastpath.enabled(True):
        def run(conv):
            f = lambda x, k: jnp.sum(jnp.tanh(conv(x, k, (1, 1), "SAME")) ** 2)
            loop = lambda x, k: lax.fori_loop(0, 2, lambda i, z: z + 0.1 * jax.grad(f)(z, k), x)
            return jax.jit(lambda x, k: (loop(x, k), jax.grad(f, 1)(x, k)))

        text = run(_fast).lower(x, k).compile().as_text()
        assert "convolution(" not in text and "dot(" in text
        for a, b in zip(run(_fast)(x, k), run(_std)(x, k), strict=True):
            _close(a, b, 1e-5)


def test_rows_form_has_no_convolution(monkeypatch):
    """Where the row form pays, the forward pass, its input gradient in a loop and the kernel
    gradient compile to matmuls only (no XLA convolution left), and equal the standard ones."""
    monkeypatch.setattr(jax, "local_device_count", lambda *a, **k: 1)
    monkeypatch.setattr(fastpath.os, "cpu_count", lambda: 2)
    _assert_matmuls_only_and_standard(*_data(3, 7, 7, 5, 7, 7, 4))  # 5 channels: no im2col


def test_dispatch_and_fallbacks(force_columns):
    x, k = _data(2, 16, 16, 2, 3, 3, 4)

    def prims(fn, *args):
        return {e.primitive.name for e in jax.make_jaxpr(jax.grad(fn))(*args).eqns}

    fast = prims(lambda k: jnp.sum(_fast(x, k, (1, 1), "SAME")), k)
    assert "jaxadv_conv" in fast
    with fastpath.enabled(False):
        assert "jaxadv_conv" not in prims(lambda k: jnp.sum(_fast(x, k, (1, 1), "SAME")), k)
    # padding larger than the kernel: XLA's convolution and its gradients
    wide = prims(lambda k: jnp.sum(_fast(x, k, (1, 1), ((3, 3), (3, 3)))), k)
    assert "conv_general_dilated" in wide and "jaxadv_conv" not in wide
    # unsupported cases fall back to lax.conv_general_dilated and still agree with it
    grouped = lambda x, k: fastpath.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC,
                                                         feature_group_count=2)
    k2 = k[:, :, :1, :]
    np.testing.assert_array_equal(grouped(x, k2), lax.conv_general_dilated(
        x, k2, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2))
    nchw = jnp.transpose(x, (0, 3, 1, 2))
    np.testing.assert_array_equal(fastpath.conv_general_dilated(nchw, jnp.transpose(k, (3, 2, 0, 1)),
                                                                (1, 1), "SAME"),
                                  lax.conv_general_dilated(nchw, jnp.transpose(k, (3, 2, 0, 1)),
                                                           (1, 1), "SAME"))
    up = lambda conv: conv(x, k, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                           dimension_numbers=NHWC)
    np.testing.assert_array_equal(up(fastpath.conv_general_dilated), up(lax.conv_general_dilated))


def test_switch(monkeypatch):
    monkeypatch.setattr(fastpath, "_ENABLED", None)
    monkeypatch.setenv("JAXADV_FASTPATH", "0")
    assert not fastpath.is_enabled()
    monkeypatch.setenv("JAXADV_FASTPATH", "1")
    assert fastpath.is_enabled()
    monkeypatch.delenv("JAXADV_FASTPATH")
    assert fastpath.is_enabled() == (jax.default_backend() == "cpu")
    with fastpath.enabled(False):
        assert not fastpath.is_enabled()
        with fastpath.enabled(True):
            assert fastpath.is_enabled()
        assert not fastpath.is_enabled()
    monkeypatch.setenv("JAXADV_FASTPATH", "maybe")
    with pytest.raises(ValueError, match="JAXADV_FASTPATH"):
        fastpath.is_enabled()
    with pytest.raises(ValueError, match="True, False or None"):
        fastpath.set_enabled("yes")


@pytest.mark.parametrize("shape,window", [((3, 8, 6, 2), 2), ((2, 4, 4, 5), 2), ((2, 9, 6, 3), 3)])
def test_max_pool_matches_reduce_window_with_ties(shape, window):
    x = jax.random.normal(jax.random.key(0), shape)
    x = x.at[:, :2].set(0.0).at[:, 2:, :2].set(1.0)  # whole windows of equal values
    x = jnp.round(x * 2) / 2  # and scattered ties

    def pool(on):
        def f(x):
            with fastpath.enabled(on):
                return fastpath.max_pool(x, window=window, stride=window)
        return f

    def outputs(on):  # value, gradient (distinct weights per output), forward mode
        def loss(x):
            out = pool(on)(x)
            return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape))
        return jax.jit(lambda x: (pool(on)(x), jax.grad(loss)(x),
                                  jax.jvp(pool(on), (x,), (x + 1,))[1]))(x)

    for a, b in zip(outputs(True), outputs(False), strict=True):
        np.testing.assert_array_equal(a, b)
    with fastpath.enabled(True):
        jaxpr = jax.make_jaxpr(lambda x: fastpath.max_pool(x, window=window, stride=window))(x)
    assert "reduce_window_max" not in {e.primitive.name for e in jaxpr.eqns}


@pytest.mark.parametrize("size,window,stride", [(7, 2, 2), (8, 3, 2), (9, 3, 3)])
def test_max_pool_non_tiling_falls_back(size, window, stride):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    with fastpath.enabled(True):
        out = fastpath.max_pool(x, window=window, stride=stride)
        g = jax.grad(lambda x: jnp.sum(fastpath.max_pool(x, window=window, stride=stride) ** 2))(x)
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                            "VALID")
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(g, jax.grad(lambda x: jnp.sum(lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), "VALID") ** 2))(x))


@pytest.mark.parametrize("name,size,kwargs", [
    ("poolgap", 12, {"widths": (4, 6)}),
    ("smallgap", 16, {"widths": (4, 6, 8)}),
])
def test_models_sharded_odd_batch(name, size, kwargs, force_columns):
    """Whole models, fast path vs standard, with a batch of 13 split over 3 devices (XLA pads the
    uneven shards): logits, input and parameter gradients agree. (ResNet's layers -- 3x3 stride
    1/2 and strided 1x1 convolutions -- are covered by test_conv_matches_standard.)"""
    channels = 1
    model = get_model(name, **kwargs)
    variables = jax.jit(lambda key: init_variables(model, key, (1, size, size, channels)))(
        jax.random.key(0))  # jitted: eager initialisation is slower than its compilation
    x = jax.random.uniform(jax.random.key(1), (13, size, size, channels))
    y = jnp.arange(13) % 10
    mesh = sharding.data_mesh(jax.devices()[:3])
    batch_spec = NamedSharding(mesh, P(sharding.DATA_AXIS))

    def loss(v, x):
        x = lax.with_sharding_constraint(x, batch_spec)
        logits = model.apply(v, x)
        return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(13), y]), logits

    def run(on):
        with fastpath.enabled(on):
            return jax.jit(jax.grad(loss, (0, 1), has_aux=True))(variables, x)

    (gv_fast, gx_fast), logits_fast = run(True)
    (gv_std, gx_std), logits_std = run(False)
    _close(logits_fast, logits_std, 1e-4)
    _close(gx_fast, gx_std, 1e-4)
    jax.tree.map(lambda a, b: _close(a, b, 1e-4), gv_fast, gv_std)


@pytest.mark.parametrize("batch,in_hw,channels,dtype,ynnpack,expected", [
    (128, (32, 32), 64, jnp.float32, False, 8),  # ResNet-18's first stage: 8 images per chunk
    (16, (32, 32), 64, jnp.float32, False, 8),  # the attributions' 16 images per call
    (19, (32, 32), 64, jnp.float32, False, 7),  # 3 chunks, as even as the batch allows
    (128, (32, 32), 64, jnp.float64, False, 4),
    (8, (32, 32), 64, jnp.float32, False, None),  # one chunk: nothing to gain
    (128, (16, 16), 128, jnp.float32, False, 16),
    (128, (32, 32), 32, jnp.float32, False, None),  # no Winograd under 64 channels
    (128, (32, 32), 64, jnp.float32, True, None),  # YNNPACK's convolutions: no Winograd
])
def test_depth_first_images_rule(batch, in_hw, channels, dtype, ynnpack, expected):
    """Chunks of images for a network's first layers exactly where the fast path would split
    their Winograd convolutions into chunks, of the same size; none with the fast path off."""
    with fastpath.enabled(True):
        assert fastpath.depth_first_images(batch, in_hw, channels, dtype,
                                           ynnpack=ynnpack) == expected
    with fastpath.enabled(False):
        assert fastpath.depth_first_images(batch, in_hw, channels, dtype, ynnpack=False) is None


def test_map_images_equals_the_function_on_the_whole_batch():
    """Over chunks (the last one padded with zero images and cut off again) = on the batch."""
    x = jax.random.normal(jax.random.key(0), (7, 5, 4, 3))
    fn = lambda v: jnp.tanh(v) * v.sum(axis=(1, 2, 3), keepdims=True)  # noqa: E731
    for size in (1, 3, 7, 10):
        np.testing.assert_allclose(fastpath.map_images(fn, x, size), fn(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [7, 12])
def test_resnet_first_stage_depth_first_is_exact(monkeypatch, batch):
    """A PreAct ResNet's stem and first stage over chunks of 3 images (forced; the rule takes
    ResNet-18's real sizes) give the per-layer path's logits and input gradients, batches that
    the chunk does not divide included; inference only (training couples images through batch
    norm), and the chunk loop is really there."""
    model = get_model("preact_resnet18", width_multiplier=0.25)
    variables = init_variables(model, jax.random.key(0), (1, 16, 16, 3))
    x = jax.random.uniform(jax.random.key(1), (batch, 16, 16, 3))
    logits = lambda v: model.apply(variables, v)  # noqa: E731
    grad = jax.grad(lambda v: logits(v)[:, 0].sum())

    def run(size):
        monkeypatch.setattr(fastpath, "depth_first_images", lambda *a, **k: size)
        jax.clear_caches()
        return (jax.jit(logits)(x), jax.jit(grad)(x),
                "while" in jax.jit(logits).lower(x).as_text(),
                "while" in jax.jit(lambda v: model.apply(variables, v, train=True,
                                                         mutable=["batch_stats"])).lower(x).as_text())

    chunked, whole = run(3), run(None)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-7)
    assert chunked[2] and not whole[2]
    assert not chunked[3] and not whole[3]
