"""Expected Gradients and GradientSHAP: IG averaged over random baselines and path positions.

Expected Gradients: Erion et al., "Improving performance of deep learning models with axiomatic
attribution priors and expected gradients", Nature MI 2021. GradientSHAP: Lundberg & Lee 2017 (SHAP),
as implemented by Captum ``GradientShap``. With references r ~ U(references), a ~ U[0, 1] and
(GradientSHAP only) input noise n ~ N(0, stdev^2):

    EG(x, c) = E_{r, a, n} [ (x + n - r) * grad f_c(r + a (x + n - r)) ]

estimated with ``num_samples`` Monte-Carlo draws per example. ``stdev = 0`` is Expected Gradients;
``stdev > 0`` is GradientSHAP. Completeness holds in expectation:
E[sum EG] = f_c(x) - E_r f_c(r) (for stdev = 0).
"""

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv.attributions import _common
from jaxadv.types import Array, LogitsFn, PRNGKey


def expected_gradients(logits_fn: LogitsFn, x: Array, target, key: PRNGKey, *, references: Array,
                       num_samples: int = 25, stdev: float = 0.0,
                       chunk_size: int | str | None = "auto") -> Array:
    """Expected Gradients (stdev 0) / GradientSHAP (stdev > 0) of the target logit.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) class indices.
      key: typed key; sample s uses ``jax.random.split(key, num_samples)[s]`` (independent of
        ``chunk_size``).
      references: (N, H, W, C) baseline distribution (e.g. training images), drawn uniformly.
      num_samples: Monte-Carlo draws per example.
      stdev: std of Gaussian input noise (GradientSHAP); 0 for Expected Gradients.
      chunk_size: draws per model call; None = all at once; ``"auto"`` (default) as in
        :func:`jaxadv.attributions.integrated_gradients`.

    Returns:
      (B, H, W, C).
    """
    t = _common.prepare(logits_fn, x, target)
    _common.check_floating_images(jnp.asarray(references), "references")
    refs = jnp.asarray(references, x.dtype)
    if refs.ndim != x.ndim or refs.shape[1:] != x.shape[1:] or refs.shape[0] < 1:
        raise ValueError(f"references must have shape (N, *x.shape[1:]) = (N, {x.shape[1:]}); "
                         f"got {refs.shape}.")
    validation.check_finite(refs, "references", fix="every draw from such a reference gives a "
                            "NaN map; drop or repair those references.")
    num_samples = validation.check_int("num_samples", num_samples, 1)
    validation.check_nonnegative("stdev", stdev, "the noise's standard deviation")
    batch = x.shape[0]

    def draw(k):  # (point, path difference) of one Monte-Carlo draw
        k_idx, k_alpha, k_noise = jax.random.split(k, 3)
        idx = jax.random.randint(k_idx, (batch,), 0, refs.shape[0])
        alpha = jax.random.uniform(k_alpha, (batch,), x.dtype)
        # A traced stdev (jit / vmap over it) always draws; a concrete 0 skips the draw.
        noisy = not validation.is_concrete(stdev) or stdev != 0
        xn = x + stdev * jax.random.normal(k_noise, x.shape, x.dtype) if noisy else x
        r = refs[idx]
        diff = xn - r
        return r + _common.per_example(alpha, x) * diff, diff

    chunk = _common.resolve_chunk_size(
        chunk_size, num_samples, batch=batch,
        one_point=lambda: _common.stacked_grad(logits_fn, t,
                                               jax.vmap(draw)(jax.random.split(key, 1))[0]))
    num_chunks = -(-num_samples // chunk)
    total = num_chunks * chunk
    keys = jax.random.split(key, num_samples)
    keys = jnp.concatenate([keys, keys[: total - num_samples]]).reshape(num_chunks, chunk)
    valid = (jnp.arange(total) < num_samples).reshape(num_chunks, chunk).astype(x.dtype)

    def body(acc, inp):
        ks, ok = inp
        points, diffs = jax.vmap(draw)(ks)
        a = diffs * _common.stacked_grad(logits_fn, t, points)
        return acc + jnp.tensordot(ok, a, axes=1), None

    acc = _common.scan_chunks(body, jnp.zeros_like(x), (keys, valid))
    return acc / num_samples


def gradient_shap(logits_fn: LogitsFn, x: Array, target, key: PRNGKey, *, references: Array,
                  num_samples: int = 25, stdev: float = 0.09,
                  chunk_size: int | str | None = "auto") -> Array:
    """GradientSHAP: :func:`expected_gradients` with input noise (default stdev 0.09 as in Captum's
    tutorials for [0, 1] images; Captum's ``GradientShap`` itself defaults to 0)."""
    return expected_gradients(logits_fn, x, target, key, references=references,
                              num_samples=num_samples, stdev=stdev, chunk_size=chunk_size)
