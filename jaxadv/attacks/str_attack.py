"""Str-attack (Xu et al., ICLR 2019): structured, group-sparse adversarial perturbations by
linearised ADMM.

Xu, Liu, Zhao, Chen, Zhang, Fan, Erdogmus, Wang & Lin, "Structured adversarial attack: towards
general implementation and better interpretability", ICLR 2019 (methods.md 2.2; code:
KaidiXu/StrAttack, ``l2_LADMMST_attack_v3.py``). For the C&W margin f (targeted or untargeted,
confidence kappa) and non-overlapping ``group_size`` x ``group_size`` windows G of the image (all
channels of a window in one group), Str-attack solves

    minimise_delta  c f(x + delta) + gamma ||delta||_2^2 + tau sum_G ||delta_G||_2
    subject to      x + delta in the box,  ||delta||_inf <= linf_bound

by splitting delta into copies tied to a main variable z by scaled duals u, v, s; one iteration:

    delta = rho / (rho + 2 gamma) (z - u)                             (prox of gamma ||.||_2^2)
    w     = clip(z - s, max(low - x, -eps_box), min(high - x, eps_box))   (box projection)
    y_G   = max(1 - (tau / rho) / ||(z - v)_G||_2, 0) (z - v)_G        (group soft threshold)
    eta   = 1 / sqrt(t + 1)
    z     = (alpha / eta z + 2 rho (delta + u) + rho (w + s) + rho (y + v) - c grad f(x + z))
            / (alpha / eta + 4 rho)                                  (linearised z step)
    u += delta - z;  v += y - z;  s += w - z

and each y is a candidate: x + y (clipped to the box and the l-inf bound) is kept when
adversarial and of the smallest l2 norm so far. The outer search over c starts at ``c_init``
(1), multiplies by 5 until the first success and then bisects; round r runs
``num_steps + r * steps_increment`` iterations (the reference CLI: 6 rounds, 2000 + 1000 r).
The optional refinement ('retrain') stage then runs ``num_retrain_steps`` (8) more rounds of
bisection on c from ``retrain_c_init`` (5), each of
``retrain_iters`` (400) steps of a smaller ADMM restricted to the support S of the best
perturbation so far (entries whose magnitude exceeds the ``retrain_percentile``-th (3rd)
percentile of its non-zero magnitudes):

    d = clip((z1 - u1) rho / (rho + gamma / 100)) on S, 0 elsewhere
    z1 = (alpha z1 + rho (d + u1) - c grad f(x + d) * 1_S) / (alpha + 2 rho);   u1 += d - z1

with z1 restarting from the best perturbation each round and d the candidate.

Defaults are the paper's for MNIST/CIFAR (rho = 15, tau = 3, gamma = 2, alpha = 5, 2 x 2 groups;
13 x 13 for ImageNet, eps_box = 0.5 of a unit-range image). Differences from the reference code,
each so that examples never interact and the returned example is exactly what was checked: the
margin gradient is per example (the reference scales it by the batch's summed c); the percentile
of the refinement is per example (the reference pools the batch); a round counts as a success
when it found any adversarial candidate (the reference also requires that round to improve the
overall best); candidates are clipped to the box and to eps_box before they are checked; and
windows that do not fit the image at its bottom and right edges form smaller groups (the
reference leaves those pixels unthresholded). Loops are ``lax.fori_loop``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv import validation
from jaxadv.attacks.apgd import check_int, per_example
from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.cw import (
    C_UPPER_INIT,
    binary_search_update,
    check_positive,
    is_adversarial,
    margin_loss,
    prepare,
)
from jaxadv.types import Array, LogitsFn


def _padded_windows(v: Array, k: int) -> tuple[Array, tuple[int, int]]:
    """(B, H, W, C) -> (B, Hg, k, Wg, k, C) with zero padding at the bottom/right."""
    b, h, w, c = v.shape
    ph, pw = -h % k, -w % k
    v = jnp.pad(v, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return v.reshape(b, (h + ph) // k, k, (w + pw) // k, k, c), (h, w)


def group_norms(delta: Array, group_size: int) -> Array:
    """l2 norm of each ``group_size`` x ``group_size`` window (all channels), (B, Hg, Wg)."""
    g, _ = _padded_windows(delta, group_size)
    return jnp.sqrt(jnp.sum(g * g, axis=(2, 4, 5)))


def group_soft_threshold(v: Array, group_size: int, threshold) -> Array:
    """Group soft thresholding, the prox of ``threshold * sum_G ||v_G||_2``: each window is scaled
    by ``max(1 - threshold / ||v_G||_2, 0)``. (B, H, W, C) -> (B, H, W, C)."""
    g, (h, w) = _padded_windows(v, group_size)
    norms = jnp.sqrt(jnp.sum(g * g, axis=(2, 4, 5), keepdims=True))
    scale = jnp.maximum(1.0 - threshold / jnp.where(norms > 0, norms, 1.0), 0.0)
    out = (g * jnp.where(norms > 0, scale, 0.0)).reshape(g.shape[0], g.shape[1] * group_size,
                                                         g.shape[3] * group_size, g.shape[5])
    return out[:, :h, :w, :]


def str_attack(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, targets=None,
               group_size: int = 2, rho=15.0, tau=3.0, gamma=2.0, alpha=5.0, kappa=0.0,
               c_init=1.0, num_binary_steps: int = 6, num_steps: int = 2000,
               steps_increment: int = 1000, linf_bound=0.5, retrain: bool = True,
               num_retrain_steps: int = 8, retrain_iters: int = 400, retrain_c_init=5.0,
               retrain_percentile: float = 3.0, bounds: tuple[float, float] = (0.0, 1.0)
               ) -> AttackResult:
    """Str-attack by linearised ADMM with group sparsity (module docstring).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images in ``bounds``.
      y: (B,) int labels.
      key: typed PRNG key (``targets="random"``).
      targets: None (untargeted), (B,) int targets, ``"random"`` or ``"least_likely"`` (the paper
        attacks towards targets).
      group_size: window side k of the groups (static; 2 for MNIST/CIFAR, 13 for ImageNet).
      rho, tau, gamma, alpha: ADMM penalty, group-sparsity weight, l2 weight and linearisation
        weight (15, 3, 2, 5).
      kappa: confidence (>= 0).
      c_init: first constant c (> 0).
      num_binary_steps: rounds of the search over c (static, >= 1).
      num_steps, steps_increment: round r runs ``num_steps + r * steps_increment`` iterations.
      linf_bound: eps_box, the l-inf bound on the perturbation (> 0).
      retrain: run the refinement stage.
      num_retrain_steps, retrain_iters, retrain_c_init, retrain_percentile: its rounds,
        iterations per round, first c and support percentile.
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, H, W, C) the adversarial candidate of smallest l2 norm (x where
      the clean input is already adversarial, and where none was found); ``success`` (B,);
      ``loss`` (B,) = minus its l2 distance (-inf where none was found).

    Raises:
      ValueError: x not (B, H, W, C), bad counts or constants, labels or targets out of range.
    """
    if np.ndim(x) != 4:
        raise ValueError(f"Str-attack needs images (B, H, W, C); got shape {np.shape(x)}.")
    check_int("group_size", group_size, 1)
    check_int("num_binary_steps", num_binary_steps, 1)
    check_int("num_steps", num_steps, 1)
    check_int("steps_increment", steps_increment, 0)
    check_int("num_retrain_steps", num_retrain_steps, 0)
    check_int("retrain_iters", retrain_iters, 1)
    for name, v in (("rho", rho), ("alpha", alpha), ("c_init", c_init),
                    ("linf_bound", linf_bound), ("retrain_c_init", retrain_c_init)):
        check_positive(name, v)
    for name, v in (("tau", tau), ("gamma", gamma), ("kappa", kappa)):
        validation.check_nonnegative(name, v)
    if not 0.0 <= float(retrain_percentile) < 100.0:
        raise ValueError(f"retrain_percentile must lie in [0, 100); got {retrain_percentile}.")
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    b, dt = x.shape[0], x.dtype
    lo_box = jnp.maximum(bounds[0] - x, -linf_bound)
    hi_box = jnp.minimum(bounds[1] - x, linf_bound)

    def margin_sum(delta, c):
        return jnp.sum(c * margin_loss(logits_fn(x + delta), y, t, kappa))

    grad_margin = jax.grad(margin_sum)

    def consider(delta, best):
        """Clips the candidate to the box and the l-inf bound, checks it, and keeps it if it is
        the closest so far."""
        best_l2sq, best_delta, best_x, found = best
        x_c = jnp.clip(x + jnp.clip(delta, lo_box, hi_box), bounds[0], bounds[1])
        d = x_c - x
        l2sq = jnp.sum((d * d).reshape(b, -1), axis=-1)
        adv = is_adversarial(logits_fn(x_c), y, t, kappa)
        closer = adv & (l2sq < best_l2sq)
        pick = per_example(closer, x)
        return (jnp.where(closer, l2sq, best_l2sq), jnp.where(pick, delta, best_delta),
                jnp.where(pick, x_c, best_x), found | adv)

    def admm_round(r, carry):
        c, lower, upper, best_l2sq, best_delta, best_x = carry
        zeros = jnp.zeros_like(x)

        def body(it, state):
            z, u, v, s, best = state
            delta = rho / (rho + 2.0 * gamma) * (z - u)
            w = jnp.clip(z - s, lo_box, hi_box)
            yy = group_soft_threshold(z - v, group_size, tau / rho)
            eta = 1.0 / jnp.sqrt(it.astype(dt) + 1.0)
            g = grad_margin(z, c)
            z = ((alpha / eta) * z + 2.0 * rho * (delta + u) + rho * (w + s) + rho * (yy + v) - g) \
                / (alpha / eta + 4.0 * rho)
            u = u + delta - z
            v = v + yy - z
            s = s + w - z
            return z, u, v, s, consider(yy, best)

        best0 = (best_l2sq, best_delta, best_x, jnp.zeros((b,), jnp.bool_))
        _, _, _, _, (best_l2sq, best_delta, best_x, found) = lax.fori_loop(
            0, num_steps + r * steps_increment, body, (zeros, zeros, zeros, zeros, best0))
        c, lower, upper = binary_search_update(c, lower, upper, found, factor=5.0)
        return c, lower, upper, best_l2sq, best_delta, best_x

    clean_adv = is_adversarial(logits_fn(x), y, t, kappa)
    full = lambda v: jnp.full((b,), v, dt)  # noqa: E731
    init = (full(c_init), full(0.0), full(C_UPPER_INIT),
            jnp.where(clean_adv, 0.0, jnp.inf).astype(dt), jnp.zeros_like(x), x)
    *_, best_l2sq, best_delta, best_x = lax.fori_loop(0, num_binary_steps, admm_round, init)

    if retrain and num_retrain_steps:
        shrink = rho / (rho + gamma / 100.0)

        def retrain_round(_, carry):
            c, lower, upper, best_l2sq, best_delta, best_x = carry
            mag = jnp.abs(best_delta).reshape(b, -1)
            nz = mag > 0
            e0 = jnp.nanpercentile(jnp.where(nz, mag, jnp.nan), retrain_percentile, axis=-1)
            e0 = jnp.where(jnp.any(nz, axis=-1), e0, jnp.inf)
            support = (mag > e0[:, None]).reshape(x.shape)

            def body(_, state):
                z1, u1, best = state
                d = jnp.where(support, jnp.clip((z1 - u1) * shrink, lo_box, hi_box), 0.0)
                g = grad_margin(d, c)
                z1 = (alpha * z1 + rho * (d + u1) - g * support) / (alpha + 2.0 * rho)
                u1 = u1 + d - z1
                return z1, u1, consider(d, best)

            best0 = (best_l2sq, best_delta, best_x, jnp.zeros((b,), jnp.bool_))
            _, _, (best_l2sq, best_delta, best_x, found) = lax.fori_loop(
                0, retrain_iters, body, (best_delta, jnp.zeros_like(x), best0))
            c, lower, upper = binary_search_update(c, lower, upper, found, factor=5.0)
            return c, lower, upper, best_l2sq, best_delta, best_x

        init = (full(retrain_c_init), full(0.0), full(C_UPPER_INIT), best_l2sq, best_delta, best_x)
        *_, best_l2sq, best_delta, best_x = lax.fori_loop(0, num_retrain_steps, retrain_round,
                                                          init)

    found = jnp.isfinite(best_l2sq)
    return AttackResult(best_x, found, jnp.where(found, -jnp.sqrt(best_l2sq), -jnp.inf))


__all__ = ["group_norms", "group_soft_threshold", "str_attack"]
