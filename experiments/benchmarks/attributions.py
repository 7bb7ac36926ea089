"""Attribution benchmark: jaxadv against Captum on identical weights and inputs.

    python -m experiments.benchmarks.attributions --out results/attributions.json [--quick]

``--quick`` is a smoke run of the script (a few minutes on 2 cores): batches of 32 and 4
images, 2 rounds, SmallGAP and ResNet-18 only, without the float64 references (``--float64``
adds them), the roofline's FLOP counts (``--roofline`` adds them) and with the IG-200 memory at
batch 32; its figures are not the benchmark's.

Models (same weights in both frameworks, the PyTorch twin from
``jaxadv.interop.torch_port.to_torch``, logits checked to agree first):

* ``smallgap``: Boopathy et al.'s SmallGAP, 28x28x1, the official MNIST ``adv`` checkpoint when
  ../shared/data is present (else a seeded random initialisation), on the first MNIST test images
  (else uniform noise);
* ``preact_resnet18``: PreAct ResNet-18, 32x32x3, seeded random initialisation (eval-mode batch
  norm), on uniform-noise images (CIFAR-10 needs the network);
* ``preact_resnet18_softplus``: the same network, initialisation and images with softplus in place
  of ReLU; parity only (no timing): it tells rounding at ReLU kinks from rounding in general.

Methods, each library with the same hyper-parameters on the same batch (float32):

* ``ig``: Integrated Gradients, zero baseline, 50 Gauss-Legendre points (Captum's default rule),
  each library with its default evaluation: jaxadv ``chunk_size="auto"`` (about 16 images per
  model call on CPU: 1 point at batch 16 and 128, 4 at batch 4), Captum ``internal_batch_size=None``
  (all points in one call); ``jaxadv_all_at_once_s`` times jaxadv with ``chunk_size=None`` too;
* ``smoothgrad``: NoiseTunnel/SmoothGrad of the vanilla gradient, 25 samples, stdev 0.15, jaxadv
  ``chunk_size="auto"``, Captum all samples in one call (and jaxadv all at once, as for IG);
* ``gradcam``: Grad-CAM on the last feature map (Captum ``LayerGradCam`` on a module wrapping the
  twin's ``features``, ``relu_attributions=True``);
* ``occlusion``: 8x8 patches, stride 4, fill 0 (Captum ``sliding_window_shapes=(C, 8, 8)``,
  ``strides=(C, 4, 4)``, ``perturbations_per_eval`` = all patches, as jaxadv's one call).

Parity: max |jaxadv - Captum| / max |Captum| over the batch (SmoothGrad with the same noise
samples injected into Captum's NoiseTunnel). ``error_vs_float64`` gives, for IG and SmoothGrad,
each library's float32 error against a float64 Captum run on the ``.double()`` twin, which tells
float32 rounding (in either library) from a real disagreement; ``parity_float64`` is the parity
of every method with both libraries in float64 (jaxadv under ``jax.enable_x64``, the same
weights cast; Captum keeps two float32 steps in its float64 runs, IG's quadrature weights
(``torch.tensor(step_sizes).float()``) and occlusion's result (``.float() / weight``), which bound
those two near 1e-8), and ``images_over_1e-4`` lists the images whose float32 error passes 1e-4, for
jaxadv against Captum and for Captum's float32 against its float64. ``relu_kinks`` (ReLU models
with batch norm: PreAct ResNet-18) gives per image the number of ReLU inputs whose sign differs
between jaxadv's float32 and float64 forward passes at the image, next to the float32 input
gradient's error against float64 on that image: a float32 map can only be as close to another
implementation's as the ReLU masks the two compute agree. ``repeat_call_rel_diff`` compares
each library's result after the timed calls with its first one (IG, Grad-CAM, occlusion: the
parity inputs), so that a parity outlier can be told apart from a result that changed between
calls (one run on 2026-12-06 gave occlusion parity 8.8e-2 on ResNet-18 and reruns 9.5e-6).
Timing: one warm-up call each (jaxadv: the jit compile), then ``--repeats`` rounds in which
jaxadv and Captum each run once, in turn (``timing.time_rounds``, the order reversed every
other round), so that the machine's slow spells fall on both alike; the median of each one's
calls; images/s = batch / median seconds; ``rounds_ms`` {method: {library: median, quartiles,
min, max and number of the timed calls, and the median CPU time of the process per call
(``cpu_median``: all threads; over the median it says how many cores a call kept busy), ms}}
shows the spread. jaxadv with all points in one call
(``jaxadv_all_at_once_s``) is timed afterwards on its own: its large buffers leave the chunked
programs slower for a while after it runs. (Until 2026-12-06 evening each library's calls ran in
a block of their own, jaxadv's first: results/attributions_*.json before
results/attributions_interleaved_1dev.json; in that one and
results/attributions_interleaved_resnet_1dev.json the all-at-once form took turns too.)
jaxadv functions are jitted once per method with the batch and the targets as arguments; Captum
runs eagerly (its normal mode). Both run in this one process, so glibc's ``malloc`` settings that
``import jaxadv`` makes (:mod:`jaxadv.host_memory`, freed memory kept for reuse;
``settings.reuse_host_memory``) hold for Captum too, which gains more from them than jaxadv (its
all-at-once batches: ResNet-18 IG 12.3 -> 5.0 s); ``JAXADV_REUSE_HOST_MEMORY=0`` runs both with
glibc's defaults. Both use every CPU core (XLA's default thread pool,
``torch.get_num_threads()``); numbers on a shared machine are noisy. ``--host_devices N`` splits
jaxadv's batch over N XLA host devices (a data mesh, the same ``NamedSharding`` code as on
accelerators; N at most the core count), which keeps both cores busy where one XLA:CPU device
leaves one idle (the element-wise and small ops between the convolutions).

IG-200 peak memory (SmallGAP, batch 128, 200 Gauss-Legendre points): each library runs in a child
process; peak = the child's peak resident set size (``VmHWM`` in /proc/self/status; ``ru_maxrss``
would inherit the parent's peak across fork + exec) minus the same for a baseline child that imports
the library, builds the model and the batch and runs one (jitted, for JAX) forward pass.
jaxadv evaluates the path with ``chunk_size=--ig-chunk`` (default ``auto``: one point, 128 images,
per model call on CPU, ``lax.scan`` over 200 chunks); Captum uses its default (all 25600 images in
one call).

``--compare_no_depth_first`` also times jaxadv's IG and SmoothGrad compiled with a ResNet's stem
and first stage run layer by layer over each call's images instead of depth first over chunks of
images (``fastpath.depth_first_images``), all contestants in turn within each round (per model:
``forms_off_s``, ``speedup_vs_no_depth_first``).

``--chunk_sweep 1,2,auto,all`` instead times only IG and SmoothGrad (``--chunk_sweep_methods``)
at those numbers of points per model call in both libraries (IG: jaxadv ``chunk_size``, Captum
``internal_batch_size`` = points x batch; SmoothGrad: jaxadv ``chunk_size``, Captum
``nt_samples_batch_size``; ``auto``: jaxadv's default, jaxadv only): both are faster on CPU with a
few points per call than with all of them at once. ``--ig_chunk_sweep C1,...`` is the IG-only
form of earlier runs (JSON key ``ig_chunk_sweep``).

Roofline: ``per_model[m]["flops"]`` is XLA's FLOP count of each jaxadv method as the model
defines it (the standard lowering, fast path off), ``jaxadv_gflops`` that count over jaxadv's
time, and ``gflops_needed_for_2x`` the rate a direct (im2col or oneDNN-style) implementation
would need to take half of Captum's time; ``matmul_peak_gflops`` (a float32 ``jnp.dot``, the
larger of a run before and after the models) is what this machine can do at best.
``flops_executed`` counts the FLOPs jaxadv's fast-path program executes (fewer: Winograd's
forms do 4/9 of the multiplies of the 3x3 stride-1 layers they take; every trip of their chunk
loops counted, ``timing.executed_flops``), ``jaxadv_gflops_executed`` that count over
jaxadv's time, ``best_case_s`` the time it takes at the matmul peak and
``best_case_speedup_vs_captum`` Captum's time over it (:func:`add_roofline`): a speed-up target
above that figure is out of reach of every tuning of the same program on this machine.

JSON: ``parity`` {method: max over models of the relative error}, ``speedup_vs_captum``
{method: min over models of Captum seconds / jaxadv seconds}, ``ig200_peak_mb``
{"jaxadv", "captum"}, and ``per_model`` with every figure (images/s, seconds, errors).
``settings.convolution_backend`` is the library XLA:CPU ran jaxadv's convolutions with
(:func:`jaxadv.devices.convolution_backend`). Until 2026-12-06 this script measured the matmul
peak before it imported jaxadv, so JAX started without jaxadv's XLA flag and every one-device run
timed YNNPACK's single-threaded convolutions, not what ``import jaxadv`` gives users (on
PreAct ResNet-18 IG about 2x slower); results written before then lack the key.
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np

import jaxadv  # noqa: F401  (before JAX starts: sets XLA:CPU's convolution flags, jaxadv.devices)
from experiments import report

REPO = pathlib.Path(__file__).resolve().parents[2]
CHECKPOINT = REPO.parent / "shared" / "data" / "boopathy-mnist" / "mnist_smallgap_adv_100.pkl"
MNIST = REPO.parent / "shared" / "data" / "mnist-test"
METHODS = ("ig", "smoothgrad", "gradcam", "occlusion")
CHUNKED = ("ig", "smoothgrad")  # evaluated in chunks of points by jaxadv's default
PARITY_ONLY = ("preact_resnet18_softplus",)  # models whose methods are not timed
IG_STEPS, SG_SAMPLES, SG_STDEV = 50, 25, 0.15
OCC_WINDOW, OCC_STRIDE = 8, 4
# Images per model in this benchmark's runs (and profile_ops' default for the maps).
BATCHES = {"smallgap": 128, "preact_resnet18": 16, "preact_resnet18_softplus": 16}
QUICK_BATCHES = {"smallgap": 32, "preact_resnet18": 4, "preact_resnet18_softplus": 4}
MODELS = ("smallgap", "preact_resnet18", "preact_resnet18_softplus")
QUICK_MODELS = ("smallgap", "preact_resnet18")
QUICK_MEMORY_BATCH = 32


def build(name: str, batch: int, seed: int = 0):
    """(jax model fns, torch twin, x NHWC float32 numpy, targets int numpy, description,
    (flax model, variables))."""
    import jax

    from jaxadv.interop.torch_port import check_logits_agree, to_torch
    from jaxadv.models import get_model, init_variables, load_official_checkpoint, model_fns

    if name == "smallgap":
        if CHECKPOINT.exists():
            mname, params = load_official_checkpoint(str(CHECKPOINT))
            variables, source = {"params": params}, CHECKPOINT.name
        else:
            mname = "smallgap"
            variables = init_variables(get_model(mname), jax.random.key(seed), (1, 28, 28, 1))
            source = "random init"
        model = get_model(mname)
        if MNIST.exists():
            from jaxadv.data import load_dataset

            x, _ = load_dataset("mnist_idx", "test", data_dir=str(MNIST)).arrays()
            x, data = np.asarray(x[:batch], np.float32), "MNIST test"
        else:
            x = np.asarray(jax.random.uniform(jax.random.key(seed + 1), (batch, 28, 28, 1)))
            data = "uniform noise"
        tmodel = to_torch("smallgap", variables)
    elif name in ("preact_resnet18", "preact_resnet18_softplus"):
        activation = "softplus" if name.endswith("softplus") else "relu"
        model = get_model("preact_resnet18", activation=activation)
        variables = init_variables(model, jax.random.key(seed), (1, 32, 32, 3))
        source, data = "random init", "uniform noise"
        x = np.asarray(jax.random.uniform(jax.random.key(seed + 1), (batch, 32, 32, 3)))
        tmodel = to_torch("preact_resnet18", variables, activation=activation)
    else:
        raise ValueError(f"Unknown benchmark model {name!r}.")
    fns = model_fns(model, variables)
    logits = np.asarray(jax.jit(fns.logits)(x))
    diff = check_logits_agree(jax.jit(fns.logits), tmodel, x)
    targets = logits.argmax(-1).astype(np.int32)
    info = {"weights": source, "data": data, "logits_max_abs_diff": diff}
    return fns, tmodel, x, targets, info, (model, variables)


def _float64(tree):
    """``tree`` with every leaf a float64 jax array (call under ``jax.enable_x64``)."""
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _jaxadv_methods(fns, key, ig_points_per_call: int | str | None = "auto",
                    sg_samples_per_call: int | str | None = "auto") -> dict:
    """The four jaxadv methods as (x, targets) -> map, with this benchmark's settings; IG with
    ``ig_points_per_call`` path points and SmoothGrad with ``sg_samples_per_call`` noise samples
    per model call (``chunk_size``: jaxadv's default ``"auto"``, an int, or None for all at
    once)."""
    import jaxadv.attributions as A

    return {
        "ig": lambda v, c: A.integrated_gradients(fns.logits, v, c, num_steps=IG_STEPS,
                                                  rule="gausslegendre",
                                                  chunk_size=ig_points_per_call),
        "smoothgrad": lambda v, c: A.smooth_grad(fns.logits, v, c, key, num_samples=SG_SAMPLES,
                                                 stdev=SG_STDEV, chunk_size=sg_samples_per_call),
        "gradcam": lambda v, c: A.grad_cam(fns.features, fns.head, v, c),
        "occlusion": lambda v, c: A.occlusion(fns.logits, v, c, window=OCC_WINDOW,
                                              strides=OCC_STRIDE),
    }


def _auto_points(fns, x, t, total: int) -> int:
    """The points per model call that jaxadv's ``chunk_size="auto"`` takes for this model and
    batch (IG path points or SmoothGrad samples: one point is one input gradient of the batch)."""
    import jax.numpy as jnp

    import jaxadv.attributions as A
    from jaxadv.attributions import _common

    xb, tb = jnp.asarray(x), jnp.asarray(t, jnp.int32)
    return A.auto_chunk_size(total, batch=x.shape[0],
                             one_point=lambda: _common.stacked_grad(fns.logits, tb, xb[None]))


def _captum_methods(torch, tmodel, tt, x_shape, ig_points_per_call: int | None = None,
                    sg_samples_per_call: int | None = None) -> dict:
    """The four Captum methods on ``tmodel`` as x (NCHW tensor) -> attribution, with the same
    settings as :func:`_jaxadv_methods` (x_shape: the NHWC batch shape; IG's
    ``internal_batch_size`` = ``ig_points_per_call`` x batch and NoiseTunnel's
    ``nt_samples_batch_size`` = ``sg_samples_per_call``; None, Captum's default: all at once)."""
    from captum import attr as C

    import jaxadv.attributions as A
    from jaxadv.interop.torch_port import WithFeatureLayer

    channels = x_shape[-1]
    num_patches = A.occlusion_masks(x_shape[1], x_shape[2], window=OCC_WINDOW,
                                    strides=OCC_STRIDE).shape[0]
    wrapped = WithFeatureLayer(tmodel)
    return {
        "ig": lambda xt: C.IntegratedGradients(tmodel).attribute(
            xt, target=tt, n_steps=IG_STEPS, method="gausslegendre",
            internal_batch_size=(None if ig_points_per_call is None
                                 else ig_points_per_call * x_shape[0])),
        "smoothgrad": lambda xt: C.NoiseTunnel(C.Saliency(tmodel)).attribute(
            xt, nt_type="smoothgrad", nt_samples=SG_SAMPLES, stdevs=SG_STDEV, target=tt,
            abs=False, nt_samples_batch_size=sg_samples_per_call),
        "gradcam": lambda xt: C.LayerGradCam(wrapped, wrapped.feat).attribute(
            xt, target=tt, relu_attributions=True),
        "occlusion": lambda xt: C.Occlusion(tmodel).attribute(
            xt, sliding_window_shapes=(channels, OCC_WINDOW, OCC_WINDOW),
            strides=(channels, OCC_STRIDE, OCC_STRIDE), baselines=0.0, target=tt,
            perturbations_per_eval=num_patches),
    }


def _per_image_err(a, b) -> np.ndarray:
    """Per image: max |a - b| over the image / max |b| over the batch (the parity metric's terms)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b).reshape(a.shape[0], -1).max(axis=1)
    return d / max(np.max(np.abs(b)), 1e-30)


def _captum_noise_rows(noise, batch, shape):
    from jaxadv.interop.torch_port import nhwc_to_nchw

    return nhwc_to_nchw(np.transpose(noise, (1, 0, 2, 3, 4)).reshape((batch * SG_SAMPLES,) + shape))


def _float64_checks(bound, tmodel, xt, tt, x, t, ours32, noise, sg_same_noise, xj, tj,
                    batch) -> dict:
    """Float32 rounding told apart from disagreement, against float64 runs of both libraries.

    * ``error_vs_float64``: each library's float32 IG / SmoothGrad against Captum in float64 (the
      ``.double()`` twin, same noise);
    * ``parity_float64``: jaxadv in float64 (``jax.enable_x64``, the same variables cast to
      float64) against Captum in float64, every method: the implementations' agreement with
      rounding out of the way;
    * ``images_over_1e-4``: for IG / SmoothGrad, the images whose float32 jaxadv-vs-Captum error
      exceeds 1e-4 and the images whose Captum float32-vs-float64 error does (same per-image terms
      as ``parity``).
    """
    import copy

    import jax
    import jax.numpy as jnp
    import torch
    from captum import attr as C

    import jaxadv.attributions as A
    from jaxadv.interop.torch_port import nchw_to_nhwc
    from jaxadv.models import model_fns

    model, variables = bound
    captum32 = _captum_methods(torch, tmodel, tt, x.shape)
    captum64 = _captum_methods(torch, copy.deepcopy(tmodel).double(), tt, x.shape)
    x64 = xt.double()
    rows = _captum_noise_rows(noise, batch, x.shape[1:])
    original = C.NoiseTunnel.__dict__["_add_noise_to_input"]
    try:
        C.NoiseTunnel._add_noise_to_input = staticmethod(
            lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + rows.to(inp.dtype))
        sg64 = nchw_to_nhwc(captum64["smoothgrad"](x64))
        sg32 = nchw_to_nhwc(captum32["smoothgrad"](xt))
    finally:
        C.NoiseTunnel._add_noise_to_input = original
    ig64 = nchw_to_nhwc(captum64["ig"](x64))
    ig32 = nchw_to_nhwc(captum32["ig"](xt))
    ref64 = {"ig": ig64, "smoothgrad": sg64,
             "gradcam": captum64["gradcam"](x64).detach().numpy()[:, 0],
             "occlusion": nchw_to_nhwc(captum64["occlusion"](x64))}
    with jax.enable_x64(True):
        fns = model_fns(model, _float64(variables))
        xd, td = jnp.asarray(x, jnp.float64), jnp.asarray(t)
        # Jitted: one compiled program per method rather than op-by-op dispatch.
        mine64 = {m: jax.jit(f)(xd, td) for m, f in _jaxadv_methods(fns, None).items()
                  if m != "smoothgrad"}
        mine64["smoothgrad"] = jax.jit(lambda v, c, n: A.smooth_grad(fns.logits, v, c, None,
                                                                     noise=n))(
            xd, td, jnp.asarray(noise, jnp.float64))
        mine64 = {m: np.asarray(v, np.float64) for m, v in mine64.items()}
    ig_mine = np.asarray(ours32["ig"](xj, tj))
    sg_mine = np.asarray(sg_same_noise(xj, tj, jnp.asarray(noise)))

    def over(err):
        return [int(i) for i in np.flatnonzero(err > 1e-4)]

    return {
        "error_vs_float64": {
            "ig": {"jaxadv": _rel_err(ig_mine, ig64), "captum": _rel_err(ig32, ig64)},
            "smoothgrad": {"jaxadv": _rel_err(sg_mine, sg64), "captum": _rel_err(sg32, sg64)},
        },
        "parity_float64": {m: _rel_err(mine64[m], ref64[m]) for m in METHODS},
        "ig_error_vs_float64_per_image": {
            "jaxadv": _per_image_err(ig_mine, mine64["ig"]).tolist(),
            "captum": _per_image_err(ig32, ig64).tolist()},
        "images_over_1e-4": {
            "ig": {"jaxadv_vs_captum_float32": over(_per_image_err(ig_mine, ig32)),
                   "captum_float32_vs_float64": over(_per_image_err(ig32, ig64))},
            "smoothgrad": {"jaxadv_vs_captum_float32": over(_per_image_err(sg_mine, sg32)),
                           "captum_float32_vs_float64": over(_per_image_err(sg32, sg64))},
        },
    }


@functools.cache
def _relu_input_signs(model):
    """Jitted (variables, x) -> (B, n) boolean: the signs of ``model``'s BatchNorm outputs."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    @jax.jit
    def signs(v, xs):
        _, state = model.apply(v, xs, train=False,
                               capture_intermediates=lambda m, _: isinstance(m, nn.BatchNorm))
        leaves = jax.tree_util.tree_leaves(state.get("intermediates", {}))
        return (jnp.concatenate([a.reshape(a.shape[0], -1) > 0 for a in leaves], axis=1)
                if leaves else jnp.zeros((xs.shape[0], 0), bool))

    return signs


