"""Post-processing of attribution maps: channel reduction, absolute value, percentile clipping,
normalisation and upsampling to the input size. All per example, jit-able and differentiable
(except where sorting makes them piecewise).

Maps are (B, H, W, C) (input-shaped) or (B, h, w) (one value per location, e.g. CAM).
"""

import jax
import jax.numpy as jnp

from jaxadv import numerics, validation
from jaxadv.attributions import _common
from jaxadv.types import Array

REDUCTIONS = ("sum", "mean", "abs_sum", "max_abs", "l2")
NORMALIZATIONS = ("max_abs", "min_max", "sum_abs", "l2")
UPSAMPLING = ("bilinear", "nearest", "cubic", "lanczos3")


def reduce_channels(a: Array, *, method: str = "sum") -> Array:
    """(B, H, W, C) -> (B, H, W) by ``method``: sum, mean, abs_sum, max_abs or l2."""
    if a.ndim != 4:
        raise ValueError(f"reduce_channels expects (B, H, W, C); got shape {a.shape}.")
    if method == "sum":
        return jnp.sum(a, axis=-1)
    if method == "mean":
        return jnp.mean(a, axis=-1)
    if method == "abs_sum":
        return jnp.sum(jnp.abs(a), axis=-1)
    if method == "max_abs":
        return jnp.max(jnp.abs(a), axis=-1)
    if method == "l2":
        return numerics.l2_norm(a, axis=-1)  # finite gradient at all-zero pixels
    raise ValueError(f"Unknown channel reduction {method!r}; choose one of {REDUCTIONS}.")


def absolute(a: Array) -> Array:
    """|a|."""
    return jnp.abs(a)


def _flat(a: Array) -> Array:
    _common.check_batch(a, "map")
    return a.reshape(a.shape[0], -1)


def clip_percentile(a: Array, *, lower: float = 0.0, upper: float = 99.0) -> Array:
    """Clips each example's map to its [lower, upper] percentiles (linear interpolation, as
    ``numpy.percentile``)."""
    validation.check_range("lower", lower, 0.0, 100.0)
    validation.check_range("upper", upper, 0.0, 100.0)
    if validation.is_concrete(lower) and validation.is_concrete(upper) and not lower <= upper:
        raise ValueError(f"need 0 <= lower <= upper <= 100; got lower={lower}, upper={upper}.")
    flat = _flat(a)
    lo = jnp.percentile(flat, lower, axis=-1, keepdims=True)
    hi = jnp.percentile(flat, upper, axis=-1, keepdims=True)
    return jnp.clip(flat, lo, hi).reshape(a.shape)


def normalize(a: Array, *, method: str = "max_abs", eps: float = 1e-12) -> Array:
    """Per-example normalisation.

    ``max_abs``: a / max|a| (in [-1, 1]); ``min_max``: (a - min)/(max - min) (in [0, 1]);
    ``sum_abs``: a / sum|a|; ``l2``: a / ||a||_2. Maps that are identically zero stay zero.
    """
    flat = _flat(a)
    if method == "max_abs":
        s = jnp.max(jnp.abs(flat), axis=-1, keepdims=True)
        out = flat / jnp.maximum(s, eps)
    elif method == "min_max":
        lo = jnp.min(flat, axis=-1, keepdims=True)
        hi = jnp.max(flat, axis=-1, keepdims=True)
        out = (flat - lo) / jnp.maximum(hi - lo, eps)
    elif method == "sum_abs":
        out = flat / jnp.maximum(jnp.sum(jnp.abs(flat), axis=-1, keepdims=True), eps)
    elif method == "l2":
        out = flat / jnp.maximum(numerics.l2_norm(flat, axis=-1, keepdims=True), eps)
    else:
        raise ValueError(f"Unknown normalisation {method!r}; choose one of {NORMALIZATIONS}.")
    return out.reshape(a.shape)


def upsample(a: Array, size: tuple[int, int], *, method: str = "bilinear") -> Array:
    """Resizes (B, h, w) or (B, h, w, C) maps to spatial ``size`` = (H, W) with
    ``jax.image.resize`` (half-pixel centres, like ``align_corners=False``)."""
    if method not in UPSAMPLING:
        raise ValueError(f"Unknown upsampling method {method!r}; choose one of {UPSAMPLING}.")
    if a.ndim not in (3, 4):
        raise ValueError(f"upsample expects (B, h, w) or (B, h, w, C); got shape {a.shape}.")
    if (not isinstance(size, tuple | list) or len(size) != 2
            or not all(validation.is_int(s) and s >= 1 for s in size)):
        raise ValueError(f"size must be (H, W), two positive ints; got {size!r}.")
    shape = (a.shape[0], int(size[0]), int(size[1])) + a.shape[3:]
    return jax.image.resize(a, shape, method=method)
