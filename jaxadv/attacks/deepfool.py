"""DeepFool (Moosavi-Dezfooli et al. 2016), l2 and l-inf: the closest linearised boundary, step by
step.

Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016 (methods.md 4.2 / 5.2 *nice*). At the current point x_i, for every candidate
class k != y with ``f_k = z_k(x_i) - z_y(x_i)`` and ``w_k = grad f_k(x_i)``, the linearised
boundary with class k lies at distance ``|f_k| / ||w_k||_q`` (q the dual norm: 2 for l2, 1 for
l-inf). DeepFool takes the closest class l and the step that reaches its linearised boundary:

    d_l = |f_l| / ||w_l||_q + 1e-4
    l2:    r_i = d_l * w_l / ||w_l||_2
    l-inf: r_i = d_l * sign(w_l)
    x_{i+1} = clip(x + (1 + overshoot) * sum_{j <= i} r_j, bounds)

until x_{i+1} is misclassified (per example; finished examples stop moving). The 1e-4 and the
overshoot (0.02) push the point just across the boundary, as in the paper's code. On a linear
model the linearisation is exact, so one step lands on the closest boundary (times 1 + overshoot).

Candidates are the ``num_candidates`` highest-scoring classes other than y at the clean input
(Foolbox's ``candidates``; all K - 1 by default). Each step costs one forward pass and
``num_candidates`` backward passes (one vjp, vmapped over the candidates' cotangents). The loop is
a ``lax.while_loop`` that exits once every example is adversarial or ``num_steps`` is reached.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jaxadv.attacks import projections
from jaxadv.attacks.apgd import (
    check_common,
    check_int,
    check_norm,
    is_tracer,
    per_example,
    top_k_other_classes,
)
from jaxadv.attacks.base import AttackResult
from jaxadv.types import Array, LogitsFn

DEEPFOOL_NORMS = ("l2", "linf")
_TINY = 1e-12


def _differences_and_grads(logits_fn, z: Array, y: Array, cand: Array
                           ) -> tuple[Array, Array, Array]:
    """logits (B, K), f (B, C) = z_cand - z_y and their input gradients w (B, C, d)."""
    b = z.shape[0]
    logits, vjp = jax.vjp(logits_fn, z)
    k = logits.shape[-1]
    cot = (jax.nn.one_hot(cand.T, k, dtype=logits.dtype)
           - jax.nn.one_hot(y, k, dtype=logits.dtype)[None])  # (C, B, K)
    grads = jax.vmap(lambda c: vjp(c)[0])(cot)  # (C, B, ...)
    w = jnp.moveaxis(grads, 0, 1).reshape(b, cand.shape[1], -1)
    zy = jnp.take_along_axis(logits, y[:, None], axis=-1)
    f = jnp.take_along_axis(logits, cand, axis=-1) - zy
    return logits, f, w


def deepfool(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, norm: str = "l2",
             num_steps: int = 50, overshoot=0.02, num_candidates: int | None = None,
             bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """DeepFool, untargeted, l2 or l-inf (module docstring).

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels.
      key: typed PRNG key (unused: DeepFool is deterministic; kept so attacks are interchangeable).
      norm: 'l2' or 'linf'.
      num_steps: most steps per example (static, >= 1).
      overshoot: the perturbation is scaled by ``1 + overshoot`` (>= 0; traced values welcome).
      num_candidates: classes considered, the top ones other than y by clean logits (static,
        1..K-1); None = all K - 1.
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the first misclassified iterate (x where the clean input
      is already misclassified, and where DeepFool did not succeed within ``num_steps``);
      ``success`` (B,); ``loss`` (B,) = minus its ``norm`` distance to x (-inf on failure).

    Raises:
      ValueError: unknown norm, bad counts, overshoot < 0, labels out of range, shape mismatch.
    """
    check_norm(norm, DEEPFOOL_NORMS)
    check_int("num_steps", num_steps, 1)
    if not is_tracer(overshoot) and not float(overshoot) >= 0.0:
        raise ValueError(f"overshoot must be >= 0; got {overshoot}.")
    x, y, k = check_common(logits_fn, x, y, eps=None, bounds=bounds)
    if num_candidates is None:
        num_candidates = k - 1
    check_int("num_candidates", num_candidates, 1)
    if num_candidates > k - 1:
        raise ValueError(f"num_candidates must be <= K - 1 = {k - 1}; got {num_candidates}.")
    del key
    dt = x.dtype
    lo, hi = bounds
    scale = 1.0 + jnp.asarray(overshoot, dt)

    logits0 = logits_fn(x)
    cand = top_k_other_classes(logits0, y, num_candidates).T  # (B, C)
    adv0 = jnp.argmax(logits0, axis=-1) != y

    def cond(carry):
        i, _, _, active = carry
        return (i < num_steps) & jnp.any(active)

    def body(carry):
        i, x_i, r_tot, active = carry
        _, f, w = _differences_and_grads(logits_fn, x_i, y, cand)
        if norm == "l2":
            dual = jnp.sqrt(jnp.sum(w * w, axis=-1))
        else:
            dual = jnp.sum(jnp.abs(w), axis=-1)
        dist = jnp.abs(f) / (dual + _TINY)
        closest = jnp.argmin(dist, axis=-1)[:, None]
        d_l = jnp.take_along_axis(dist, closest, axis=-1) + 1e-4
        w_l = jnp.take_along_axis(w, closest[:, :, None], axis=1)[:, 0]
        if norm == "l2":
            r = d_l * w_l / (jnp.take_along_axis(dual, closest, axis=-1) + _TINY)
        else:
            r = d_l * jnp.sign(w_l)
        r_tot = r_tot + jnp.where(active[:, None], r, 0.0).reshape(x.shape)
        x_new = jnp.clip(x + scale * r_tot, lo, hi)
        x_i = jnp.where(per_example(active, x), x_new, x_i)
        active = active & (jnp.argmax(logits_fn(x_i), axis=-1) == y)
        return i + 1, x_i, r_tot, active

    init = (jnp.asarray(0, jnp.int32), x, jnp.zeros_like(x), ~adv0)
    _, x_last, _, active = lax.while_loop(cond, body, init)
    success = ~active
    x_adv = jnp.where(per_example(success, x), x_last, x)
    dist = projections.norm_of(x_adv - x, norm)
    return AttackResult(x_adv, success, jnp.where(success, -dist, -jnp.inf).astype(dt))


__all__ = ["deepfool"]
