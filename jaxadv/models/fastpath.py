"""Convolution and pooling lowerings used by every jaxadv model (the CPU fast path).

Every convolution of jaxadv's models goes through :func:`conv_general_dilated` (plugged into Flax's
``nn.Conv`` by ``jaxadv.models.layers.conv``) and every max-pool through :func:`max_pool`. On CPU
they use lowerings that XLA:CPU runs faster than its native convolution and ``reduce_window``,
with the same outputs and gradients (tests: ``tests/models/test_fastpath.py``):

* convolution as patch extraction + one ``dot_general`` (im2col). Patches are strided slices of the
  padded input concatenated along channels, so (B, Ho, Wo, kh*kw*C) @ (kh*kw*C, O). Its reverse-mode
  derivative is matmuls too: ``d kernel = patches^T @ g``, ``d input = col2im(g @ kernel^T)`` (the
  transpose of the slices: interior-padded adds). It is plain JAX, so every order of forward and
  reverse differentiation works (double backprop for Int/Int2 training, jvp, hessians).
* convolutions of images with at most 4 channels (every model's first layer) as im2col where XLA's
  convolution is slow (:func:`_patches_conv`, rule and measurements in :func:`_patches_pay`): the
  input gradient of a 1-channel 5x5 layer 5x faster, of ResNet-18's RGB stem 7.6x.
* the forward pass of one-channel images (PoolGAP's and SmallGAP's first layers) as the sum over
  kernel taps of the shifted image times that tap's weights (:func:`_taps_conv`, rule and
  measurements in :func:`_taps_pay`): one loop of broadcast multiply-adds, kept out of
  YNNPACK's fusions (:func:`_outside_library_fusions`); single layers 1.4-5x faster than XLA's
  convolution; not where YNNPACK runs the layer (PoolGAP's on two host devices), where whole
  steps did not gain.
* a convolution whose kernel covers most of its map (SmallGAP's 7x7 kernel on its 7x7 map) as one
  matmul per output row, (B, n_i*W*C) @ (n_i*W*C, Wo*O), with the kernel rows laid out as block
  Toeplitz matrices (:func:`_rows_conv`): the padding rows are never multiplied, and matmuls use
  every core where XLA:CPU's YNNPACK convolutions run on one thread. Used on one host device with two
  or more cores where it needs at most 0.8 of the convolution's multiply-adds
  (:func:`_rows_pay` has the measurements).
* the GAP fold: where a model's feature map is a convolution followed only by the GAP head
  (SmallGAP's last layer), its logits need only the mean of that convolution over positions,
  which is the kernel applied to window sums of its input (:func:`conv_mean`, 1/49 of the 7x7
  layer's multiply-adds), for batches of at least 64 examples per device (:func:`_fold_pay`);
  the window sums are chains of adds that XLA fuses (:func:`_window_sums`). Their CAM
  (``GAPClassifier.logits_and_cam``, used by the Int/Int2 objectives and the AAI attack) is one
  convolution whose kernel is composed with the head's weights (10 output channels
  instead of 100). ``features`` and Grad-CAM still build the map. Models opt in through
  ``GAPClassifier.pooled_features`` and ``folded_cam``.
* 3x3 stride-1 convolutions with at least 64 channels (ResNet-18's, stem excepted) by
  Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016; :func:`_winograd_conv`, rule and
  measurements in :func:`_winograd_pay`): 16 batched matmuls over transformed 4x4 tiles, 4
  multiplies per output and channel pair instead of 9, over chunks of images whose transformed
  tiles stay in the last-level cache (:func:`_winograd_chunks`); the input gradient is the same
  form with the flipped kernel (:func:`_winograd_input_grad`), the kernel gradient (maps of at
  most 16x16, at least 128 channels) the same products in Winograd's domain
  (:func:`_winograd_kernel_grad`). Where Eigen runs the convolutions (one host device): those
  layers up to 1.8x faster, ResNet-18's forward pass 1.15-1.49x, train step 1.16-1.20x, by how
  much of the cache the VM gets. Exact in exact arithmetic (float64 agrees to 1e-15); float32
  error about 1e-6 of the output's scale.
* the input gradient of strided convolutions (ResNet-18's stage transitions, SmallGAP's second
  layer) as one stride-1 convolution per output phase (:func:`_phase_input_grad`, rule and
  measurements in :func:`_phases_pay`) instead of one convolution of the stride-dilated
  cotangent, whose inserted zeros XLA:CPU multiplies too: ResNet-18's 32x32x64->128 stride-2
  layer 2.2x faster, its train step 1.27x.
* XLA's kernel gradients read the stored convolution input, and the one-channel tap sum's
  consumers its stored output, through a conditional XLA can neither fold nor fuse through
  (:func:`_stored`; rules :func:`_stored_pay`, :func:`_taps_stored_pay`), instead of
  recomputing batch norm and ReLU (or the 25 taps) inside a transposed loop: ResNet-18's train
  step 1.12x, PoolGAP's train step 1.11-1.14x on one device.
* max-pool, when windows tile the input (window == stride, sizes divide), as a reshape and a
  select of the first maximum of each window, which routes the gradient exactly as
  ``reduce_window``'s ``select_and_scatter_add`` does (to the first maximum on ties); otherwise
  ``reduce_window``.

The fast path is on by default when JAX's default backend is CPU and the convolution is a plain
NHWC/HWIO one (no input dilation, feature_group_count = batch_group_count = 1, any stride,
kernel dilation and padding); everything else, and every GPU/TPU, uses the standard lowerings.
Switch it with ``JAXADV_FASTPATH=0`` / ``1`` in the environment, :func:`set_enabled`, or the
:func:`enabled` context manager. The switch is read when a function is *traced*; switching clears
JAX's caches, so jitted functions retrace at their next call.

What was measured (2-core AMD EPYC shared with other jobs, load 4-12, so absolute times are 3-6x
a quiet machine's; batch 128 float32; medians of interleaved runs; ms, standard / fast):

* im2col for the whole convolution (patches concatenated along channels + one dot) was *slower*
  on every layer with many channels: XLA:CPU's concatenate of kh*kw strided slices runs at ~1/10
  of memory bandwidth (patches of a 14x14x32 map, 5x5 kernel: 285 ms vs 1.6 ms for a copy of the
  input), so forward 2-9x slower (on a quiet Xeon 1.3-3x, results/conv_forms.json); so were
  per-tap forward / input-gradient matmuls (slower except on 4x4 maps). On 1-4 channel images,
  where the patches are small and XLA's convolution is slowest, it pays and is used (below).
* kernel gradient per tap (one (C, B*Ho*Wo) @ (B*Ho*Wo, O) matmul per kernel tap), on an EPYC:
  3x3 stride-1 layers 26x26x32->64: 958 -> 264; 32x32x64->64: 5324 -> 824; on a quiet 2-core
  Xeon at most 10 % faster than XLA and much slower at small per-device batches. Replaced
  (2026-12-03) by the kernel gradient per kernel *column* (what is kept): for each column j the
  kh row-shifted views concatenated along channels and one (kh*C, B*Ho*Wo) @ (B*Ho*Wo, O)
  matmul, :func:`_column_kernel_grad`; up to 1.9x faster than XLA's on single layers on one
  device, but slower inside whole train steps on several host devices, so
  :func:`_kernel_grad_method` uses it only for large per-device layers (its docstring has the
  measurements).
* reshape max-pool with first-max routing: gradient of a 2x2 pool on 128x28x28x32: 174 -> 58,
  on 128x14x14x64: 89 -> 26; forward unchanged. PoolGAP train step x1.1-1.9 over runs.
* XLA:CPU flags ``xla_cpu_use_xnnpack``, ``xla_cpu_use_onednn``, XNN graph fusion, the
  concurrency-optimised scheduler: no change beyond noise on these convolutions (none set).
* input gradient inside loops: in a ``lax.fori_loop`` body (every attack loop) XLA:CPU compiles
  JAX's transpose of a convolution (kernel dimensions swapped in the dimension numbers, ``01oi``)
  as it is and runs it ~2.5x slower than in straight-line code. :func:`_input_grad` writes it with
  an explicitly flipped and transposed (HWIO) kernel instead: a sign-gradient step of 100 images
  in a loop, SmallGAP 61.0 -> 24.1 ms (unrolled: 24.0), PoolGAP 126.7 -> 42.8 ms
  (``python -m experiments.benchmarks.loop_speed``, quiet 2-core Xeon; a later run on the same
  kind of VM, results/loop_speed.json: SmallGAP 68.6 -> 26.9, PoolGAP 136.2 -> 49.0).
* higher orders inside loops: with JAX's rules the transpose of that input gradient (double
  backprop: IG-Norm's inner attack, attacks on gradient maps) is a ``01oi`` convolution again.
  The convolution and its input gradient are therefore a pair of primitives, :data:`conv_p` and
  :data:`conv_input_p`, each the other's transpose, so that every order of forward and reverse
  differentiation stays in the fast forms. A sign step on the l1 norm of the integrated
  gradients over 5 path points (IG-Norm's inner attack), 100 images in a loop: SmallGAP 280 ms
  (standard lowerings 690, unrolled 282), PoolGAP 583 ms (standard 1,340); the IG-Norm training
  step (SmallGAP, batch 128, 10 inner steps, 2 host devices) 2.78 s, 11x a PGD-AT step
  (``python -m experiments.benchmarks.loop_speed --second_order``, results/loop_speed.json;
  ``python -m experiments.benchmarks.ig_norm_step``, results/ig_norm_step.json; quiet 2-core
  Xeon). The ``custom_jvp`` this replaced took 17-32 s for that training step (its double
  backprop put a ``01oi`` convolution back in the loop).
"""