def relu_sign_flips(model, variables, x) -> tuple[np.ndarray, int]:
    """Per image of ``x`` (B, H, W, C), how many ReLU inputs have a different sign in a float32
    and a float64 forward pass (same variables, cast), and the number of ReLU inputs per image.

    For models whose every ReLU input is a ``BatchNorm`` output (PreAct ResNets); raises
    ValueError for a model without batch norm. Where a sign differs, the two passes route the
    gradient through different ReLU masks, and the float32 map differs from the float64 one by
    far more than rounding elsewhere would give."""
    import jax
    import jax.numpy as jnp

    signs = _relu_input_signs(model)
    s32 = np.asarray(signs(variables, jnp.asarray(x, jnp.float32)))
    if s32.shape[1] == 0:
        raise ValueError("relu_sign_flips needs a model whose ReLU inputs are BatchNorm outputs "
                         "(PreAct ResNet); this model has no BatchNorm layer.")
    with jax.enable_x64(True):
        s64 = np.asarray(signs(_float64(variables), jnp.asarray(x, jnp.float64)))
    return (s32 != s64).sum(axis=1).astype(np.int64), int(s32.shape[1])


def _relu_kinks(bound, x, t, ig_error) -> dict:
    """``relu_kinks`` of the benchmark JSON: per image, ReLU sign flips float32 vs float64 at the
    image and the float32 input gradient's error against the float64 one (:func:`_per_image_err`
    terms); and the flips summed over IG's path points (zero baseline, this benchmark's rule)
    next to ``ig_error`` (per image, jaxadv's float32 IG against its float64 IG)."""
    import jax
    import jax.numpy as jnp

    import jaxadv.attributions as A
    from jaxadv.models import model_fns

    model, variables = bound
    flips, per_image = relu_sign_flips(model, variables, x)

    def saliency(v, xs):
        return jax.jit(lambda z, c: A.saliency(model_fns(model, v).logits, z, c))(xs, t)

    g32 = np.asarray(saliency(variables, jnp.asarray(x)))
    with jax.enable_x64(True):
        g64 = np.asarray(saliency(_float64(variables), jnp.asarray(x, jnp.float64)))
    err = _per_image_err(g32, g64)
    flipped = flips > 0
    alphas, _ = A.quadrature("gausslegendre", IG_STEPS)
    path_flips = sum(relu_sign_flips(model, variables, np.float32(a) * x)[0] for a in alphas)
    ig_error, on_path = np.asarray(ig_error), path_flips > 0
    return {"relu_inputs_per_image": per_image,
            "ig_path_sign_flips": path_flips.tolist(),
            "ig_error_vs_float64": ig_error.tolist(),
            "max_ig_error_images_without_path_flip": (float(ig_error[~on_path].max())
                                                      if not on_path.all() else None),
            "min_ig_error_images_with_path_flip": (float(ig_error[on_path].min())
                                                   if on_path.any() else None),
            "sign_flips_float32_vs_float64": flips.tolist(),
            "gradient_error_vs_float64": err.tolist(),
            "max_gradient_error_images_without_flip": (float(err[~flipped].max())
                                                       if not flipped.all() else None),
            "min_gradient_error_images_with_flip": (float(err[flipped].min())
                                                    if flipped.any() else None)}


