"""EAD, the elastic-net attack (Chen et al. 2018): sparse minimum-distortion examples by FISTA.

Chen, Sharma, Zhang, Yi & Hsieh, "EAD: Elastic-net attacks to deep neural networks via adversarial
examples", AAAI 2018 (methods.md 2.2). For a constant c > 0 and the C&W margin f (module
:mod:`jaxadv.attacks.cw`):

    minimise_x'  c f(x') + ||x' - x||_2^2 + beta ||x' - x||_1     subject to x' in the box

The smooth part ``g = c f + ||.||_2^2`` takes gradient steps and the l1 part is handled by the
projected shrinkage-thresholding operator S_beta (elementwise, then clipped to the box):

    S_beta(z)_i = min(z_i - beta, high)   if z_i - x_i > beta
                  x_i                     if |z_i - x_i| <= beta
                  max(z_i + beta, low)    if z_i - x_i < -beta

    x^{k+1} = S_beta(y^k - a_k grad g(y^k)),    a_k = lr (1 - k / K)^(1/2)   (polynomial decay)
    y^{k+1} = x^{k+1} + k / (k + 3) (x^{k+1} - x^k)        (FISTA; ISTA: y^{k+1} = x^{k+1})

(the threshold is beta itself, not a_k beta, as in the paper's Algorithm 1 and its code). Every
iterate x^{k+1} that is adversarial (with margin kappa) is a candidate; the decision rule keeps the
candidate of least elastic-net distance ``beta ||d||_1 + ||d||_2^2`` ("EN") or least l1 distance
("L1"). The per-example binary search over c, the rounds restarting from x, and the early abort
(per example, with patience) are those of :func:`jaxadv.attacks.cw.cw_l2`. Defaults follow the
paper: beta = 1e-3, 9 binary steps, c0 = 1e-3, lr 1e-2, 1000 iterations, kappa 0.
"""

import jax
import jax.numpy as jnp
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

DECISION_RULES = ("EN", "L1")


def shrinkage_threshold(z: Array, x: Array, beta, bounds: tuple[float, float]) -> Array:
    """EAD's projected shrinkage-thresholding S_beta(z) around x, elementwise (module docstring):
    the minimiser over the box of ``0.5 ||u - z||_2^2 + beta ||u - x||_1``."""
    lo, hi = bounds
    d = z - x
    return jnp.where(d > beta, jnp.minimum(z - beta, hi),
                     jnp.where(d < -beta, jnp.maximum(z + beta, lo), x))


def _distances(x_adv: Array, x: Array, beta) -> tuple[Array, Array]:
    """Per-example (l1, squared l2) distances, (B,) each."""
    d = (x_adv - x).reshape(x.shape[0], -1)
    return jnp.sum(jnp.abs(d), axis=-1), jnp.sum(d * d, axis=-1)


