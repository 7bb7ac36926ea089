"""Guided Integrated Gradients: IG along an adaptive path that moves low-gradient features first.

Kapishnikov et al., "Guided Integrated Gradients: an adaptive path method for removing noise",
CVPR 2021. The path starts at the baseline b and ends at x. At step s = 1..T (alpha = s/T) every
feature i has a progress a_i = (z_i - b_i)/(x_i - b_i) that must stay within
[alpha - max_dist, alpha + max_dist]:

1. features lagging below alpha - max_dist jump to it;
2. until the remaining l1 distance to x is (1 - alpha) ||x - b||_1, the still-movable features
   whose |gradient| is at most the ``fraction`` quantile (numpy's "lower") of all n features'
   |gradient|, the features that cannot move counted as infinite, move towards alpha + max_dist
   (the last group only part of the way, so the l1 target is met exactly). This is PAIR
   ``saliency``'s rule: once fewer than 1 - fraction of the features can move, all of them move.
   (Until 2026-12-07 jaxadv took the ``fraction`` of the movable features only, a different path
   and map; ``test_equals_pair_saliency`` checks the map against PAIR's code.)
3. the attribution gains (z_new - z_old) * grad f_c(z_old).

The last step lands exactly on x, so sum GuidedIG = sum_s grad f(z_s) . (z_{s+1} - z_s) -> f_c(x) -
f_c(b) as T grows (a Riemann sum along the adaptive path). Step 2 is a fixed number of rounds
(``num_inner``, each cheap: no model call), so the whole method is a ``lax.scan`` of T gradient
evaluations, jit-able and differentiable.
"""

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv.attributions import _common
from jaxadv.attributions.integrated_gradients import make_baseline
from jaxadv.types import Array, LogitsFn, PRNGKey


def guided_integrated_gradients(logits_fn: LogitsFn, x: Array, target, *, baseline="zero",
                                num_steps: int = 200, fraction: float = 0.25,
                                max_dist: float = 0.02, num_inner: int = 8,
                                key: PRNGKey | None = None, blur_sigma: float = 5.0) -> Array:
    """Guided IG of the target logit (Kapishnikov et al. 2021; defaults as PAIR ``saliency``).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) class indices.
      baseline: as for :func:`integrated_gradients` (``"zero"``, ``"blur"``, ``"uniform"``, float,
        array).
      num_steps: T, the number of gradient evaluations.
      fraction: the quantile of all features' |gradient| (non-movable ones infinite) below which
        movable features move in a round (module docstring).
      max_dist: how far (in path fraction) a feature may run ahead of or lag behind alpha.
      num_inner: rounds of step 2 per step (a static cap; usually 1-2 are needed).
      key, blur_sigma: for the baseline.

    Returns:
      (B, H, W, C).
    """
    t = _common.prepare(logits_fn, x, target)
    num_steps = validation.check_int("num_steps", num_steps, 1)
    num_inner = validation.check_int("num_inner", num_inner, 1)
    validation.check_range("fraction", fraction, 0.0, 1.0, low_open=True)
    validation.check_range("max_dist", max_dist, 0.0, 1.0)
    b = make_baseline(x, baseline, key=key, blur_sigma=blur_sigma)
    _common.check_finite(b, "the path's start (baseline)")
    batch, n = x.shape[0], x[0].size
    xf, bf = x.reshape(batch, n), b.reshape(batch, n)
    total = xf - bf
    fixed = total == 0
    l1_total = jnp.sum(jnp.abs(total), axis=-1, keepdims=True)
    direction = jnp.sign(total)
    tol = 1e-6 * l1_total + 1e-12

    def grad_fn(z):
        return _common.input_gradient(logits_fn, z.reshape(x.shape), t).reshape(batch, n)

    # "progress a_i < a" is decided on positions, (b + a (x - b) - z) sign(x - b) > 0, not on the
    # rounded ratio (z - b) / (x - b): a feature set to exactly z_max must never test as movable,
    # which the ratio's rounding (different under vmap or after a tiny change of x) allowed,
    # changing the path (and making the map jump with x).

    def step(carry, s):
        z, attr = carry
        g = grad_fn(z)
        alpha = (s + 1.0) / num_steps
        a_min = jnp.maximum(alpha - max_dist, 0.0)
        a_max = jnp.minimum(alpha + max_dist, 1.0)
        z_min, z_max = bf + a_min * total, bf + a_max * total
        l1_target = l1_total * (1.0 - alpha)
        new = jnp.where(((z_min - z) * direction > 0) & ~fixed, z_min, z)

        def round_(_, w):
            need = jnp.sum(jnp.abs(xf - w), axis=-1, keepdims=True) - l1_target
            movable = ((z_max - w) * direction > 0) & ~fixed
            absg = jnp.where(movable, jnp.abs(g), jnp.inf)
            # numpy's quantile(absg, fraction, method="lower") over all n features
            k = jnp.clip(jnp.floor(fraction * (n - 1)).astype(jnp.int32), 0, n - 1)
            thr = jax.lax.dynamic_index_in_dim(jnp.sort(absg, axis=-1), k, axis=-1)
            chosen = movable & (absg <= thr)
            room = jnp.sum(jnp.abs(z_max - w) * chosen.astype(x.dtype), axis=-1, keepdims=True)
            gamma = jnp.where((room > 0) & (need > tol), need / jnp.where(room > 0, room, 1.0), 0.0)
            gamma = jnp.clip(gamma, 0.0, 1.0)
            # gamma = 1 lands exactly on z_max (w + (z_max - w) may round past or short of it)
            return jnp.where(chosen, jnp.where(gamma >= 1.0, z_max, w + gamma * (z_max - w)), w)

        new = jax.lax.fori_loop(0, num_inner, round_, new)
        new = jnp.where(s == num_steps - 1, xf, new)
        return (new, attr + (new - z) * g), None

    steps = jnp.arange(num_steps, dtype=x.dtype)
    (_, attr), _ = jax.lax.scan(step, (bf, jnp.zeros_like(xf)), steps)
    return attr.reshape(x.shape)