def bench_model(name: str, batch: int, repeats: int, f64_reference: bool = True,
                timing: bool = True, forms_off: tuple = (), roofline: bool = True) -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    from captum import attr as C

    import jaxadv.attributions as A
    from experiments.benchmarks.timing import executed_flops, time_rounds, xla_flops
    from jaxadv import sharding
    from jaxadv.interop.torch_port import nchw_to_nhwc, nhwc_to_nchw
    from jaxadv.models import fastpath

    fns, tmodel, x, t, info, bound = build(name, batch)
    # The batch split over every device (one unless --host_devices): a data mesh.
    xj, tj = sharding.shard_batch((x, t), sharding.data_mesh())
    xt, tt = nhwc_to_nchw(x), torch.as_tensor(t, dtype=torch.int64)
    key = jax.random.key(0)
    noise = np.asarray(SG_STDEV * jax.random.normal(jax.random.key(1), (SG_SAMPLES,) + x.shape))

    # Targets are jit arguments (traced), as in real use: closed-over constant targets would let
    # XLA constant-fold part of the backward pass of a GAP-linear head.
    ours = {m: jax.jit(f) for m, f in _jaxadv_methods(fns, key).items()}
    # IG and SmoothGrad with every point in one call (as Captum's default): the FLOP count (XLA
    # counts a loop's body once, so the chunked default's count would be one chunk's) and a
    # second timing that shows what jaxadv's default chunking gains.
    all_at_once = _jaxadv_methods(fns, key, None, None)
    at_once = {m: jax.jit(all_at_once[m]) for m in CHUNKED}
    sg_same_noise = jax.jit(lambda v, c, n: A.smooth_grad(fns.logits, v, c, None, noise=n))
    captum32 = _captum_methods(torch, tmodel, tt, x.shape)
    theirs = {m: functools.partial(f, xt) for m, f in captum32.items()}

    # XLA's FLOP count of each method as the model defines it (the standard lowering), for the
    # roofline: how many GFLOP/s a given speed-up over Captum needs (set against the matmul peak).
    flops = {}
    with fastpath.enabled(False):
        for m in METHODS if timing and roofline else ():
            flops[m] = xla_flops(at_once.get(m, ours[m]).lower(xj, tj))
    # The FLOPs jaxadv's program executes (Winograd's forms do 4/9 of the multiplies of the
    # layers they take; chunking the points changes none): the bound any run of this program
    # has at the matmul peak (_run). Before the first calls: executed_flops clears JAX's caches.
    flops_executed = {m: executed_flops(all_at_once[m], (xj, tj))
                      for m in METHODS if timing and roofline}

    def captum_map(m):  # Captum's map of method m in jaxadv's layout
        out = theirs[m]()
        return out.detach().numpy()[:, 0] if m == "gradcam" else nchw_to_nhwc(out)

    # First calls (jit compile + run), then parity; SmoothGrad parity uses the same samples
    # injected into Captum's NoiseTunnel.
    first_call_s, parity, first = {}, {}, {}
    for m in METHODS:
        t0 = time.perf_counter()
        mine = jax.block_until_ready(ours[m](xj, tj))
        first_call_s[m] = time.perf_counter() - t0
        if m == "smoothgrad":
            rows = _captum_noise_rows(noise, batch, x.shape[1:])
            original = C.NoiseTunnel.__dict__["_add_noise_to_input"]  # the staticmethod object
            C.NoiseTunnel._add_noise_to_input = staticmethod(
                lambda inp, stdev, n: inp.repeat_interleave(n, dim=0) + rows)
            try:
                ref = nchw_to_nhwc(theirs[m]())
            finally:
                C.NoiseTunnel._add_noise_to_input = original
            parity[m] = _rel_err(sg_same_noise(xj, tj, jnp.asarray(noise)), ref)
        else:
            first[m] = (mine, captum_map(m))
            parity[m] = _rel_err(*first[m])

    out = {"batch": batch, "parity": parity, "jaxadv_first_call_s": first_call_s,
           "jaxadv_s": {}, "captum_s": {}, "rounds_ms": {}, **info}
    if f64_reference:
        out.update(_float64_checks(bound, tmodel, xt, tt, x, t, ours, noise, sg_same_noise,
                                   xj, tj, batch))
        if name == "preact_resnet18":
            out["relu_kinks"] = _relu_kinks(
                bound, x, t, out["ig_error_vs_float64_per_image"]["jaxadv"])
    if not timing:
        return out
    for m in METHODS:
        # Both libraries in turn within each round, so that a slow spell of the machine falls on
        # both alike.
        rounds = time_rounds(
            {"jaxadv": lambda m=m: jax.block_until_ready(ours[m](xj, tj)), "captum": theirs[m]},
            repeats)
        out["jaxadv_s"][m] = rounds["jaxadv"]["median"] / 1e3
        out["captum_s"][m] = rounds["captum"]["median"] / 1e3
        out["rounds_ms"][m] = rounds
    # Each library's result after the timed calls against its first one (the parity inputs):
    # nonzero would mean a method's result varies between calls of the same program.
    out["repeat_call_rel_diff"] = {
        m: {"jaxadv": _rel_err(ours[m](xj, tj), mine), "captum": _rel_err(captum_map(m), ref)}
        for m, (mine, ref) in first.items()}
    out["jaxadv_auto_points_per_call"] = {
        "ig": _auto_points(fns, x, t, IG_STEPS), "smoothgrad": _auto_points(fns, x, t, SG_SAMPLES)}
    out["jaxadv_images_per_s"] = {m: batch / s for m, s in out["jaxadv_s"].items()}
    out["captum_images_per_s"] = {m: batch / s for m, s in out["captum_s"].items()}
    out["speedup_vs_captum"] = {m: out["captum_s"][m] / out["jaxadv_s"][m] for m in METHODS}
    if roofline:
        out["flops"] = flops
        out["flops_executed"] = flops_executed
        out["jaxadv_gflops"] = {m: flops[m] / out["jaxadv_s"][m] / 1e9 if flops[m] else None
                                for m in METHODS}
        out["gflops_needed_for_2x"] = {m: 2 * flops[m] / out["captum_s"][m] / 1e9 if flops[m]
                                       else None for m in METHODS}
    if forms_off:
        out.update(compare_forms_off(fns, key, xj, tj, ours, forms_off, repeats))
    # jaxadv with all points in one call, after every timing of the chunked programs and on its
    # own: its large buffers leave them slower for a while after it runs (ResNet-18's
    # SmoothGrad 1.44-1.51 s before its first call, 1.52-2.10 s after; docs/performance.md).
    out["jaxadv_all_at_once_s"] = {
        m: time_rounds(
            {m: lambda m=m: jax.block_until_ready(at_once[m](xj, tj))}, repeats)[m]["median"] / 1e3
        for m in CHUNKED}
    out["speedup_vs_captum_jaxadv_all_at_once"] = {
        m: out["captum_s"][m] / out["jaxadv_all_at_once_s"][m] for m in CHUNKED}
    return out