import contextlib
import functools
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxadv.devices import fastpath_env_setting
from jaxadv.types import Array

_ENABLED: bool | None = None  # None: automatic (on for CPU); set by set_enabled / enabled


def set_enabled(flag: bool | None) -> None:
    """Turns the fast path on (True), off (False), or back to automatic (None: on for CPU).

    Read at trace time. JAX caches traces by function, not by this setting, so a change clears
    JAX's caches (``jax.clear_caches()``) and every jitted function retraces at its next call:
    otherwise a new ``jax.jit`` of a function traced under the old setting would silently reuse
    that trace. Executables already compiled and held (a ``.lower(...).compile()`` result) keep
    the lowering they were traced with.
    """
    if flag is not None and not isinstance(flag, bool):
        raise ValueError(f"set_enabled takes True, False or None; got {flag!r}.")
    _set(flag)


def _set(flag: bool | None) -> None:
    global _ENABLED
    if flag != _ENABLED:
        jax.clear_caches()
    _ENABLED = flag


@contextlib.contextmanager
def enabled(flag: bool | None) -> Iterator[None]:
    """Context manager form of :func:`set_enabled`; restores the previous setting on exit."""
    previous = _ENABLED
    set_enabled(flag)
    try:
        yield
    finally:
        _set(previous)


def is_enabled() -> bool:
    """Whether the fast path would be used by a function traced now."""
    if _ENABLED is not None:
        return _ENABLED
    env = fastpath_env_setting()
    if env is not None:
        return env
    return jax.default_backend() == "cpu"


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _pairs(padding, in_hw, window_hw, strides) -> list[tuple[int, int]] | None:
    if isinstance(padding, str):
        return [tuple(p) for p in lax.padtype_to_pads(in_hw, window_hw, strides, padding)]
    pads = [tuple(int(v) for v in p) for p in padding]
    return pads if len(pads) == 2 and all(len(p) == 2 for p in pads) else None