def _ead_round(logits_fn, x, y, t, c, *, beta, kappa, learning_rate, num_steps, fista,
               abort_patience, rule, bounds, best_dist, best_x):
    """One FISTA/ISTA run at constants c (B,): (found (B,), best distance (B,), best x)."""
    b, dt = x.shape[0], x.dtype
    check_every = max(1, num_steps // 10)

    def smooth(z):
        logits = logits_fn(z)
        _, l2sq = _distances(z, x, beta)
        return jnp.sum(l2sq + c * margin_loss(logits, y, t, kappa))

    grad_fn = jax.grad(smooth)

    def cond(carry):
        k, *_, active, _, _, _, _ = carry
        return (k < num_steps) & jnp.any(active)

    def body(carry):
        k, x_k, y_k, active, (strikes, prev), found, best_dist, best_x = carry
        kf = k.astype(dt)
        lr = learning_rate * jnp.sqrt(jnp.maximum(1.0 - kf / num_steps, 0.0))
        x_next = shrinkage_threshold(y_k - lr * grad_fn(y_k), x, beta, bounds)
        x_next = jnp.where(per_example(active, x), x_next, x_k)
        if fista:
            y_next = x_next + (kf / (kf + 3.0)) * (x_next - x_k)
        else:
            y_next = x_next
        logits = logits_fn(x_next)
        l1, l2sq = _distances(x_next, x, beta)
        adv = is_adversarial(logits, y, t, kappa) & active
        dist = beta * l1 + l2sq if rule == "EN" else l1
        closer = adv & (dist < best_dist)
        best_dist = jnp.where(closer, dist, best_dist)
        best_x = jnp.where(per_example(closer, x), x_next, best_x)
        found = found | adv
        if abort_patience:
            loss = c * margin_loss(logits, y, t, kappa) + l2sq + beta * l1
            check = (k % check_every) == 0
            strikes = jnp.where(check, jnp.where(loss > prev * 0.9999, strikes + 1, 0), strikes)
            active = active & (strikes < abort_patience)
            prev = jnp.where(check, loss, prev)
        return k + 1, x_next, y_next, active, (strikes, prev), found, best_dist, best_x

    init = (jnp.asarray(0, jnp.int32), x, x, jnp.ones((b,), jnp.bool_),
            (jnp.zeros((b,), jnp.int32), jnp.full((b,), jnp.inf, dt)),
            jnp.zeros((b,), jnp.bool_), best_dist, best_x)
    out = lax.while_loop(cond, body, init)
    return out[5], out[6], out[7]


def ead(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, targets=None, beta=1e-3,
        decision_rule: str = "EN", kappa=0.0, c_init=1e-3, num_binary_steps: int = 9,
        num_steps: int = 1000, learning_rate=1e-2, fista: bool = True, abort_early: bool = True,
        abort_patience: int = 2, bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """EAD elastic-net attack with a per-example binary search over c (module docstring).

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels.
      key: typed PRNG key (used only by ``targets="random"``).
      targets: None (untargeted), (B,) int targets, ``"random"`` or ``"least_likely"``.
      beta: the l1 weight and shrinkage threshold (>= 0; 1e-3 in the paper, 1e-2 in cleverhans).
      decision_rule: "EN" (least beta l1 + l2^2 among adversarial iterates) or "L1".
      kappa: confidence margin (>= 0).
      c_init: first constant c (> 0).
      num_binary_steps: rounds of the search over c (static, >= 1).
      num_steps: FISTA iterations per round (static, >= 1).
      learning_rate: initial step a_0 (> 0), decayed as (1 - k / K)^(1/2).
      fista: FISTA momentum (True) or plain ISTA.
      abort_early, abort_patience: as in :func:`jaxadv.attacks.cw.cw_l2` (on the full elastic-net
        objective at x^{k+1}).
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the adversarial iterate chosen by the decision rule (x
      itself where the clean input is already adversarial; x where none was found); ``success``
      (B,); ``loss`` (B,) = minus its decision-rule distance (-inf where none was found).

    Raises:
      ValueError: unknown decision rule, beta < 0, kappa < 0, non-positive c_init or
        learning_rate, bad counts, labels or targets out of range, shape mismatch.
    """
    if decision_rule not in DECISION_RULES:
        raise ValueError(f"Unknown decision_rule {decision_rule!r}; choose one of "
                         f"{DECISION_RULES}.")
    check_int("num_binary_steps", num_binary_steps, 1)
    check_int("num_steps", num_steps, 1)
    check_int("abort_patience", abort_patience, 1)
    check_positive("c_init", c_init)
    check_positive("learning_rate", learning_rate)
    validation.check_nonnegative("beta", beta)
    validation.check_nonnegative("kappa", kappa)
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    b, dt = x.shape[0], x.dtype
    beta = jnp.asarray(beta, dt)

    clean_adv = is_adversarial(logits_fn(x), y, t, kappa)
    best_dist = jnp.where(clean_adv, 0.0, jnp.inf).astype(dt)

    def round_(_, carry):
        c, lower, upper, best_dist, best_x = carry
        found, best_dist, best_x = _ead_round(
            logits_fn, x, y, t, c, beta=beta, kappa=kappa, learning_rate=learning_rate,
            num_steps=num_steps, fista=fista, abort_patience=abort_patience if abort_early else 0,
            rule=decision_rule, bounds=bounds, best_dist=best_dist, best_x=best_x)
        c, lower, upper = binary_search_update(c, lower, upper, found)
        return c, lower, upper, best_dist, best_x

    init = (jnp.full((b,), c_init, dt), jnp.zeros((b,), dt), jnp.full((b,), C_UPPER_INIT, dt),
            best_dist, x)
    _, _, _, best_dist, best_x = lax.fori_loop(0, num_binary_steps, round_, init)
    found = jnp.isfinite(best_dist)
    return AttackResult(jnp.where(per_example(found, x), best_x, x), found,
                        jnp.where(found, -best_dist, -jnp.inf))


__all__ = ["DECISION_RULES", "ead", "shrinkage_threshold"]