def compare_forms_off(fns, key, xj, tj, ours: dict, forms_off, repeats: int) -> dict:
    """jaxadv's IG and SmoothGrad (default settings) against the same compiled without one of the
    fast path's forms each (``step_speed.form_off``: e.g. ``"depth_first"``), every contestant
    in turn within each round: ``forms_off_s`` {method: {contestant: s}} and, per form,
    ``speedup_vs_<label>`` {method: time without / time with}."""
    import jax

    from experiments.benchmarks import step_speed
    from experiments.benchmarks.timing import time_rounds

    labels = [step_speed.off_label(form) for form in forms_off]
    contestants = {(m, "jaxadv"): (lambda m=m: jax.block_until_ready(ours[m](xj, tj)))
                   for m in CHUNKED}
    for form, label in zip(forms_off, labels, strict=True):
        with step_speed.form_off(form):  # traced and compiled without the form
            methods = _jaxadv_methods(fns, key)
            compiled = {m: jax.jit(methods[m]).lower(xj, tj).compile() for m in CHUNKED}
        for m, c in compiled.items():
            contestants[(m, f"jaxadv_{label}")] = (
                lambda c=c: jax.block_until_ready(c(xj, tj)))
    rounds = time_rounds(contestants, repeats)
    seconds = {m: {who: rounds[(mm, who)]["median"] / 1e3 for mm, who in rounds if mm == m}
               for m in CHUNKED}
    out = {"forms_off_s": seconds}
    for label in labels:
        out[f"speedup_vs_{label}"] = {m: seconds[m][f"jaxadv_{label}"] / seconds[m]["jaxadv"]
                                      for m in CHUNKED}
    return out


