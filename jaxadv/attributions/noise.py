"""SmoothGrad, SmoothGrad-squared and VarGrad around any attribution method.

Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017 (SmoothGrad, SmoothGrad^2);
Adebayo et al., "Local explanation methods for deep neural networks lack sensitivity to parameter
values", ICLR-W 2018 (VarGrad). With a_s = method(x + n_s), n_s ~ N(0, stdev^2):

    smoothgrad    = mean_s a_s
    smoothgrad_sq = mean_s a_s^2
    vargrad       = mean_s a_s^2 - (mean_s a_s)^2     (population variance, as Captum)

``stdev`` is absolute (Captum ``NoiseTunnel(stdevs=...)``); Smilkov et al. quote it as a fraction of
the input range, which is the same number for images in [0, 1].

Randomness is explicit: sample s uses ``jax.random.split(key, num_samples)[s]``, so results do not
depend on ``chunk_size``. ``noise=`` passes the samples themselves (num_samples, *x.shape), e.g. to
reproduce another library's draw. Samples are evaluated ``chunk_size`` at a time (one call on the
chunk's noisy copies inside a ``lax.scan`` that keeps running sums), so memory is one chunk's worth.
"""

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv.attributions import _common
from jaxadv.attributions.gradients import saliency
from jaxadv.types import Array, LogitsFn, PRNGKey

KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _tunnel(attribution_fn, x, key, *, num_samples, stdev, kind, noise, chunk_size):
    """:func:`noise_tunnel` of an ``x`` already checked (:func:`_common.check_images`): the noisy
    copies of a chunk, (c, *x.shape), go through ``vmap(attribution_fn)``."""
    out_shape = jax.eval_shape(attribution_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    stack_fn = jax.vmap(attribution_fn)
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {KINDS}.")
    if noise is not None:
        noise = jnp.asarray(noise, x.dtype)
        if noise.shape[1:] != x.shape or noise.shape[0] < 1:
            raise ValueError(f"noise must have shape (num_samples, *x.shape) = (S, {x.shape}); "
                             f"got {noise.shape}.")
        validation.check_finite(noise, "noise", fix="the noisy copies would not be finite images; "
                                "pass finite samples.")
        num_samples = noise.shape[0]
    else:
        if key is None:
            raise ValueError("noise_tunnel needs a key (jax.random.key(...)) or explicit noise.")
        num_samples = validation.check_int("num_samples", num_samples, 1)
        validation.check_nonnegative("stdev", stdev, "the noise's standard deviation")
    chunk = _common.resolve_chunk_size(chunk_size, num_samples, batch=x.shape[0],
                                       one_point=lambda: stack_fn(x[None]))
    num_chunks = -(-num_samples // chunk)
    total = num_chunks * chunk
    valid = (jnp.arange(total) < num_samples).reshape(num_chunks, chunk)
    if noise is not None:
        pad = jnp.zeros((total - num_samples,) + x.shape, x.dtype)
        items = jnp.concatenate([noise, pad]).reshape((num_chunks, chunk) + x.shape)
    else:
        keys = jax.random.split(key, num_samples)
        keys = jnp.concatenate([keys, keys[: total - num_samples]])
        items = keys.reshape(num_chunks, chunk)

    def maps(its, ok):
        if noise is None:
            its = jax.vmap(lambda k: stdev * jax.random.normal(k, x.shape, x.dtype))(its)
        a = stack_fn(x[None] + its)
        return a, jnp.reshape(ok, (-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)

    zeros = jnp.zeros(out_shape.shape, out_shape.dtype)
    if kind == "vargrad":
        return _variance(maps, zeros, items, valid)

    def body(s, inp):
        a, m = maps(*inp)
        return s + jnp.sum((a * a if kind == "smoothgrad_sq" else a) * m, axis=0), None

    return _common.scan_chunks(body, zeros, (items, valid)) / num_samples


def _variance(maps, zeros, items, valid):
    """Population variance of the maps over the samples, merged chunk by chunk (Chan, Golub &
    LeVeque 1979): each chunk's sum of squared deviations from its own mean, plus the shift
    between the running and the chunk mean. E[a^2] - E[a]^2 (Captum's form) cancels
    catastrophically in float32 where the maps are large and vary little: negative variances, and
    relative errors above 1 on a nearly linear model."""
    def body(carry, inp):
        n, mean, m2 = carry
        a, m = maps(*inp)
        n_c = jnp.sum(m)  # valid samples in this chunk (m: (c, 1, ..., 1) of 0 / 1)
        mean_c = jnp.sum(a * m, axis=0) / jnp.maximum(n_c, 1)
        m2_c = jnp.sum(jnp.square(a - mean_c) * m, axis=0)
        total = n + n_c
        shift = mean_c - mean
        mean = mean + shift * (n_c / total)
        return (total, mean, m2 + m2_c + jnp.square(shift) * (n * n_c / total)), None

    n0 = jnp.zeros((), zeros.dtype)
    total, _, m2 = _common.scan_chunks(body, (n0, zeros, zeros), (items, valid))
    return jnp.maximum(m2 / total, 0.0)


def noise_tunnel(attribution_fn: Callable[[Array], Array], x: Array, key: PRNGKey | None, *,
                 num_samples: int = 25, stdev: float = 0.15, kind: str = "smoothgrad",
                 noise: Array | None = None, chunk_size: int | str | None = "auto") -> Array:
    """Averages ``attribution_fn`` over Gaussian-perturbed copies of x.

    Args:
      attribution_fn: x (B, ...) -> map (B, ...) (close over logits_fn, target and options). The
        noisy copies of a chunk go through ``vmap``.
      x: (B, ...) inputs.
      key: typed key (ignored when ``noise`` is given).
      num_samples: number of noise samples S.
      stdev: noise std (absolute).
      kind: ``"smoothgrad"``, ``"smoothgrad_sq"`` or ``"vargrad"``.
      noise: optional explicit samples (S, *x.shape); overrides key and stdev.
      chunk_size: samples per call (memory budget); None = all at once; ``"auto"``
        (default) as in :func:`jaxadv.attributions.integrated_gradients`.

    Returns:
      The smoothed map, shaped like attribution_fn's output.
    """
    _common.check_images(x)
    return _tunnel(attribution_fn, x, key, num_samples=num_samples, stdev=stdev, kind=kind,
                   noise=noise, chunk_size=chunk_size)


def smooth_grad(logits_fn: LogitsFn, x: Array, target, key: PRNGKey | None, *,
                method: Callable = saliency, num_samples: int = 25, stdev: float = 0.15,
                kind: str = "smoothgrad", noise: Array | None = None,
                chunk_size: int | str | None = "auto", **method_kwargs) -> Array:
    """SmoothGrad (or SmoothGrad^2 / VarGrad via ``kind``) of any ``method(logits_fn, x, target,
    **method_kwargs)`` (default: the vanilla gradient).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) class indices.
      key: typed key for the noise (None only with ``noise``).
      method: an attribution function with the jaxadv signature.
      num_samples, stdev, kind, noise, chunk_size: see :func:`noise_tunnel`.
      **method_kwargs: keyword arguments of ``method`` (e.g. ``num_steps`` for IG).

    Returns:
      Shaped like ``method``'s output.
    """
    t = _common.prepare(logits_fn, x, target)  # checks x once: the noise tunnel does not again
    _check_method_kwargs(method, logits_fn, x, t, method_kwargs)
    return _tunnel(lambda z: method(logits_fn, z, t, **method_kwargs), x, key,
                   num_samples=num_samples, stdev=stdev, kind=kind, noise=noise,
                   chunk_size=chunk_size)


def _check_method_kwargs(method, logits_fn, x, t, method_kwargs) -> None:
    """A keyword that neither :func:`smooth_grad` nor ``method`` takes raises a TypeError that says
    which keywords are smooth_grad's own (a misspelt ``stdev`` would otherwise surface as an
    error of ``method``)."""
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # builtins and some callables have none: let the call say
        return
    try:
        signature.bind(logits_fn, x, t, **method_kwargs)
    except TypeError as e:
        name = getattr(method, "__name__", repr(method))
        raise TypeError(f"smooth_grad passes keywords it does not know to method={name}, which "
                        f"refused them ({e}). smooth_grad's own keywords are method, "
                        f"num_samples, stdev (the noise's standard deviation), kind, noise and "
                        f"chunk_size.") from None


def smooth_grad_squared(logits_fn: LogitsFn, x: Array, target, key: PRNGKey | None,
                        **kwargs) -> Array:
    """SmoothGrad^2: ``smooth_grad(..., kind="smoothgrad_sq")``."""
    return smooth_grad(logits_fn, x, target, key, kind="smoothgrad_sq", **kwargs)


def var_grad(logits_fn: LogitsFn, x: Array, target, key: PRNGKey | None, **kwargs) -> Array:
    """VarGrad: ``smooth_grad(..., kind="vargrad")``."""
    return smooth_grad(logits_fn, x, target, key, kind="vargrad", **kwargs)