def _tap_slices(xp: Array, kernel_hw, strides, dilation, out_hw) -> list[Array]:
    """The kh*kw strided views of the padded input that each kernel tap sees, (B, Ho, Wo, C)."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel_hw, strides, dilation, out_hw
    b, _, _, c = xp.shape
    return [lax.slice(xp, (0, i * dh, j * dw, 0),
                      (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]


def _pad_hw(x: Array, pads) -> Array:
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _std_conv(x, w, strides, pads, dilation, precision, preferred_element_type):
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                    dimension_numbers=_NHWC, precision=precision,
                                    preferred_element_type=preferred_element_type)


def _taps_conv(x, w, strides, pads, dilation, precision, preferred_element_type):
    """The convolution as a sum over kernel taps of (B*Ho*Wo, C) @ (C, O) matmuls. Used for 1x1
    kernels, for the forward pass of one-channel images (:func:`_taps_pay`: with C = 1 XLA turns
    the products into broadcast multiplies and fuses all taps and the layer's bias add into one
    loop), and as the ``"taps"`` kernel gradient (its transpose w.r.t. the kernel is one
    (C, B*Ho*Wo) @ (B*Ho*Wo, O) matmul per tap)."""
    kh, kw = w.shape[:2]
    xp = _pad_hw(x, pads)
    out_hw = tuple((n - (k - 1) * d - 1) // s + 1
                   for n, k, d, s in zip(xp.shape[1:3], (kh, kw), dilation, strides, strict=True))
    out = None
    for t, sl in enumerate(_tap_slices(xp, (kh, kw), strides, dilation, out_hw)):
        y = lax.dot_general(sl, w[t // kw, t % kw], (((3,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=preferred_element_type)
        out = y if out is None else out + y
    return out


def _phases_pay(strides, dilation) -> bool:
    """Whether a strided convolution's input gradient runs as :func:`_phase_input_grad` (one
    stride-1 convolution per output phase) instead of one convolution of the stride-dilated
    cotangent: for every stride above 1 without kernel dilation, on every backend of the fast path.

    XLA:CPU computes the dilated form over all the inserted zeros (for stride 2, 4x the
    multiply-adds that touch the cotangent); it was the costliest single operation of PreAct
    ResNet-18's train step (152 of ~1,850 ms in a profile: the input gradient of stage 2's first
    convolution). Single layers, batch 128, one host device (Eigen's convolutions), 2-core EPYC
    VM, 2026-12-05 evening, dilated form / phases, ms (``python -m
    experiments.benchmarks.kernel_grad --forms --batches 128 --repeats 7 --out
    results/conv_forms_phases_1dev.json``): ResNet-18's 32x32x64->128 stride 2 68.9 / 31.2,
    SmallGAP's 14x14x16->32 4x4 stride 2 1.03 / 0.59. Whole ops, same machine and evening,
    phases against the dilated form in the same run (``python -m
    experiments.benchmarks.step_speed --models preact_resnet18 --repeats 5 --host_devices 1
    --compare_no_phases``, results/step_speed_phases_resnet_1dev.json, ``speedup_vs_no_phases``;
    ``--models smallgap --repeats 7``, results/step_speed_phases_smallgap_1dev.json): ResNet-18
    forward 0.98x (untouched: noise), PGD step 1.06x, PGD-10 1.01x, train step 1.27x (2,072 ->
    1,635 ms); SmallGAP 0.92 / 1.05 / 1.31 / 1.14x."""
    return max(strides) > 1 and tuple(dilation) == (1, 1)


def _phase_input_grad(g, w, x_hw, strides, pads, precision):
    """The input gradient of a strided convolution, ``g`` (B, Ho, Wo, O) -> (B, H, W, C), as one
    stride-1 convolution per output phase: input row ``y = s*Y + f`` receives only the kernel
    taps ``i = i0 + s*t`` with ``i0 = (f + pad_lo) mod s``, so phase ``f`` is ``g`` convolved
    with that sub-kernel (flipped, transposed to HWIO) at an offset; the s_h * s_w phase maps are
    interleaved into the input's grid (stack and reshape). Every multiply-add touches a real
    cotangent entry, where the dilated form (:func:`_input_grad`) multiplies the inserted zeros too.
    A phase no tap reaches (kernel smaller than the stride) is zero."""
    c = w.shape[2]
    n = g.shape[0]
    phases = []
    for axis in range(2):
        s, k, lo = strides[axis], w.shape[axis], pads[axis][0]
        size, g_size = x_hw[axis], g.shape[1 + axis]
        per_phase = []
        for f in range(s):
            i0 = (f + lo) % s
            taps = len(range(i0, k, s))
            shift = (f + lo - i0) // s
            rows = -(-(size - f) // s)
            pad_lo = taps - 1 - shift
            per_phase.append((i0, taps, (pad_lo, rows + taps - 1 - g_size - pad_lo), rows))
        phases.append(per_phase)
    n_y = max(p[3] for p in phases[0])
    n_x = max(p[3] for p in phases[1])
    grid = []
    for i0, taps_y, pads_y, rows_y in phases[0]:
        line = []
        for j0, taps_x, pads_x, rows_x in phases[1]:
            if taps_y == 0 or taps_x == 0:
                out = jnp.zeros((n, rows_y, rows_x, c), g.dtype)
            else:
                sub = jnp.flip(w[i0::strides[0], j0::strides[1]], (0, 1)).transpose(0, 1, 3, 2)
                out = lax.conv_general_dilated(g, sub, (1, 1), (pads_y, pads_x),
                                               dimension_numbers=_NHWC, precision=precision)
            line.append(jnp.pad(out, ((0, 0), (0, n_y - rows_y), (0, n_x - rows_x), (0, 0))))
        grid.append(jnp.stack(line, axis=3))
    dx = jnp.stack(grid, axis=2).reshape(n, n_y * strides[0], n_x * strides[1], c)
    return dx[:, :x_hw[0], :x_hw[1]]


# F(2x2, 3x3) of Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016),
# for correlation (what CNN layers compute): Y = A^T [(G w G^T) * (B^T d B)] A per 4x4 input tile d
# and 2x2 output tile Y. Entries are 0, +-1 and +-1/2, so the rounding stays that of a few adds.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(coefs, terms) -> Array:
    """sum_i coefs[i] * terms[i], skipping zero coefficients and multiplies by +-1."""
    out = None
    for c, t in zip(coefs, terms, strict=True):
        if c == 0:
            continue
        v = t if c == 1 else -t if c == -1 else t * jnp.asarray(c, t.dtype)
        out = v if out is None else out + v
    return out


def _sandwich(mat, terms) -> list[list[Array]]:
    """``mat`` X ``mat``^T over a grid of arrays: ``out[a][b] = sum_ij mat[a][i] mat[b][j]
    terms[i][j]`` for a p x n matrix ``mat`` (nested tuples) and an n x n grid ``terms`` (nested
    lists of equally shaped arrays), rows first (separable: each product is a few adds). Every
    transform of F(2x2, 3x3) but the input tiles' (strided views of one array) is one of these."""
    n = len(terms)
    rows = [[_combine(m_a, [terms[i][j] for i in range(n)]) for j in range(n)] for m_a in mat]
    return [[_combine(m_b, r) for m_b in mat] for r in rows]


def _winograd_applies(w_shape, strides, pads, dilation) -> bool:
    """Whether :func:`_winograd_conv` computes this convolution: a 3x3 kernel, stride 1, no
    dilation, and at most 2 rows/columns of padding on each side (the input gradient is then the
    same kind of convolution)."""
    return (tuple(w_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)
            and tuple(dilation) == (1, 1) and all(0 <= p <= 2 for pair in pads for p in pair))


def _winograd_pay(in_hw, w_shape, strides, pads, dilation, op: str, *,
                  ynnpack: bool | None = None) -> bool:
    """Whether the forward pass (``op="forward"``), the input gradient (``"input"``) or the
    kernel gradient (``"kernel"``) of a convolution runs in Winograd's F(2x2, 3x3)
    (:func:`_winograd_conv`, :func:`_winograd_input_grad`, :func:`_winograd_kernel_grad`): where
    it applies (:func:`_winograd_applies`) and this process runs Eigen's convolutions (one host
    device; ``ynnpack``: whether YNNPACK runs them, None: this process's setting); the forward
    pass and input gradient with at least 64 input and output channels where one image's
    transformed tiles fit a chunk (:data:`_WINOGRAD_CHUNK_BYTES`; up to about 90x90 outputs at 64
    channels), the kernel gradient with at least 128 channels and at most 16x16 outputs.

    Measured on the 2-core EPYC VM, one host device, 2026-12-06 (``python -m
    experiments.benchmarks.kernel_grad --forms --batches 32 128 --repeats 7 --layer_names 'cnn
    conv2,resnet 32x32x64,resnet 16x16,resnet 8x8,resnet 4x4' --host_devices 1 --out
    results/conv_forms_winograd_chunked_1dev.json``), XLA ms / Winograd ms at batch 128, forward /
    input gradient / kernel gradient. The form's three steps (tile transform, 16 matmuls, output
    transform) each write a tensor 4x the map: taken over the whole batch, on ResNet-18's
    32x32x64 and 16x16x128 layers these round trips through memory cost what the 9/4 fewer
    multiplies gain (before the chunks: 0.93 / 0.86 / 0.60x and 1.06 / 1.21 / 1.02x,
    results/conv_forms_winograd_1dev.json); in chunks of images whose tiles take about 8 MiB
    (:func:`_winograd_chunks`) they stay in the 32 MiB last-level cache, and the gain depends on
    how much of that cache the VM gets: in a second run of the same command (``--out
    results/conv_forms_winograd_chunked_1dev_run2.json``, a fast spell) 32x32x64 27.7 -> 15.7 /
    25.9 -> 17.0 ms (1.76 / 1.52x; its kernel gradient 34.0 -> 41.1 ms, 0.83x: not taken, the
    contraction over the long batch-and-tiles dimension runs at 110-190 GFLOP/s), 16x16x128
    25.1 -> 14.5 / 25.7 -> 15.4 / 26.6 -> 21.9 ms (1.73 / 1.67 / 1.22x), 8x8x256 1.68 / 1.66 /
    1.30x, 4x4x512 1.50 / 1.67 / 1.41x; in the first, made while the same chunks ran at XLA's
    speed for about a minute at a time (a development monitor timing both every 5 s in one
    process saw 32x32x64 flip between 16.6-19.9 and 27.7-29.6 ms while XLA's stayed at
    27-29 ms), 0.97 / 0.99x, 1.07 / 1.13 / 1.07x, 1.18 / 1.29 / 1.15x and 1.25 / 1.36 / 1.22x.
    So at batch 128 chunked Winograd is never more than 3 % slower than XLA on these layers, and
    up to 1.8x faster (at batch 32: 0.83-1.81x over the two runs). Not taken: a layer with 32
    input channels (26x26x32->64: forward 0.52-0.81x, input gradient 0.73-1.23x at batch 128), a
    112x112x64 map (one image's tiles 12.5 MiB: 0.88x at batch 16, development run).
    Whole ResNet-18 ops, batch 128, forward / PGD step / PGD-10 / train step, against the fast
    path without Winograd in the same process (``python -m experiments.benchmarks.step_speed
    --models preact_resnet18 --repeats 5 --host_devices 1 --compare_no_winograd --out
    results/step_speed_winograd_chunked_resnet_1dev.json``, twice): 1.18 / 1.13 / 1.19 / 1.20x
    and 1.15 / 1.11 / 1.41 / 1.19x; against the rule before the chunks (at most 8x8 outputs, at
    least 128 channels; ``--repeats 7 --compare_no_large_winograd --compare_no_winograd --out
    results/step_speed_winograd_chunked_vs_small_1dev.json``, a fast spell) 1.24 / 1.22 / 1.25 /
    1.07x, against none 1.49 / 1.40 / 1.45 / 1.16x; development runs of that comparison in slow
    spells 1.04x forward, 1.01x PGD step, 0.96-1.09x train step (before the chunks, against none:
    1.20 / 1.14 / 1.15 / 1.11x, results/step_speed_winograd_resnet_1dev.json). Earlier
    measurements of the unchunked form: on two host devices (YNNPACK's convolutions) forward
    0.84x, PGD step 1.09x, train step 1.05x; F(4x4, 3x3) slower on three of four layers and 10x
    less accurate in float32 (relative error 8e-6 to 2.4e-5 against 6e-7 to 1.1e-6): neither
    used."""
    if op not in ("forward", "input", "kernel") or not _winograd_applies(w_shape, strides, pads,
                                                                         dilation):
        return False
    (ty, tx), (ho, wo) = _winograd_grid(in_hw, pads)
    if ynnpack is None:
        ynnpack = _ynnpack_convolutions()
    if ynnpack or min(w_shape[2:]) < _WINOGRAD_MIN_CHANNELS[op]:
        return False
    if op == "kernel":
        return ho * wo <= _WINOGRAD_KERNEL_MAX_OUTPUTS
    # At least one image's transformed tiles (float32) within a chunk's budget.
    return 16 * ty * tx * max(w_shape[2:]) * 4 <= _WINOGRAD_CHUNK_BYTES


_WINOGRAD_MIN_CHANNELS = {"forward": 64, "input": 64, "kernel": 128}
_WINOGRAD_KERNEL_MAX_OUTPUTS = 256
_WINOGRAD_CHUNK_BYTES = 8 << 20


def _winograd_tiles(x: Array, axis: int, tiles: int) -> list[Array]:
    """B^T applied along ``axis`` to the 4-row tiles starting every 2 rows: 4 arrays with
    ``tiles`` rows each (``x`` has 2 * tiles + 2 rows along ``axis``)."""
    rows = [lax.slice_in_dim(x, i, i + 2 * (tiles - 1) + 1, 2, axis) for i in range(4)]
    return [_combine(c, rows) for c in _WINOGRAD_BT]


def _winograd_grid(in_hw, pads):
    """The tile counts (ty, tx) of F(2x2, 3x3) and the output size (Ho, Wo) of a 3x3 stride-1
    convolution of an ``in_hw`` map padded by ``pads``."""
    (h, wd), ((lo_h, hi_h), (lo_w, hi_w)) = in_hw, pads
    ho, wo = h + lo_h + hi_h - 2, wd + lo_w + hi_w - 2
    return (-(-ho // 2), -(-wo // 2)), (ho, wo)


def _winograd_input_tiles(x: Array, pads):
    """B^T d B for every 4x4 tile d (stride 2) of ``x`` (B, H, W, C) padded by ``pads`` (and at
    the bottom/right up to whole tiles): (16, B*ty*tx, C) and the tile counts (ty, tx)."""
    b, h, wd, c = x.shape
    (ty, tx), _ = _winograd_grid((h, wd), pads)
    (lo_h, _), (lo_w, _) = pads
    xp = _pad_hw(x, ((lo_h, 2 * ty + 2 - h - lo_h), (lo_w, 2 * tx + 2 - wd - lo_w)))
    # Two passes (rows, then columns), each one stacked fusion: faster than one 16-way stack.
    rows = jnp.stack(_winograd_tiles(xp, 1, ty))                     # (4, B, ty, W', C)
    v = jnp.stack(_winograd_tiles(rows, 3, tx), axis=1)              # (4, 4, B, ty, tx, C)
    return v.reshape(16, b * ty * tx, c), (ty, tx)


def _winograd_chunks(batch: int, tiles: int, channels: int, itemsize: int) -> tuple[int, int]:
    """(number of chunks, images per chunk) for F(2x2, 3x3) over ``batch`` images of ``tiles``
    tiles: chunks whose transformed tiles, (16, images * tiles, ``channels``), take about
    :data:`_WINOGRAD_CHUNK_BYTES`, so that the transform's output and the matmuls' stay in the
    last-level cache between the three steps instead of making a round trip through memory each
    (on the large maps of ResNet-18's first stages these round trips cost more than the 9/4
    fewer multiplies gain), while each chunk's matmuls stay large enough for Eigen to run them
    on every core. The last chunk is filled up with zero images."""
    want = max(1, _WINOGRAD_CHUNK_BYTES // (16 * tiles * channels * itemsize))
    n = -(-batch // want)
    return n, -(-batch // n)


def _split_batch(arrays, n: int, size: int) -> list[Array]:
    """Each of ``arrays`` (equal leading batch B <= n * size) zero-padded to n * size rows and
    reshaped to (n, size, ...)."""
    return [jnp.pad(a, ((0, n * size - a.shape[0]),) + ((0, 0),) * (a.ndim - 1)).reshape(
        n, size, *a.shape[1:]) for a in arrays]


def depth_first_images(batch: int, in_hw, channels: int, dtype=jnp.float32, *,
                       ynnpack: bool | None = None) -> int | None:
    """How many images at a time a network's first layers should run, where that pays: the
    images per chunk of Winograd's form (:func:`_winograd_chunks`) for a 3x3 SAME layer with
    ``channels`` input and output channels on ``in_hw`` maps, if the fast path is on, would take
    that layer (:func:`_winograd_pay`) and would split ``batch`` into several chunks; else None.

    Running the layers on those maps (a ResNet's stem and first stage) over chunks of images, the
    whole block sequence per chunk (:func:`map_images`, depth first), rather than each layer over
    the whole batch with each convolution chunked on its own, keeps the batch norms, ReLUs and
    residual sums of those maps in cache too and leaves the convolutions unchunked. Exact: the
    images do not interact (inference mode; batch statistics would). ``ynnpack``: as for
    :func:`_winograd_pay`.

    Measured on the 2-core EPYC VM, one host device, 2026-12-06, against the same ops with the
    first stage layer by layer, interleaved: ResNet-18 at batch 128 (``python -m
    experiments.benchmarks.step_speed --models preact_resnet18 --repeats 5 --host_devices 1
    --compare_no_depth_first --out results/step_speed_depth_first_resnet_1dev.json``) forward
    262.3 -> 243.8 ms (1.08x), PGD step 529.0 -> 485.7 ms (1.09x), PGD-10 1.06x (the train
    step, in training mode, does not take it); IG and SmoothGrad at 16 images per call
    (``python -m experiments.benchmarks.attributions --models preact_resnet18 --skip-float64
    --skip-memory --repeats 5 --compare_no_depth_first --out
    results/attributions_depth_first_resnet_1dev.json``) 3.11 -> 2.89 s (1.08x) and 1.59 ->
    1.49 s (1.07x)."""
    if not is_enabled() or batch <= 1:
        return None
    w_shape = (3, 3, channels, channels)
    if not _winograd_pay(tuple(in_hw), w_shape, (1, 1), ((1, 1), (1, 1)), (1, 1), "forward",
                         ynnpack=ynnpack):
        return None
    (ty, tx), _ = _winograd_grid(tuple(in_hw), ((1, 1), (1, 1)))
    n, size = _winograd_chunks(batch, ty * tx, channels, jnp.dtype(dtype).itemsize)
    return size if n > 1 else None


def map_images(fn, x: Array, size: int) -> Array:
    """``fn(x)`` for a function whose images do not interact, computed over chunks of ``size``
    images (a ``lax.map``; the last chunk filled up with zero images, dropped from the result):
    (B, ...) -> (B, ...)."""
    b = x.shape[0]
    n = -(-b // size)
    y = lax.map(fn, _split_batch([x], n, size)[0])
    return y.reshape(n * size, *y.shape[2:])[:b]


def _winograd_conv(x: Array, w: Array, pads, precision, *, flipped: bool = False) -> Array:
    """A 3x3 stride-1 convolution, ``x`` (B, H, W, C) and ``w`` (3, 3, C, O) HWIO ->
    (B, Ho, Wo, O), by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016): each 4x4 input
    tile (stride 2) and the kernel are transformed (adds only), the 16 tile positions are 16
    (B*T, C) @ (C, O) matmuls in one batched ``dot_general`` (4 multiplies per output and channel
    pair instead of 9), and each 2x2 output tile is the inverse transform of its 16 products.
    The batch goes through in chunks of images (:func:`_winograd_chunks`, a ``lax.map``) so that
    the transformed tiles stay in cache. Odd output sizes compute one extra row/column of tiles
    and crop it. ``flipped``: convolve
    with ``w`` flipped spatially and transposed (``w`` is (3, 3, O, C), the kernel of the
    convolution whose input gradient this is): the flip is a reordering of the kernel rows in the
    transform and the transpose the matmuls' contracted dimension, so no transposed copy of the
    kernel is made. Plain JAX: every order of differentiation works (the fast path
    differentiates it through :data:`conv_p`'s rules)."""
    b = x.shape[0]
    (ty, tx), (ho, wo) = _winograd_grid(x.shape[1:3], pads)
    taps = (2, 1, 0) if flipped else (0, 1, 2)
    u = jnp.stack([t for row in _sandwich(_WINOGRAD_G, [[w[i, j] for j in taps] for i in taps])
                   for t in row])                                     # (16, C, O) or (16, O, C)
    out_channels = u.shape[1 if flipped else 2]

    def chunk(xc):
        v, _ = _winograd_input_tiles(xc, pads)
        m = lax.dot_general(v, u,
                            (((2,), (2 if flipped else 1,)), ((0,), (0,))),
                            precision=precision).reshape(4, 4, xc.shape[0], ty, tx, -1)
        y = jnp.stack([jnp.stack(row) for row in _sandwich(
            _WINOGRAD_AT, [[m[i, j] for j in range(4)] for i in range(4)])])  # (2, 2, B, ty, tx, O)
        y = y.transpose(2, 3, 0, 4, 1, 5).reshape(xc.shape[0], 2 * ty, 2 * tx, -1)
        return y[:, :ho, :wo]

    n, size = _winograd_chunks(b, ty * tx, max(x.shape[-1], out_channels), x.dtype.itemsize)
    return chunk(x) if n == 1 else map_images(chunk, x, size)


def _winograd_kernel_grad(x: Array, g: Array, pads, precision) -> Array:
    """The kernel gradient d<g, conv(x, w)>/dw of a convolution :func:`_winograd_applies` to,
    ``x`` (B, H, W, C) and ``g`` (B, Ho, Wo, O) -> (3, 3, C, O), in Winograd's domain: the
    transposed output transform spreads each 2x2 tile of ``g`` over the 16 tile positions
    (A g A^T), 16 (C, B*T) @ (B*T, O) matmuls contract it with the input tiles (B^T d B), and
    G^T (.) G maps the 4x4 result back to the 3x3 kernel: 4 multiplies per output, input and
    output channel instead of 9. The batch goes through in chunks (:func:`_winograd_chunks`, a
    ``lax.scan`` summing the chunks' 4x4 products)."""
    c, (b, ho, wo, o) = x.shape[-1], g.shape
    (ty, tx), _ = _winograd_grid(x.shape[1:3], pads)
    a = tuple(zip(*_WINOGRAD_AT, strict=True))                        # A, 4 x 2

    def chunk(xc, gc):
        v, _ = _winograd_input_tiles(xc, pads)
        gt = jnp.pad(gc, ((0, 0), (0, 2 * ty - ho), (0, 2 * tx - wo), (0, 0))).reshape(
            gc.shape[0], ty, 2, tx, 2, o)
        m = jnp.stack([jnp.stack(row) for row in _sandwich(
            a, [[gt[:, :, i, :, j] for j in range(2)] for i in range(2)])])  # (4, 4, B, ty, tx, O)
        return lax.dot_general(v, m.reshape(16, -1, o), (((1,), (1,)), ((0,), (0,))),
                               precision=precision)                   # (16, C, O)

    n, size = _winograd_chunks(b, ty * tx, max(c, o), x.dtype.itemsize)
    if n == 1:
        du = chunk(x, g)
    else:
        du, _ = lax.scan(lambda acc, xg: (acc + chunk(*xg), None),
                         jnp.zeros((16, c, o), jnp.result_type(x, g)), _split_batch([x, g], n, size))
    du = du.reshape(4, 4, c, o)
    g_t = tuple(zip(*_WINOGRAD_G, strict=True))                       # G^T, 3 x 4
    return jnp.stack([jnp.stack(row) for row in _sandwich(
        g_t, [[du[i, j] for j in range(4)] for i in range(4)])])


def _winograd_input_grad(g: Array, w: Array, pads, precision) -> Array:
    """The input gradient of a convolution :func:`_winograd_applies` to, ``g`` (B, Ho, Wo, O) ->
    (B, H, W, C): ``g`` convolved with the flipped kernel transposed to HWIO, padded by 2 - pad on
    each side, itself a 3x3 stride-1 convolution computed by :func:`_winograd_conv`."""
    return _winograd_conv(g, w, tuple((2 - lo, 2 - hi) for lo, hi in pads), precision,
                          flipped=True)


def _input_grad(g, w, x_hw, strides, pads, dilation, precision):
    """The convolution's derivative w.r.t. its input, ``g`` (B, Ho, Wo, O) -> (B, H, W, C): ``g``
    dilated by the strides, convolved with the spatially flipped kernel transposed to HWIO; for
    strides above 1, one stride-1 convolution per output phase (:func:`_phases_pay`,
    :func:`_phase_input_grad`).

    JAX's own transpose rule gives the same convolution with the kernel's in/out dimensions swapped
    in the dimension numbers instead (``01oi``). Inside a ``while`` loop (every attack loop) XLA:CPU
    keeps that form and runs it about 2.5x slower than in straight-line code, where it transposes
    the kernel once; the explicit transpose here gives the fast form in both. It is the
    implementation of :data:`conv_input_p`."""
    if _phases_pay(strides, dilation):
        return _phase_input_grad(g, w, x_hw, strides, pads, precision)
    return _dilated_input_grad(g, w, x_hw, strides, pads, dilation, precision)


def _dilated_input_grad(g, w, x_hw, strides, pads, dilation, precision):
    """:func:`_input_grad` as one convolution of the stride-dilated ``g`` (any stride)."""
    wt = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    pads_t = []
    for n, k, d, s, (lo, _), o in zip(x_hw, w.shape[:2], dilation, strides, pads, g.shape[1:3],
                                      strict=True):
        kd = (k - 1) * d + 1
        pads_t.append((kd - 1 - lo, n + lo - (o - 1) * s - 1))
    return lax.conv_general_dilated(g, wt, (1, 1), pads_t, lhs_dilation=strides,
                                    rhs_dilation=dilation, dimension_numbers=_NHWC,
                                    precision=precision)


def _column_kernel_grad(v, ct, w_shape, strides, pads, dilation, precision):
    """d<ct, conv(v, w)>/dw as kw matmuls: for each kernel column j, the kh row-shifted views of
    the padded input that column's taps see are concatenated along channels, (B*Ho*Wo, kh*C), and
    contracted with ``ct`` (B*Ho*Wo, O) in one ``dot_general`` -> (kh, C, O).

    XLA:CPU runs a concatenation of kh slices along channels and a matmul with kh*C rows much
    faster than either its backward-filter convolution or one (C, B*Ho*Wo) @ (B*Ho*Wo, O) matmul
    per tap (whose strided slices it fuses into the dot), and faster than im2col over all kh*kw
    taps (see :func:`_kernel_grad_method` for the measurements)."""
    kh, kw, c, o = w_shape
    (sh, sw), (dh, dw) = strides, dilation
    xp = _pad_hw(v, pads)
    b, hp = xp.shape[:2]
    ho, wo = ct.shape[1:3]
    g = ct.reshape(-1, o)
    cols = []
    for j in range(kw):
        xj = lax.slice(xp, (0, 0, j * dw, 0), (b, hp, j * dw + (wo - 1) * sw + 1, c),
                       (1, 1, sw, 1))
        p = jnp.concatenate(
            [lax.slice(xj, (0, i * dh, 0, 0), (b, i * dh + (ho - 1) * sh + 1, wo, c), (1, sh, 1, 1))
             for i in range(kh)], axis=-1)
        cols.append(lax.dot_general(p.reshape(-1, kh * c), g, (((0,), (0,)), ((), ())),
                                    precision=precision).reshape(kh, c, o))
    return jnp.stack(cols, axis=1).astype(ct.dtype)


# Kernels that cover most of their feature map (SmallGAP's 7x7 kernel on its 7x7 map) are run
# as one matmul per output row (:func:`_rows_conv`) when that needs at most this fraction of the
# multiply-adds of XLA's convolution, which computes every tap, the padding's zeros included.
_ROWS_MAX_FLOP_RATIO = 0.8
_ROWS_MAX_OUT_ROWS = 32


def _rows_flop_ratio(in_hw, k_hw, strides, pads, dilation) -> float:
    """Multiply-adds of :func:`_rows_conv` / those of a convolution over every kernel tap
    (inf where the row form does not apply: strides or dilation other than 1, many rows)."""
    (h, w), (kh, kw), (lo, hi) = in_hw, k_hw, pads[0]
    ho = h + lo + hi - kh + 1
    if tuple(strides) != (1, 1) or tuple(dilation) != (1, 1) or not 0 < ho <= _ROWS_MAX_OUT_ROWS:
        return float("inf")
    row_pairs = sum(max(0, min(h, i - lo + kh) - max(0, i - lo)) for i in range(ho))
    return w * row_pairs / (ho * kh * kw)


def _rows_pay(in_hw, k_hw, strides, pads, dilation) -> bool:
    """Whether a convolution runs as :func:`_rows_conv` (forward, input and kernel gradients):
    where it needs at most ``_ROWS_MAX_FLOP_RATIO`` of the convolution's multiply-adds *and* each
    host device has at least two cores (one device on this 2-core machine).

    XLA:CPU ran the convolutions of these models on one thread here (a layer took the same time
    pinned to one core with ``taskset``: YNNPACK's convolutions), while its matmuls use every core.
    With Eigen's threaded convolutions, which jaxadv now selects on such a device
    (:func:`jaxadv.devices.set_cpu_convolution_flags`), the row form still pays on that layer:
    forward / input / kernel gradient 11.1 / 11.1 / 11.2 ms XLA against 9.1 / 8.8 / 9.0 (EPYC VM,
    2026-12-05, results/conv_forms_eigen_1dev.json). SmallGAP's 7x7 kernel
    on its 7x7 map (ratio 0.755) on one host device, 2-core Xeon VM, 2026-12-04, batch 128,
    interleaved medians, row form against the fast path without it (``python -m
    experiments.benchmarks.step_speed --models smallgap,poolgap --repeats 7 --host_devices 1
    --compare_no_rows``, results/step_speed_gap_1dev.json, ``speedup_vs_no_rows``): forward 1.05x,
    PGD step 1.65x (41.3 -> 25.0 ms), PGD-10 1.67x, train step 1.33x; PoolGAP has no such layer
    (0.96-1.26x: noise). With the batch split over two host devices on the same two cores each
    device's matmuls get one core and the gain is gone (development measurements with the rule
    forced: PGD step 1.03x, PGD-10 0.99x, forward 0.90x; train step 0.57x with the row form's
    kernel gradient, whose per-row partial sums over the sharded batch are all-reduced), hence
    the core count."""
    if _rows_flop_ratio(in_hw, k_hw, strides, pads, dilation) > _ROWS_MAX_FLOP_RATIO:
        return False
    return (os.cpu_count() or 1) >= 2 * jax.local_device_count()


def _row_matrices(w: Array, in_w: int, out_w: int, left: int) -> Array:
    """(kh, kw, C, O) -> (kh, W*C, Wo*O): for each kernel row, the matrix that maps a padded-free
    input row (W*C) to an output row (Wo*O), block (b, j) = w[row, b - j + left] or zero. Built by
    copying kernel slices (no arithmetic), so its derivative is slicing and adding."""
    kh, kw, c, o = w.shape
    zero = jnp.zeros((kh, c, o), w.dtype)
    rows = []
    for b in range(in_w):
        blocks = [w[:, b - j + left] if 0 <= b - j + left < kw else zero for j in range(out_w)]
        rows.append(jnp.stack(blocks, axis=2))  # (kh, C, Wo, O)
    return jnp.stack(rows, axis=1).reshape(kh, in_w * c, out_w * o)


def _rows_conv(x: Array, w: Array, pads, precision) -> Array:
    """A stride-1 convolution as one matmul per output row: output row i is the concatenation of
    the input rows it sees, (B, n_i*W*C), times the matching kernel rows' matrices from
    :func:`_row_matrices`, (n_i*W*C, Wo*O). Rows of zero padding are never multiplied; columns
    of padding are only the zero blocks of those matrices. Plain JAX, so autodiff gives matmuls
    for the input and kernel gradients too."""
    b, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    (lo, hi), (left, right) = pads
    ho, wo = h + lo + hi - kh + 1, wd + left + right - kw + 1
    m = _row_matrices(w, wd, wo, left)
    xr = x.reshape(b, h, wd * c)
    out = []
    for i in range(ho):
        a0, a1 = max(0, i - lo), min(h, i - lo + kh)
        if a1 <= a0:
            out.append(jnp.zeros((b, wo * o), x.dtype))
            continue
        out.append(lax.dot(xr[:, a0:a1].reshape(b, -1),
                           m[a0 - i + lo:a1 - i + lo].reshape(-1, wo * o), precision=precision))
    return jnp.stack(out, axis=1).reshape(b, ho, wo, o)


# Convolutions of images with at most this many channels (the first layer of every model: gray or
# RGB inputs) use im2col for their input gradient, and for their forward pass and kernel gradient
# from 2 channels on (:func:`_patches_pay`).
_PATCHES_MAX_CHANNELS = 4


def _patches_pay(channels: int, op: str) -> bool:
    """Whether the convolution's ``op`` ("forward", "input" gradient or "kernel" gradient) uses
    :func:`_patches_conv` (im2col) for an input of ``channels`` channels.

    XLA:CPU's convolutions of 1-3 channel images run far below its matmul speed. Single layers,
    batch 128, one host device, 2-core Xeon VM, 2026-12-04, XLA / im2col ms (``python -m
    experiments.benchmarks.kernel_grad --forms --batches 128 --repeats 7 --out
    results/conv_forms.json``): input gradient of PoolGAP's 28x28x1->32 5x5 layer 10.0 / 2.0, of
    ResNet-18's 32x32x3->64 stem 34.7 / 4.6, of SmallGAP's 28x28x1->16 first layer 1.12 / 0.83;
    the stem's forward 23.1 / 15.2 and kernel gradient 21.5 / 8.0. One-channel forward passes and
    kernel gradients are mixed (forward: SmallGAP 1.61 / 0.44, PoolGAP 1.86 / 3.87; kernel 0.40 /
    0.42 and 4.09 / 3.88), so XLA keeps those; layers of 16 channels and more lose (PoolGAP's
    14x14x32->64 forward 25.1 / 58.3, input gradient 25.5 / 48.2)."""
    if op == "input":
        return channels <= _PATCHES_MAX_CHANNELS
    return 2 <= channels <= _PATCHES_MAX_CHANNELS


def _patches_conv(x: Array, w: Array, strides, pads, dilation, precision) -> Array:
    """The convolution as im2col: the kh*kw strided views of the padded input concatenated along
    channels, (B*Ho*Wo, kh*kw*C) @ (kh*kw*C, O). Plain JAX: its transpose in the input is one
    matmul and the adds of the shifted views (col2im), in the kernel patches^T @ g."""
    kh, kw, c, o = w.shape
    xp = _pad_hw(x, pads)
    out_hw = tuple((n - (k - 1) * d - 1) // s + 1
                   for n, k, d, s in zip(xp.shape[1:3], (kh, kw), dilation, strides, strict=True))
    p = jnp.concatenate(_tap_slices(xp, (kh, kw), strides, dilation, out_hw), axis=-1)
    y = lax.dot(p.reshape(-1, kh * kw * c), w.reshape(kh * kw * c, o), precision=precision)
    return y.reshape(x.shape[0], *out_hw, o)


@functools.cache
def _ynnpack_convolutions() -> bool:
    """Whether this process's XLA:CPU runs convolutions with YNNPACK (fixed once JAX's backends
    start: :func:`jaxadv.devices.convolution_backend`)."""
    from jaxadv.devices import convolution_backend

    return convolution_backend() == "ynnpack"


# YNNPACK takes a convolution only where its input or output channels reach this many (XLA
# leaves those with at most 16 of both to Eigen).
_YNNPACK_MIN_CHANNELS = 17


def _taps_pay(channels: int, out_channels: int, op: str, *, ynnpack: bool | None = None) -> bool:
    """Whether the convolution's ``op`` runs as :func:`_taps_conv`, the sum over kernel taps of
    the shifted input times that tap's weights: the forward pass of one-channel images, which XLA
    compiles to one loop of broadcast multiply-adds, unless YNNPACK runs the convolution (this
    process's convolutions are YNNPACK's, :func:`_ynnpack_convolutions`, and it has at least 17
    output channels: PoolGAP's first layer on two host devices). So SmallGAP's first layer
    (16 outputs) always, PoolGAP's (32) where convolutions run on Eigen (one host device).

    Single layers, batch 128, one host device, EPYC VM, 2026-12-05, ms with Eigen's / YNNPACK's
    convolutions (``python -m experiments.benchmarks.kernel_grad --forms --batches 128 --repeats 7
    --conv_backend eigen`` and ``ynnpack``, results/conv_forms_taps_eigen.json and
    conv_forms_taps_ynnpack.json): PoolGAP's 28x28x1->32 5x5 layer, XLA's convolution 5.15 / 2.05,
    im2col 3.99 / 3.92, taps 1.44 / 1.43; SmallGAP's 28x28x1->16 4x4 stride 2, 1.56 / 0.99, 0.60
    / 0.66, 0.31 / 0.21. Their gradients do not gain as taps (PoolGAP's input gradient 3.08 /
    3.17 against im2col's 2.03 / 3.44, kernel gradient 5.91 / 10.25 against XLA's 1.89 / 6.11),
    and with more channels the tap products stay matmuls, one per tap: the forward pass at C = 1
    only. (The picks in those files follow this rule.)

    Whole ops, batch 128, same machine and day, taps for every one-channel forward pass against
    none (``python -m experiments.benchmarks.step_speed --models smallgap,poolgap --repeats 9
    --host_devices N --compare_no_taps``, ``speedup_vs_no_taps`` in
    results/step_speed_taps_Ndev.json), forward / PGD step / PGD-10 / train step: one device
    (Eigen) SmallGAP 1.66 / 1.24 / 1.23 / 1.06x, PoolGAP 0.98 / 1.07 / 1.01 / 1.04x; two devices
    (YNNPACK) SmallGAP 1.37 / 1.27 / 1.26 / 1.06x, PoolGAP 1.08 / 0.95 / 0.90 / 0.99x, hence
    YNNPACK's PoolGAP layer is left to it. ``ynnpack`` overrides the process's library (the
    benchmarks' per-program compile options)."""
    if op != "forward" or channels != 1:
        return False
    if ynnpack is None:
        ynnpack = _ynnpack_convolutions()
    return out_channels < _YNNPACK_MIN_CHANNELS or not ynnpack


def _outside_library_fusions(y: Array) -> Array:
    """``y`` unchanged (NaN and infinities included) through a clamp to [-inf, inf], which XLA
    keeps and which YNNPACK's fusions cannot take (clamp is not among its operations). XLA:CPU
    grows a YNNPACK fusion from each dot through every operation YNNPACK supports; in an eval
    forward pass that is the whole model, and YNNPACK ran the tap sum's 25 broadcast
    multiply-adds (and PoolGAP's 14x14x32->64 convolution with them) far slower than XLA's own
    loop and Eigen do (development measurement, PoolGAP forward pass at batch 128 on one device:
    36.6 ms without this against 20.3 ms without the taps,
    results/step_speed_taps_nobarrier_1dev.json; with it 18.8 against 18.3,
    results/step_speed_taps_1dev.json). Used on the forward pass only, where the primitive's own
    transpose rules give the gradients, so the clamp is never differentiated."""
    return lax.clamp(jnp.asarray(-jnp.inf, y.dtype), y, jnp.asarray(jnp.inf, y.dtype))


def _matmul_form(in_hw, w_shape, strides, pads, dilation, precision, op: str):
    """The convolution as a function ``(x, w) -> y`` in the matmul form that pays for ``op``
    ("forward", "input" or "kernel" gradient): :func:`_rows_conv` (:func:`_rows_pay`), else
    :func:`_taps_conv` (:func:`_taps_pay`), else :func:`_patches_conv` (:func:`_patches_pay`);
    None where XLA's convolution is kept. The gradients are that function's transposes."""
    if _rows_pay(in_hw, w_shape[:2], strides, pads, dilation):
        return lambda x, w: _rows_conv(x, w, pads, precision)
    if _taps_pay(w_shape[2], w_shape[3], op):
        def taps(x, w):
            y = _outside_library_fusions(_taps_conv(x, w, strides, pads, dilation, precision, None))
            return _stored(y) if _taps_stored_pay() else y
        return taps
    if _patches_pay(w_shape[2], op):
        return lambda x, w: _patches_conv(x, w, strides, pads, dilation, precision)
    return None


def _taps_stored_pay() -> bool:
    """Whether the tap sum's output (:func:`_taps_conv`, forward pass of one-channel images)
    goes through :func:`_stored`, so that its consumers read it instead of recomputing the
    taps: XLA fused PoolGAP's 25-tap sum into the max pool's first-maximum mask of the backward
    pass (about 3.5 ms of a 38 ms train step in a profile, 2026-12-05). Against the tap sum
    recomputed by its consumers, same runs, 2-core EPYC VM, 2026-12-05 evening (``python -m
    experiments.benchmarks.step_speed --models smallgap,poolgap --repeats 11 --host_devices 1
    --compare_no_taps_stored``, results/step_speed_taps_stored_1dev.json,
    ``speedup_vs_no_taps_stored``), forward / PGD step / PGD-10 / train step: PoolGAP 0.93 /
    1.16 / 1.10 / 1.14x (a first run 1.02 / 1.11 / 1.13 / 1.11x); SmallGAP, whose ops take 1-6
    ms, 0.82 / 1.40 / 1.07 / 0.85x (first run 1.60 / 1.06 / 0.95 / 0.99x: noise of that size).
    On two devices (``--repeats 9 --host_devices 2``, results/step_speed_taps_stored_2dev.json),
    where only SmallGAP's layer takes the taps: 0.88-1.05x."""
    return True


def _stored_pay(channels: int) -> bool:
    """Whether XLA's kernel gradient reads its input through :func:`_stored` (inputs with more
    than one channel; a one-channel input's transpose to channels-first is a reshape).

    XLA:CPU computes a convolution's kernel gradient as a convolution of the input with the
    batch and channel dimensions swapped, so it first transposes the input (B, H, W, C) to
    (C, H, W, B); into that transpose it fuses whatever element-wise operations produced the
    input (in PreAct ResNet-18 the batch norm and ReLU in front of every convolution), which it
    then recomputes in the transposed loop order. For a (128, 32, 32, 64) activation that loop
    took 35 ms against 11 ms for a transpose of the stored activation (development measurement,
    2026-12-05), and the five such transposes of ResNet-18's first stage 43-77 ms each in a
    profile of its train step (``jax.profiler``). Train steps against the fast path without it,
    batch 128, 2-core EPYC VM, 2026-12-05 evening (``python -m experiments.benchmarks.step_speed
    --models preact_resnet18 --repeats 5 --host_devices 1 --compare_no_stored``,
    results/step_speed_stored_resnet_1dev.json, ``speedup_vs_no_stored``; ``--models
    smallgap,poolgap --repeats 7 --host_devices N``, results/step_speed_stored_gap_Ndev.json;
    ``--models preact_resnet18 --repeats 3 --host_devices 2``,
    results/step_speed_stored_resnet_2dev.json): ResNet-18 1.12x on one device (1,621 -> 1,443
    ms), 1.01x on two (YNNPACK); SmallGAP 1.54x / 1.43x on one / two devices; PoolGAP 0.97x /
    1.03x. The forward pass and input gradients compute no kernel gradient and are unchanged."""
    return channels > 1


def _stored(v: Array) -> Array:
    """``v`` unchanged, as XLA's stored buffer: passed through a conditional whose predicate is
    true for every value of ``v``'s first element (NaN included: ``v0 == v0 or v0 != v0``) but
    which XLA cannot fold, and through which it does not fuse. Element-wise producers of ``v``
    are then computed once, in the forward pass, not again inside the transpose in front of the
    kernel-gradient convolution (:func:`_stored_pay`). The other branch never runs. The result
    is ``v`` bit for bit, so gradients are unchanged (tests compare them with the standard
    lowering's)."""
    v0 = v.reshape(-1)[0]
    return lax.cond((v0 == v0) | (v0 != v0), lambda v: v, lambda v: -v, v)


def _kernel_grad(v, ct, w_aval, static, dw_method):
    """d<ct, conv(v, w)>/dw: the kernel gradient of the convolution of ``v``: in Winograd's
    domain where that pays (:func:`_winograd_pay`, :func:`_winograd_kernel_grad`), else the
    transpose of
    :func:`_rows_conv` or :func:`_patches_conv` where those forms pay (:func:`_rows_pay`,
    :func:`_patches_pay`), otherwise by ``dw_method``:
    ``"columns"`` (:func:`_column_kernel_grad`), ``"taps"`` (one matmul per tap, :func:`_taps_conv`)
    or ``"xla"`` (XLA's backward-filter convolution, reading ``v`` through :func:`_stored` where
    :func:`_stored_pay`)."""
    if _winograd_pay(v.shape[1:3], w_aval.shape, *static[:3], "kernel"):
        return _winograd_kernel_grad(v, ct, static[1], static[3])
    w_struct = jax.ShapeDtypeStruct(w_aval.shape, w_aval.dtype)
    conv = _matmul_form(v.shape[1:3], w_aval.shape, *static, "kernel")
    if conv is not None:
        return jax.linear_transpose(lambda w: conv(v, w), w_struct)(ct)[0]
    if dw_method == "columns":
        return _column_kernel_grad(v, ct, w_aval.shape, *static)
    if dw_method == "taps":
        return jax.linear_transpose(lambda w: _taps_conv(v, w, *static, None), w_struct)(ct)[0]
    if _stored_pay(v.shape[-1]):
        v = _stored(v)
    return jax.linear_transpose(lambda w: _std_conv(v, w, *static, None), w_struct)(ct)[0]


# Two bilinear primitives, each the other's transpose in its first argument:
#   conv_p(v, w)        = the convolution of v (B, H, W, C) with w -> (B, Ho, Wo, O)
#   conv_input_p(g, w)  = its transpose in v, :func:`_input_grad` (B, Ho, Wo, O) -> (B, H, W, C)
# JAX's own rules would give the transpose of a transpose as a convolution with swapped kernel
# dimensions (``01oi``), which XLA:CPU runs 2.5-10x slower inside loops (attack loops, and the
# double backprop of IG-Norm's inner attack); with explicit transposes every order of forward and
# reverse differentiation stays in the fast forms. Their kernel transposes are the kernel gradient
# (per tap where it pays): d<c, conv_input(g, w)>/dw = d<g, conv(c, w)>/dw.
conv_p = Primitive("jaxadv_conv")
conv_input_p = Primitive("jaxadv_conv_input")


def _conv_impl(v, w, *, strides, pads, dilation, precision, in_hw, dw_method):
    del in_hw, dw_method
    if _winograd_pay(v.shape[1:3], w.shape, strides, pads, dilation, "forward"):
        return _winograd_conv(v, w, pads, precision)
    conv = _matmul_form(v.shape[1:3], w.shape, strides, pads, dilation, precision, "forward")
    if conv is not None:
        return conv(v, w)
    return _std_conv(v, w, strides, pads, dilation, precision, None)


def _conv_input_impl(g, w, *, strides, pads, dilation, precision, in_hw, dw_method):
    del dw_method
    if _winograd_pay(in_hw, w.shape, strides, pads, dilation, "input"):
        return _winograd_input_grad(g, w, pads, precision)
    conv = _matmul_form(in_hw, w.shape, strides, pads, dilation, precision, "input")
    if conv is not None:
        x_struct = jax.ShapeDtypeStruct((g.shape[0], *in_hw, w.shape[2]), g.dtype)
        return jax.linear_transpose(lambda x: conv(x, w), x_struct)(g)[0]
    return _input_grad(g, w, in_hw, strides, pads, dilation, precision)


def _static(params):
    return (params["strides"], params["pads"], params["dilation"], params["precision"])


def _conv_transpose_v(ct, v, w, **params):
    return conv_input_p.bind(ct, w, **params)


def _conv_transpose_w(ct, v, w, **params):
    return _kernel_grad(v, ct, w.aval, _static(params), params["dw_method"])


def _conv_input_transpose_g(ct, g, w, **params):
    return conv_p.bind(ct, w, **params)


def _conv_input_transpose_w(ct, g, w, **params):
    return _kernel_grad(ct, g, w.aval, _static(params), params["dw_method"])


def _batch_rule(prim, impl):
    def rule(args, dims, **params):
        (v, w), (dv, dw) = args, dims
        if dw is not None:  # batched kernels (ensembles of weights): the standard lowering
            return jax.vmap(functools.partial(impl, **params), in_axes=(dv, dw))(v, w), 0
        # The mapped axis goes *after* the batch axis: (B, K, ...) -> (B * K, ...) keeps each
        # example's rows together, so a batch sharded over devices stays where it is (JAX's
        # convolution rule merges K-major and makes XLA reshuffle the shards with all-to-alls).
        v = jnp.moveaxis(v, dv, 1)
        b, k = v.shape[:2]
        out = prim.bind(v.reshape(b * k, *v.shape[2:]), w, **params)
        return out.reshape(b, k, *out.shape[1:]), 1
    return rule


for _prim, _impl, _lhs, _rhs in ((conv_p, _conv_impl, _conv_transpose_v, _conv_transpose_w),
                                 (conv_input_p, _conv_input_impl, _conv_input_transpose_g,
                                  _conv_input_transpose_w)):
    _prim.def_impl(_impl)
    _prim.def_abstract_eval(
        lambda v, w, _impl=_impl, **params: v.update(
            shape=jax.eval_shape(functools.partial(_impl, **params), v, w).shape))
    mlir.register_lowering(_prim, mlir.lower_fun(_impl, multiple_results=False))
    ad.defbilinear(_prim, _lhs, _rhs)
    batching.primitive_batchers[_prim] = _batch_rule(_prim, _impl)


def _kernel_grad_method(x_shape, w_shape, strides) -> str:
    """How :data:`conv_p` computes its kernel gradient: ``"columns"`` (:func:`_column_kernel_grad`)
    where this process runs YNNPACK's convolutions, for kernels of at most 3x3 with at least 32
    input channels and at least 65,536 output rows (batch x height x width) per device, the batch
    taken as split over all ``jax.device_count()`` devices (how jaxadv's data mesh shards it);
    else ``"xla"`` (XLA's backward-filter convolution).

    Single layers on one device (quiet 2-core Xeon VM, 2026-12-03, ``python -m
    experiments.benchmarks.kernel_grad --out results/kernel_grad.json``; XLA time / columns time
    of the jitted kernel gradient of one layer, forward included, batch 16 / 64 / 128): the 2-conv
    CNN's 26x26x32->64 3x3 layer 1.62 / 1.32 / 1.39; PreAct ResNet-18's 32x32x64->64 1.04 / 1.25
    / 1.24, 16x16x128->128 0.83 / 1.09 / 1.23, its 3-channel stem 0.84 / 1.80 / 1.26; PoolGAP's
    28x28x1->32 5x5 0.99 / 1.56 / 1.90, 14x14x32->64 5x5 0.63 / 1.07 / 1.07; SmallGAP's 7x7 kernel
    on its 7x7 map 0.89 / 0.93 / 0.66. The per-tap matmuls (``"taps"``, the previous method) were
    slower than ``"columns"`` on 27 of the 30 shapes.

    Whole train steps (batch 128, interleaved medians, same machine) show why the rule is
    stricter than those layers suggest: with the batch split over several host devices each
    device's layers run on fewer threads and the concatenations cost more than they save: a
    looser rule tried first ("columns" for kernels up to 5x5 with >= 8,192 rows per device) made
    PoolGAP's train step about 30 % slower on two devices and ResNet-18's 1.5x slower on eight
    (development measurements, not reproducible with the committed rule). With this
    rule (``python -m experiments.benchmarks.kernel_grad --train_steps poolgap preact_resnet18
    --host_devices N``, results/kernel_grad_train_steps_Ndev.json): ResNet-18 3.12 vs 3.73 s on
    one device (1.20x), 2.72 vs 2.75 s on two (1.01x), unchanged on eight (every layer on XLA);
    PoolGAP and SmallGAP keep XLA's kernel gradient everywhere (their ratios, 0.96-1.08, are the
    run-to-run noise of identical programs).

    Those were measured against YNNPACK's convolutions, which ran on one thread. Where this
    process runs Eigen's (one host device with two cores or more,
    :func:`jaxadv.devices.set_cpu_convolution_flags`) XLA's kernel gradient wins on every layer
    and is always used (EPYC VM, 2026-12-05, batch 128, ``python -m
    experiments.benchmarks.kernel_grad --batches 128 --repeats 7 --out
    results/kernel_grad_eigen_1dev.json``, XLA time / columns time: ResNet-18's 32x32x64->64 0.50,
    16x16x128->128 0.56, the 2-conv CNN's layer 0.64; ResNet-18's train step, ``--train_steps
    preact_resnet18 --host_devices 1 --repeats 9 --out
    results/kernel_grad_train_steps_eigen_1dev.json``: 3,198 ms with the columns against 3,050
    with XLA's, 0.95x)."""
    if not _ynnpack_convolutions():
        return "xla"
    kh, kw = w_shape[:2]
    ho = -(-x_shape[1] // strides[0])
    wo = -(-x_shape[2] // strides[1])
    rows_per_device = x_shape[0] * ho * wo / max(jax.device_count(), 1)
    pays = kh * kw <= 9 and x_shape[3] >= 32 and rows_per_device >= 65536
    return "columns" if pays else "xla"


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated`` (same signature, same results); where the fast path
    is on and the case is supported, the primitive :data:`conv_p` (a slice and a matmul for 1x1
    kernels; XLA's own convolution for mixed precision and padding beyond the kernel; see the
    module docstring)."""
    standard = lambda: lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    if not is_enabled() or lhs.ndim != 4 or rhs.ndim != 4:
        return standard()
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    rhs_dilation = tuple(rhs_dilation or (1, 1))
    if (dn != _NHWC or feature_group_count != 1 or batch_group_count != 1
            or tuple(lhs_dilation or (1, 1)) != (1, 1) or rhs.shape[2] != lhs.shape[3]):
        return standard()
    strides = tuple(window_strides)
    dilated_hw = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation, strict=True)]
    pads = _pairs(padding, lhs.shape[1:3], dilated_hw, strides)
    if pads is None:
        return standard()
    static = (strides, tuple(pads), rhs_dilation, precision, preferred_element_type)
    if rhs.shape[:2] == (1, 1):
        # A 1x1 convolution is a (strided) slice and one matmul; plain autodiff gives matmuls.
        return _taps_conv(lhs, rhs, *static)
    fits = all(lo <= (k - 1) * d for (lo, _), k, d in zip(pads, rhs.shape[:2], rhs_dilation,
                                                           strict=True))
    if preferred_element_type is None and lhs.dtype == rhs.dtype and fits:
        return conv_p.bind(lhs, rhs, strides=strides, pads=tuple(pads), dilation=rhs_dilation,
                           precision=precision, in_hw=tuple(lhs.shape[1:3]),
                           dw_method=_kernel_grad_method(lhs.shape, rhs.shape, strides))
    return standard()


def _first_max_mask(blocks: Array, out: Array) -> Array:
    """(B, Ho, k, Wo, k, C) bool: the first maximum of each window in row-major window order."""
    k = blocks.shape[2]
    eq = blocks == out[:, :, None, :, None, :]
    # An element-wise pass over the k*k positions, each kept unless an earlier one was a maximum
    # (a cumulative sum over the window ran as a reduce-window, 7.5 of PoolGAP's ~90 ms PGD step).
    seen, rows = None, []
    for i in range(k):
        row = []
        for j in range(k):
            e = eq[:, :, i, :, j, :]
            row.append(e if seen is None else e & ~seen)
            seen = e if seen is None else seen | e
        rows.append(jnp.stack(row, axis=3))
    return jnp.stack(rows, axis=2)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _tiled_max_pool(x: Array, window: int) -> Array:
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // window, window, w // window, window, c), axis=(2, 4))


def _tiled_max_pool_jvp(window, primals, tangents):
    # The tangent (hence the gradient) goes to the first maximum of each window, as with
    # reduce_window's select_and_scatter_add; jnp.max's own rule would split it over ties.
    (x,), (dx,) = primals, tangents
    b, h, w, c = x.shape
    shape = (b, h // window, window, w // window, window, c)
    out = _tiled_max_pool(x, window)
    mask = _first_max_mask(x.reshape(shape), out)
    return out, jnp.sum(jnp.where(mask, dx.reshape(shape), 0), axis=(2, 4))


_tiled_max_pool.defjvp(_tiled_max_pool_jvp)


def max_pool(x: Array, *, window: int, stride: int, padding: str = "VALID") -> Array:
    """Max-pool over the spatial axes of (B, H, W, C) (same results and gradients as
    ``lax.reduce_window``)."""
    h, w = x.shape[1:3]
    if (is_enabled() and window == stride and h % window == 0 and w % window == 0
            and padding in ("VALID", "SAME")):
        return _tiled_max_pool(x, window)
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), padding)


def _window_rows(size: int, kernel: int, stride: int, dilation: int, pad_lo: int,
                 out: int) -> list[list[int]]:
    """For each kernel tap r, the input positions p = i * stride + r * dilation - pad_lo,
    0 <= i < out, that fall inside an axis of ``size`` (padding positions are zeros)."""
    rows = []
    for r in range(kernel):
        first = r * dilation - pad_lo
        i_lo = max(0, -(first // stride))                  # first i with p >= 0
        i_hi = min(out - 1, (size - 1 - first) // stride)  # last i with p < size
        rows.append([first + i * stride for i in range(i_lo, i_hi + 1)])
    return rows


def _window_sums_by_reduce(x: Array, axis: int, kernel: int, stride: int, dilation: int,
                           pad_lo: int, out: int) -> Array:
    """:func:`_window_sums` as one strided slice and one reduce per tap: the form whose
    transpose (the input gradient) XLA compiles best (broadcasts and pads, no reductions)."""
    taps = []
    for rows in _window_rows(x.shape[axis], kernel, stride, dilation, pad_lo, out):
        if not rows:
            taps.append(jnp.zeros(x.shape[:axis] + x.shape[axis + 1:], x.dtype))
            continue
        taps.append(jnp.sum(lax.slice_in_dim(x, rows[0], rows[-1] + 1, stride, axis), axis=axis))
    return jnp.stack(taps, axis=axis)


# Taps whose windows cover at most this many positions are summed with explicit adds.
_WINDOW_ADDS_MAX_ROWS = 32


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _window_sums(x: Array, axis: int, kernel: int, stride: int, dilation: int, pad_lo: int,
                 out: int) -> Array:
    """Along ``axis`` of x, for each kernel tap r (a new axis in its place, length ``kernel``),
    the sum of the input positions p = i * stride + r * dilation - pad_lo, 0 <= i < out, that
    fall inside the input (padding positions are zeros). Adds only, in an order that does not
    depend on the batch size (a 0/1 matmul did: XLA:CPU picks its dot kernel by size, and the
    rounding with it).

    The value is a chain of adds of single positions (windows of at most
    ``_WINDOW_ADDS_MAX_ROWS`` positions), which XLA fuses with the producer into one loop: as
    reduces, XLA:CPU (jaxlib 0.10) hands each tap to YNNPACK as a fusion of its own, and
    SmallGAP's 14 of them made its forward pass 1.3-1.6x slower (``step_speed
    --compare_no_window_adds``, results/step_speed_window_adds_1dev*.json). The tangent is
    :func:`_window_sums_by_reduce` of the tangent (the same linear map), so the input gradient
    is that form's transpose, a pad per tap (the add chain's has one per position: 74 against
    14 for SmallGAP's layer, ``tests/models/test_conv_mean.py``)."""
    rows = _window_rows(x.shape[axis], kernel, stride, dilation, pad_lo, out)
    if max(len(r) for r in rows) > _WINDOW_ADDS_MAX_ROWS:
        return _window_sums_by_reduce(x, axis, kernel, stride, dilation, pad_lo, out)
    taps = []
    for tap in rows:
        if not tap:
            taps.append(jnp.zeros(x.shape[:axis] + x.shape[axis + 1:], x.dtype))
            continue
        total = lax.index_in_dim(x, tap[0], axis, keepdims=False)
        for p in tap[1:]:
            total = total + lax.index_in_dim(x, p, axis, keepdims=False)
        taps.append(total)
    return jnp.stack(taps, axis=axis)


@_window_sums.defjvp
def _window_sums_jvp(axis, kernel, stride, dilation, pad_lo, out, primals, tangents):
    (x,), (t,) = primals, tangents
    return (_window_sums(x, axis, kernel, stride, dilation, pad_lo, out),
            _window_sums_by_reduce(t, axis, kernel, stride, dilation, pad_lo, out))


_FOLD_MIN_ROWS_PER_DEVICE = 64


def _fold_pay(batch: int) -> bool:
    """Whether a model takes :func:`conv_mean` (the GAP fold) for a batch of ``batch`` examples
    (``layers.conv_mean_available`` asks; the benchmarks switch it off to measure it). It needs
    1/(Ho*Wo) of the layer's multiply-adds, but its matmul has one row per example, and XLA:CPU
    computes a product of <= 32 rows with another kernel whose rounding differs (measured: the
    rows of a (B, 1568) @ (1568, 100) product equal those of the 6,400-row product for B >= 63,
    not for B <= 32). So that an example's logits do not depend on how a batch is split over
    devices (the mesh step equals the single-device step), the fold is used only where every
    device would get at least 64 rows: ``batch >= 64 * jax.device_count()``, or one device."""
    devices = jax.device_count()
    return devices == 1 or batch >= _FOLD_MIN_ROWS_PER_DEVICE * devices


def conv_mean(x: Array, kernel: Array, bias: Array | None, *, strides=(1, 1), padding="SAME",
              dilation=(1, 1), precision=None) -> Array:
    """``mean_{h,w}(conv(x, kernel) + bias)``, (B, O), without the (B, Ho, Wo, O) output map.

    A convolution is linear, so the mean of its output over positions is the kernel applied to
    the sums of the input over the positions each tap sees:
    ``mean_{i,j} out[i, j, o] = sum_{r,s,c} K[r, s, c, o] S[r, s, c] / (Ho Wo) + b[o]`` with
    ``S[r, s, c] = sum_{i,j} x_pad[i*sh + r*dh, j*sw + s*dw, c]``; S is sums of strided slices
    (``_window_sums``) and the rest one (B, kh*kw*C) @ (kh*kw*C, O) matmul. For SmallGAP's
    last layer (7x7 kernel on its 7x7 map, 32 -> 100 channels, followed directly by the GAP head)
    that is 1/49 of the convolution's multiply-adds; forward, input and kernel gradients and
    every higher order follow from plain JAX. Used by models whose feature map is a convolution
    followed only by the GAP head (``GAPClassifier.pooled_features``).

    Args:
      x: (B, H, W, C) input of the convolution (NHWC).
      kernel: (kh, kw, C, O) (HWIO).
      bias: (O,) or None.
      strides, padding, dilation: as for ``lax.conv_general_dilated`` (kernel dilation).
    Returns:
      (B, O).
    """
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[3]:
        raise ValueError(f"conv_mean takes x (B, H, W, C) and kernel (kh, kw, C, O); got "
                         f"{x.shape} and {kernel.shape}.")
    strides, dilation = tuple(strides), tuple(dilation)
    dilated = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:2], dilation, strict=True)]
    pads = _pairs(padding, x.shape[1:3], dilated, strides)
    if pads is None:
        raise ValueError(f"conv_mean: padding {padding!r} is not 'SAME', 'VALID' or two "
                         "(low, high) pairs.")
    out_hw = [(n + lo + hi - k) // s + 1
              for n, (lo, hi), k, s in zip(x.shape[1:3], pads, dilated, strides, strict=True)]
    if min(out_hw) < 1:
        raise ValueError(f"conv_mean: the kernel {kernel.shape[:2]} (dilation {dilation}) does "
                         f"not fit the padded input {x.shape[1:3]} with padding {pads}.")
    sums = x
    for axis in (1, 2):
        sums = _window_sums(sums, axis, kernel.shape[axis - 1], strides[axis - 1],
                            dilation[axis - 1], pads[axis - 1][0], out_hw[axis - 1])
    b = x.shape[0]
    out = jnp.dot(sums.reshape(b, -1), kernel.reshape(-1, kernel.shape[3]).astype(x.dtype),
                  precision=precision) / (out_hw[0] * out_hw[1])
    return out if bias is None else out + bias.astype(x.dtype)