def add_roofline(r: dict, peak_gflops: float) -> None:
    """Add to one model's timed results ``r`` the roofline against the matmul peak:
    ``jaxadv_gflops_executed`` (the FLOPs jaxadv's program executes over its time),
    ``best_case_s`` (those FLOPs at ``peak_gflops``: no run of this program can be faster
    than at the matmul peak) and ``best_case_speedup_vs_captum`` (Captum's time over
    ``best_case_s``: where it is below a target, no tuning of this program reaches it, only
    fewer executed FLOPs can)."""
    ex = r["flops_executed"]
    r["jaxadv_gflops_executed"] = {m: ex[m] / r["jaxadv_s"][m] / 1e9 if ex[m] else None
                                   for m in ex}
    r["best_case_s"] = {m: ex[m] / (peak_gflops * 1e9) if ex[m] else None for m in ex}
    r["best_case_speedup_vs_captum"] = {
        m: r["captum_s"][m] / r["best_case_s"][m] if ex[m] else None for m in ex}


def chunk_sweep(name: str, batch: int, chunks, repeats: int, method: str = "ig") -> dict:
    """IG or SmoothGrad (this benchmark's settings) timed at several numbers of points per model
    call, in both libraries. IG: jaxadv ``chunk_size`` = c path points, Captum
    ``internal_batch_size`` = c * batch (the same images per call); SmoothGrad: jaxadv
    ``chunk_size`` = c noise samples, Captum NoiseTunnel ``nt_samples_batch_size`` = c. ``None`` =
    all points in one call (both libraries' behaviour before jaxadv's ``"auto"``), ``"auto"`` =
    jaxadv's default (timed for jaxadv only). Every setting of both libraries is timed in turn
    in each of ``repeats`` rounds (order reversed every other round; one warm-up call each, the
    jit compile for jaxadv), so that the VM's slow and fast spells fall on all of them alike.
    Returns {"jaxadv_s": {c: median s}, "captum_s": {c: median s}, "images_per_call": {c: n},
    ...} with the keys as strings."""
    import jax
    import torch

    from experiments.benchmarks.timing import time_rounds
    from jaxadv import sharding
    from jaxadv.interop.torch_port import nhwc_to_nchw

    fns, tmodel, x, t, *_ = build(name, batch)
    xj, tj = sharding.shard_batch((x, t), sharding.data_mesh())
    xt, tt = nhwc_to_nchw(x), torch.as_tensor(t, dtype=torch.int64)
    total = IG_STEPS if method == "ig" else SG_SAMPLES
    auto = _auto_points(fns, x, t, total)
    out = {"method": method, "batch": batch, "jaxadv_s": {}, "captum_s": {},
           "images_per_call": {}, "jaxadv_auto_points_per_call": auto}
    contestants = {}
    for c in chunks:
        per_call = {"ig_points_per_call": c} if method == "ig" else {"sg_samples_per_call": c}
        ours = jax.jit(_jaxadv_methods(fns, jax.random.key(0), **per_call)[method])
        out["images_per_call"][str(c)] = (auto if c == "auto" else c or total) * batch
        contestants[("jaxadv", str(c))] = lambda f=ours: jax.block_until_ready(f(xj, tj))
        if c != "auto":
            theirs = _captum_methods(torch, tmodel, tt, x.shape, **per_call)[method]
            contestants[("captum", str(c))] = lambda f=theirs: f(xt)
    timed = time_rounds(contestants, repeats)
    for (lib, key), summary in timed.items():
        out[f"{lib}_s"][key] = summary["median"] / 1e3
    for key, s in out["jaxadv_s"].items():
        line = f"{name} {method}, {key} points per call: jaxadv {s:.3f} s"
        if key in out["captum_s"]:
            line += f", Captum {out['captum_s'][key]:.3f} s"
        print(line, flush=True)
    best = {lib: min(out[f"{lib}_s"], key=out[f"{lib}_s"].get) for lib in ("jaxadv", "captum")
            if out[f"{lib}_s"]}
    out["best_points_per_call"] = best
    if len(best) == 2:
        out["speedup_vs_captum_each_at_best"] = (out["captum_s"][best["captum"]]
                                                 / out["jaxadv_s"][best["jaxadv"]])
    if "auto" in out["jaxadv_s"] and "None" in out["captum_s"]:
        out["speedup_vs_captum_defaults"] = out["captum_s"]["None"] / out["jaxadv_s"]["auto"]
    return out


