"""Masked-support attacks: PGD-family attacks whose perturbation is confined to a given mask.

For CAM-guided refinement (methods.md 2.4: re-run an attack with delta confined to the true and
target classes' CAM regions) and region-of-attack studies (methods.md 3.2), with a mask m of
values in [0, 1] (usually binary), shaped like x or broadcastable to it ((B, H, W, 1) for a
per-pixel mask over every channel, (H, W, 1) for one mask for the whole batch):

    x_adv = x + m * delta,   delta in B_norm(0, eps),   x + m * delta in the box

The attack runs on delta (the gradient reaching delta is ``m * grad``, so steps, momentum,
l2 normalisation and the sparse l1 direction all see only the masked coordinates), delta is
projected onto the ball and then clipped to the box's per-coordinate interval
``[(low - x) / m, (high - x) / m]`` (0 where m = 0), and the random start is drawn in the
ball and zeroed outside the mask. Hence ``||x_adv - x|| = ||m * delta|| <= ||delta|| <= eps``,
x_adv stays in the box, and outside the mask ``x_adv == x`` exactly. With ``m = 1`` this is the
PGD of :mod:`jaxadv.attacks.gradient` (the same iterates up to rounding).

Loops, restarts and best-so-far tracking are those of :func:`jaxadv.attacks.gradient.pgd_objective`;
``eps``, ``step_size`` and the mask may be traced.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv import validation
from jaxadv.attacks import projections
from jaxadv.attacks.base import AttackResult, is_success, update_best, update_best_at_step
from jaxadv.attacks.gradient import KL_LOSSES, classification_objective, summed_objective
from jaxadv.attacks.step_rules import get_step_rule, l1_box_fill_rule
from jaxadv.attacks.sweep import best_over
from jaxadv.types import Array, LogitsFn


def _is_tracer(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def check_mask(mask, x: Array) -> Array:
    """The mask as an array of x's dtype broadcast to x's shape; ValueError if it cannot be, or
    (where concrete) if its values leave [0, 1]."""
    m = jnp.asarray(mask)
    try:
        shape = jnp.broadcast_shapes(m.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"mask of shape {m.shape} does not broadcast to x {x.shape}; pass a mask "
                         "shaped like x, (B, H, W, 1) or (H, W, 1).")
    if not _is_tracer(mask):
        v = np.asarray(mask, np.float64)
        if v.size and (not np.all(np.isfinite(v)) or v.min() < 0 or v.max() > 1):
            raise ValueError(f"mask values must lie in [0, 1]; got range [{v.min()}, {v.max()}].")
    return jnp.broadcast_to(m.astype(x.dtype), x.shape)


def masked_pgd_objective(objective_fn: Callable, x: Array, key: jax.Array, *, mask, eps,
                         step_size, num_steps: int, norm: str = "linf",
                         bounds: tuple[float, float] = (0.0, 1.0),
                         random_start: bool | str = True, num_restarts: int = 1,
                         step_rule="steepest", l1_sparsity: float = 0.99,
                         momentum_decay: float = 1.0, has_aux: bool = False,
                         track_start: bool = True) -> AttackResult:
    """Projected gradient ascent on ``objective_fn(x + mask * delta)`` (module docstring).

    ``track_start``: whether the start competes for the best iterate, as in
    :func:`jaxadv.attacks.pgd_objective` (False for FGSM's stepped point).

    Args:
      objective_fn: ``x_adv (B, ...) -> (B,)`` to maximise, or with ``has_aux`` a pair
        ``(objective (B,), success (B,) bool)``.
      x: (B, ...) clean inputs in ``bounds``.
      key: typed PRNG key (random starts).
      mask: values in [0, 1], shaped like x or broadcastable to it.
      eps, step_size, num_steps, norm, bounds, random_start, num_restarts, step_rule,
        l1_sparsity, momentum_decay, has_aux: as in
        :func:`jaxadv.attacks.gradient.pgd_objective`.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the best iterate (equal to x outside the mask),
      ``success`` (B,), ``loss`` (B,).

    Raises:
      ValueError: a mask that does not broadcast to x or leaves [0, 1], and the errors of
        ``pgd_objective`` (negative eps or step size, unknown norm or step rule, bad counts).
    """
    projections.check_norm(norm)
    x = jnp.asarray(x)
    projections.check_attack_inputs(x, jnp.zeros(x.shape[:1], jnp.int32), eps=eps, bounds=bounds)
    m = check_mask(mask, x)
    validation.check_nonnegative("step_size", step_size)
    num_steps = validation.check_int("num_steps", num_steps, 0)
    num_restarts = validation.check_int("num_restarts", num_restarts, 1)
    start = projections.check_random_start(random_start)
    if num_restarts > 1 and start is None:
        raise ValueError(f"num_restarts={num_restarts} without random_start: every restart would "
                         "be identical; set random_start=True or num_restarts=1.")
    b = x.shape[0]
    lo, hi = bounds
    rule = get_step_rule(step_rule, norm, l1_sparsity=l1_sparsity, bounds=bounds,
                         momentum_decay=momentum_decay)
    step = jnp.asarray(step_size, x.dtype)
    step = step.reshape(step.shape + (1,) * (x.ndim - step.ndim)) if step.ndim else step
    inside = m > 0
    safe_m = jnp.where(inside, m, 1.0)
    d_lo = jnp.where(inside, (lo - x) / safe_m, 0.0)
    d_hi = jnp.where(inside, (hi - x) / safe_m, 0.0)

    def feasible(delta):
        return jnp.clip(projections.project(delta, eps, norm), d_lo, d_hi)

    def to_x(delta):
        return jnp.where(inside, jnp.clip(x + m * delta, lo, hi), x)

    def to_x_differentiable(delta):
        # delta is feasible, so the clip only removes rounding; it stays out of the gradient
        # (a clip's derivative is 0 or 1/2 at the bound, which would bend the step direction).
        z = x + m * delta
        return jnp.where(inside, z + lax.stop_gradient(jnp.clip(z, lo, hi) - z), x)

    evaluate = summed_objective(lambda delta: objective_fn(to_x_differentiable(delta)), b,
                                x.dtype, has_aux=has_aux)

    value_and_grad = jax.value_and_grad(evaluate, has_aux=True)

    def run(run_key):
        if start is not None:
            d0 = feasible(jnp.where(inside, projections.random_start(
                run_key, x, eps, norm, distribution=start), 0.0))
        else:
            d0 = jnp.zeros_like(x)
        best0 = AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype))

        def body(i, carry):
            delta, state, best = carry
            (_, (obj, succ)), g = value_and_grad(delta)
            best = update_best_at_step(best, i, to_x(delta), succ, obj, track_start=track_start)
            g = jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))
            direction, state = rule.update(g, state, to_x(delta))
            return feasible(delta + step * direction.astype(x.dtype)), state, best

        d_last, _, best = lax.fori_loop(0, num_steps, body, (d0, rule.init(to_x(d0)), best0))
        _, (obj, succ) = evaluate(d_last)
        return update_best(best, to_x(d_last), succ, obj)

    if num_restarts == 1:
        return run(key)
    return best_over(jax.vmap(run)(jax.random.split(key, num_restarts)))


def masked_pgd(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, mask, eps, step_size,
               num_steps: int, norm: str = "linf", loss_fn="ce", targets=None,
               random_start: bool | str = True, num_restarts: int = 1, step_rule="steepest",
               bounds: tuple[float, float] = (0.0, 1.0), l1_sparsity: float = 0.99,
               momentum_decay: float = 1.0, track_start: bool = True) -> AttackResult:
    """PGD (Madry et al. 2018) with the perturbation confined to ``mask`` (module docstring).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images. y: (B,) int labels. key: typed PRNG key.
      mask: values in [0, 1] shaped like x or broadcastable to it, e.g. a thresholded,
        upsampled CAM (B, H, W, 1).
      eps, step_size, num_steps, norm, loss_fn, targets, random_start, num_restarts, step_rule,
        bounds, l1_sparsity, momentum_decay, track_start: as in :func:`jaxadv.attacks.gradient.pgd`.

    Returns:
      AttackResult with ``x_adv`` (B, H, W, C) equal to x outside the mask, ``success`` (B,),
      ``loss`` (B,).
    """
    x = jnp.asarray(x)
    objective, _ = classification_objective(logits_fn, x, y, loss_fn=loss_fn, targets=targets,
                                            key=key)
    result = masked_pgd_objective(objective, x, key, mask=mask, eps=eps, step_size=step_size,
                                  num_steps=num_steps, norm=norm, bounds=bounds,
                                  random_start=random_start, num_restarts=num_restarts,
                                  step_rule=step_rule, l1_sparsity=l1_sparsity,
                                  momentum_decay=momentum_decay, has_aux=True,
                                  track_start=track_start)
    if isinstance(loss_fn, str) and loss_fn in KL_LOSSES:
        result = result._replace(success=is_success(logits_fn(result.x_adv), jnp.asarray(y)))
    return result


def masked_fgsm(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, mask, eps,
                norm: str = "linf", loss_fn="ce", targets=None,
                bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """One masked fast-gradient step of size eps from x (FGSM / FGM confined to ``mask``); for
    l1 the budget fills the largest-gradient coordinates inside the mask up to the box, as
    :func:`jaxadv.attacks.fgsm` (with ``mask=1`` the two are the same)."""
    step_rule = l1_box_fill_rule(budget=eps, bounds=bounds) if norm == "l1" else "steepest"
    return masked_pgd(logits_fn, x, y, key, mask=mask, eps=eps, step_size=eps, num_steps=1,
                      norm=norm, loss_fn=loss_fn, targets=targets, random_start=False,
                      bounds=bounds, l1_sparsity=1.0, step_rule=step_rule, track_start=False)


def masked_bim(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, mask, eps,
               num_steps: int = 10, step_size=None, norm: str = "linf", loss_fn="ce",
               targets=None, bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """BIM / I-FGSM confined to ``mask``: from x, ``step_size`` default eps / num_steps."""
    if step_size is None:
        step_size = jnp.asarray(eps) / max(int(num_steps), 1)
    return masked_pgd(logits_fn, x, y, key, mask=mask, eps=eps, step_size=step_size,
                      num_steps=num_steps, norm=norm, loss_fn=loss_fn, targets=targets,
                      random_start=False, bounds=bounds)


__all__ = ["check_mask", "masked_bim", "masked_fgsm", "masked_pgd", "masked_pgd_objective"]