# ---------------------------------------------------------------------------------------------
# IG-200 peak memory: child processes.


def _peak_rss_kb() -> int:
    """This process's peak resident set size in KiB: VmHWM from /proc/self/status (per address
    space, so a child started by a big parent does not inherit the parent's peak, as
    ``ru_maxrss`` does across fork + exec on Linux); ``ru_maxrss`` where /proc is missing."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_child(kind: str, batch: int, steps: int, chunk: int | str | None) -> None:
    """Runs in a fresh process; prints {"maxrss_kb": ...} (peak RSS) as its last line."""
    if kind.endswith("jax"):
        import jax

        import jaxadv.attributions as A

        fns, tmodel, x, t, *_ = build("smallgap", batch)
        del tmodel
        if kind == "jax":
            fn = jax.jit(lambda v: A.integrated_gradients(fns.logits, v, t, num_steps=steps,
                                                          rule="gausslegendre", chunk_size=chunk))
            jax.block_until_ready(fn(x))
        else:
            jax.block_until_ready(jax.jit(fns.logits)(x))
    else:
        import torch
        from captum.attr import IntegratedGradients

        from jaxadv.interop.torch_port import nhwc_to_nchw

        fns, tmodel, x, t, *_ = build("smallgap", batch)
        xt, tt = nhwc_to_nchw(x), torch.as_tensor(t, dtype=torch.int64)
        if kind == "torch":
            IntegratedGradients(tmodel).attribute(xt, target=tt, n_steps=steps,
                                                  method="gausslegendre")
        else:
            with torch.no_grad():
                tmodel(xt)
    print(json.dumps({"maxrss_kb": _peak_rss_kb()}))


def _run_child(kind: str, batch: int, steps: int, chunk: int | str | None) -> int:
    cmd = [sys.executable, "-m", "experiments.benchmarks.attributions", "--memory-child", kind,
           "--memory-batch", str(batch), "--memory-steps", str(steps),
           "--ig-chunk", "all" if chunk is None else str(chunk)]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["maxrss_kb"]


def ig200_peak_memory(batch: int = 128, steps: int = 200, chunk: int | str = "auto") -> dict:
    rss = {k: _run_child(k, batch, steps, chunk) for k in ("base-jax", "jax", "base-torch",
                                                           "torch")}
    fns, _, x, t, *_ = build("smallgap", batch)
    return {"jaxadv": (rss["jax"] - rss["base-jax"]) / 1024,
            "captum": (rss["torch"] - rss["base-torch"]) / 1024,
            "raw_maxrss_mb": {k: v / 1024 for k, v in rss.items()},
            "batch": batch, "num_steps": steps, "jaxadv_chunk_size": chunk,
            "jaxadv_points_per_call": (_auto_points(fns, x, t, steps) if chunk == "auto"
                                       else chunk)}


def markdown_table(result: dict) -> str:
    lines = ["| model | method | jaxadv img/s | Captum img/s | speedup | parity (rel. err.) |",
             "|---|---|---|---|---|---|"]
    for name, r in result["per_model"].items():
        for m in METHODS:
            if "speedup_vs_captum" not in r:  # parity only
                lines.append(f"| {name} (B={r['batch']}) | {m} | | | | {r['parity'][m]:.1e} |")
                continue
            lines.append(f"| {name} (B={r['batch']}) | {m} | {r['jaxadv_images_per_s'][m]:.1f} | "
                         f"{r['captum_images_per_s'][m]:.1f} | {r['speedup_vs_captum'][m]:.2f}x | "
                         f"{r['parity'][m]:.1e} |")
    mem = result.get("ig200_peak_mb")
    if mem:
        lines.append("")
        lines.append(f"IG-200 peak memory (SmallGAP, batch {mem['batch']}): jaxadv "
                     f"{mem['jaxadv']:.0f} MB ({mem['jaxadv_points_per_call']} points per call), "
                     f"Captum {mem['captum']:.0f} MB (default, all points at once).")
    return "\n".join(lines)


def _points_per_call(text: str) -> int | str | None:
    text = text.strip()
    if text in ("auto", "all"):
        return None if text == "all" else text
    return int(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: small batches, 2 repeats, SmallGAP and ResNet-18 only, no "
                        "float64 references or FLOP counts unless asked for, IG-200 memory at "
                        "batch 32")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--models", default=None,
                   help="comma-separated (default: " + ",".join(MODELS) + "; --quick: "
                        + ",".join(QUICK_MODELS) + "); " + ", ".join(PARITY_ONLY)
                        + " are parity only")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--float64", action=argparse.BooleanOptionalAction, default=None,
                   help="the float64 runs of both libraries (error_vs_float64, parity_float64, "
                        "relu_kinks); --no-float64: the timings and float32 parity only "
                        "(default: on, off with --quick)")
    p.add_argument("--skip-float64", dest="float64", action="store_false",
                   help="the same as --no-float64")
    p.add_argument("--roofline", action=argparse.BooleanOptionalAction, default=None,
                   help="XLA's FLOP counts of each method and the roofline figures built on them "
                        "(flops, flops_executed, gflops_needed_for_2x, best_case_s, ...; default: "
                        "on, off with --quick)")
    p.add_argument("--ig-chunk", type=_points_per_call, default="auto",
                   help="jaxadv's chunk_size in the IG-200 memory run: 'auto' (its default), "
                        "an int, or 'all'")
    p.add_argument("--host_devices", type=int, default=1,
                   help="split jaxadv's batch over N XLA host devices (Captum uses every core "
                        "through torch's threads either way)")
    p.add_argument("--chunk_sweep", default=None, metavar="C1,C2,...",
                   help="only time --chunk_sweep_methods at these numbers of points per call in "
                        "both libraries ('all' = every point in one call, 'auto' = jaxadv's "
                        "default, jaxadv only) for --models; JSON key chunk_sweep")
    p.add_argument("--chunk_sweep_methods", default="ig,smoothgrad")
    p.add_argument("--batch", type=int, default=None,
                   help="images per model for every run (default: SmallGAP 128, ResNet-18 16; "
                        "--quick 32 and 4)")
    p.add_argument("--no_fastpath", action="store_true",
                   help="trace jaxadv's models without its CPU fast path (XLA's own convolutions, "
                        "as a model of one's own would have)")
    p.add_argument("--compare_no_depth_first", action="store_true",
                   help="also time jaxadv's IG and SmoothGrad with a ResNet's stem and first "
                        "stage run layer by layer over each call's images instead of depth first "
                        "over chunks (fastpath.depth_first_images; JSON per model: forms_off_s, "
                        "speedup_vs_no_depth_first)")
    p.add_argument("--ig_chunk_sweep", default=None, metavar="C1,C2,...",
                   help="--chunk_sweep C1,C2,... --chunk_sweep_methods ig (JSON key ig_chunk_sweep)")
    p.add_argument("--memory-child", choices=("jax", "base-jax", "torch", "base-torch"),
                   help=argparse.SUPPRESS)
    p.add_argument("--memory-batch", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--memory-steps", type=int, default=200, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.command = "python -m experiments.benchmarks.attributions " + " ".join(
        sys.argv[1:] if argv is None else argv)
    if args.memory_child:
        _memory_child(args.memory_child, args.memory_batch, args.memory_steps, args.ig_chunk)
        return {}
    if args.out is None:
        p.error("--out is required")
    args.models = args.models or ",".join(QUICK_MODELS if args.quick else MODELS)
    args.float64 = not args.quick if args.float64 is None else args.float64
    args.roofline = not args.quick if args.roofline is None else args.roofline
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}.")
    if not args.no_fastpath:
        return _run(args)
    from jaxadv.models import fastpath

    with fastpath.enabled(False):  # jaxadv's models with XLA's own convolutions
        return _run(args)


def _run(args) -> dict:
    if args.host_devices > 1:
        from jaxadv.devices import use_host_devices

        use_host_devices(args.host_devices)  # before the first JAX operation
    import jax

    from jaxadv import host_memory
    from jaxadv.devices import convolution_backend

    batches = dict(QUICK_BATCHES if args.quick else BATCHES)
    if args.batch is not None:
        batches = dict.fromkeys(batches, args.batch)
    repeats = args.repeats or (2 if args.quick else 3)

    import torch

    from experiments.benchmarks.timing import matmul_peak_gflops

    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "note": "shared machine: timings are noisy"}
    if args.chunk_sweep or args.ig_chunk_sweep:
        values = args.chunk_sweep or args.ig_chunk_sweep
        chunks = [_points_per_call(c) for c in values.split(",")]
        methods = "ig" if args.ig_chunk_sweep else args.chunk_sweep_methods
        sweeps = {(name if args.ig_chunk_sweep else f"{name}/{m}"):  # the alias' old layout
                  chunk_sweep(name, batches[name], chunks, repeats, m)
                  for name in args.models.split(",") for m in methods.split(",")}
        result = {("ig_chunk_sweep" if args.ig_chunk_sweep else "chunk_sweep"): sweeps,
                  "matmul_peak_gflops": matmul_peak_gflops(1024 if args.quick else 4096),
                  "settings": {"command": args.command, "ig_steps": IG_STEPS,
                               "ig_rule": "gausslegendre", "smoothgrad_samples": SG_SAMPLES,
                               "repeats": repeats, "quick": args.quick,
                               "jaxadv_host_devices": jax.device_count(),
                               "convolution_backend": convolution_backend(),
                               "jaxadv_fastpath": not args.no_fastpath,
                               "reuse_host_memory": host_memory.is_applied(),
                               "cpu_inline_dispatch": host_memory.runs_inline()},
                  "machine": machine}
        report.write_json(args.out, result, indent=2)
        return result
    peak_before = matmul_peak_gflops(1024 if args.quick else 4096)
    per_model = {}
    for name in args.models.split(","):
        per_model[name] = bench_model(
            name, batches[name], repeats, f64_reference=args.float64, roofline=args.roofline,
            timing=name not in PARITY_ONLY,
            forms_off=("depth_first",) if args.compare_no_depth_first else ())
        print(f"{name}: done", flush=True)
    timed = [r for r in per_model.values() if "speedup_vs_captum" in r]
    result = {
        "parity": {m: max(r["parity"][m] for r in per_model.values()) for m in METHODS},
        **({"speedup_vs_captum": {m: min(r["speedup_vs_captum"][m] for r in timed)
                                  for m in METHODS}} if timed else {}),
        **({"parity_float64": {m: max(r["parity_float64"][m] for r in per_model.values())
                               for m in METHODS}}
           if all("parity_float64" in r for r in per_model.values()) else {}),
        "per_model": per_model,
        # float32 jnp.dot peak before and after the model runs (the roofline, best_case_...).
        "matmul_peak_gflops": max(peak_before,
                                  matmul_peak_gflops(1024 if args.quick else 4096)),
        "settings": {"command": args.command, "ig_steps": IG_STEPS, "ig_rule": "gausslegendre",
                     "smoothgrad_samples": SG_SAMPLES, "smoothgrad_stdev": SG_STDEV,
                     "occlusion_window": OCC_WINDOW, "occlusion_stride": OCC_STRIDE,
                     "repeats": repeats, "quick": args.quick, "float64": args.float64,
                     "roofline": args.roofline,
                     "jaxadv_host_devices": jax.device_count(),
                     "convolution_backend": convolution_backend(),
                     "jaxadv_fastpath": not args.no_fastpath,
                     "reuse_host_memory": host_memory.is_applied(),
                     "cpu_inline_dispatch": host_memory.runs_inline()},
        "machine": machine,
    }
    for r in timed if args.roofline else ():
        add_roofline(r, result["matmul_peak_gflops"])
    if not args.skip_memory:
        result["ig200_peak_mb"] = ig200_peak_memory(
            batch=QUICK_MEMORY_BATCH if args.quick else 128, chunk=args.ig_chunk)
    report.write_json(args.out, result, indent=2)
    print(markdown_table(result))
    return result


if __name__ == "__main__":
    main()
