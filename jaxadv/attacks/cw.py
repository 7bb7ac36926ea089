"""Carlini-Wagner l2 (C&W-l2): the minimum-l2 adversarial example by optimisation.

Carlini & Wagner, "Towards evaluating the robustness of neural networks", IEEE S&P 2017
(methods.md 2.2). For each input x with label y (or target t) and a constant c > 0:

    x'(w) = low + (high - low) (tanh(w) + 1) / 2                      (the box by construction)
    minimise_w  ||x'(w) - x||_2^2 + c * f(x'(w))
    f(x') = max(z_y(x') - max_{j != y} z_j(x'), -kappa)               (untargeted)
    f(x') = max(max_{j != t} z_j(x') - z_t(x'), -kappa)               (targeted)

``w`` starts at ``arctanh`` of x (squeezed by 1 - 1e-6 so pixels on the bounds stay finite) and is
optimised by Adam (optax). An iterate counts as adversarial when it is misclassified (or classified
as t) with a logit margin of at least ``kappa``; the smallest-l2 adversarial iterate over the whole
run is kept per input. An outer binary search over c, per input, follows the paper: after each
round, c is halved towards the largest failing c if the round found an adversarial example, else
multiplied by 10 until one is found, then bisected. Each round restarts Adam and w. Early abort
(per input, not per batch as in the reference code, so examples never influence each other):
every ``num_steps // 10`` steps an input's objective is compared with its value at the previous
check; after ``abort_patience`` consecutive checks without a 0.01% decrease the input stops its
round; the round ends when every input has stopped.

The loops are ``lax.fori_loop`` (binary search) around ``lax.while_loop`` (Adam steps, which
exit once every input has aborted); the step and round counts are static, while ``c_init``,
``learning_rate`` and ``kappa`` may be traced.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxadv.attacks.apgd import check_common, check_int, check_labels, is_tracer, per_example
from jaxadv.attacks.base import AttackResult, is_success
from jaxadv.attacks.targets import check_targets_differ, resolve_targets
from jaxadv.types import Array, LogitsFn

# Carlini's "no upper bound on c found yet" sentinel.
C_UPPER_INIT = 1e10
_SQUEEZE = 1.0 - 1e-6


def prepare(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, targets, bounds
            ) -> tuple[Array, Array, Array | None, int]:
    """Validates the common arguments of the minimum-norm attacks; returns (x, y, t or None, K).

    ``targets``: None (untargeted), (B,) int labels, ``"random"`` or ``"least_likely"``.
    """
    x, y, k = check_common(logits_fn, x, y, eps=None, bounds=bounds)
    t = resolve_targets(targets, key=jax.random.fold_in(key, 1), y=y,
                        logits_clean_fn=lambda: logits_fn(x))
    if t is not None:
        t = check_labels("targets", t, k, x.shape[0])
        check_targets_differ(targets, y)
    return x, y, t, k


def margin_loss(logits: Array, y: Array, t: Array | None, kappa) -> Array:
    """C&W's f, to minimise, (B,): ``max(z_y - max_{j!=y} z_j, -kappa)`` untargeted,
    ``max(max_{j!=t} z_j - z_t, -kappa)`` targeted. Negative iff adversarial."""
    lab = y if t is None else t
    one_hot = jax.nn.one_hot(lab, logits.shape[-1], dtype=jnp.bool_)
    z_lab = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
    raw = z_lab - z_other if t is None else z_other - z_lab
    return jnp.maximum(raw, -jnp.asarray(kappa, logits.dtype))


def is_adversarial(logits: Array, y: Array, t: Array | None, kappa) -> Array:
    """(B,) bool: misclassified (classified as t) by a logit margin of at least ``kappa``."""
    lab = y if t is None else t
    one_hot = jax.nn.one_hot(lab, logits.shape[-1], dtype=jnp.bool_)
    z_lab = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)
    gap = z_other - z_lab if t is None else z_lab - z_other
    return is_success(logits, y, t) & (gap >= jnp.asarray(kappa, logits.dtype))


def binary_search_update(c: Array, lower: Array, upper: Array, found: Array, *,
                         factor: float = 10.0) -> tuple[Array, Array, Array]:
    """One step of C&W's per-example search over c: (c, lower, upper) after a round that found
    (``found``) or did not find an adversarial example; before any success c grows by
    ``factor`` (10 in C&W and EAD, 5 in StrAttack)."""
    upper = jnp.where(found, jnp.minimum(upper, c), upper)
    lower = jnp.where(found, lower, jnp.maximum(lower, c))
    bracketed = upper < C_UPPER_INIT
    c = jnp.where(bracketed, 0.5 * (lower + upper), jnp.where(found, c, factor * c))
    return c, lower, upper


def to_box(w: Array, bounds: tuple[float, float]) -> Array:
    lo, hi = bounds
    return lo + (hi - lo) * 0.5 * (jnp.tanh(w) + 1.0)


def from_box(x: Array, bounds: tuple[float, float]) -> Array:
    lo, hi = bounds
    return jnp.arctanh(((x - lo) / (hi - lo) * 2.0 - 1.0) * _SQUEEZE)


def check_positive(name: str, value) -> None:
    if value is None or is_tracer(value):
        return
    v = np.asarray(value)
    if np.any(~np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{name} must be finite and > 0; got {value}.")


def _check_kappa(kappa) -> None:
    if not is_tracer(kappa) and not float(kappa) >= 0.0:
        raise ValueError(f"kappa (confidence) must be >= 0; got {kappa}.")


def _cw_round(logits_fn: Callable, x: Array, y: Array, t: Array | None, c: Array, w0: Array, *,
              kappa, tx: optax.GradientTransformation, num_steps: int, abort_patience: int,
              bounds, best_l2sq: Array, best_x: Array) -> tuple[Array, Array, Array]:
    """One Adam run at constants c (B,): (found (B,), best squared l2 (B,), best x (B, ...))."""
    b = x.shape[0]
    dt = x.dtype
    check_every = max(1, num_steps // 10)

    def objective(w):
        x_adv = to_box(w, bounds)
        l2sq = jnp.sum(((x_adv - x) ** 2).reshape(b, -1), axis=-1)
        logits = logits_fn(x_adv)
        per = l2sq + c * margin_loss(logits, y, t, kappa)
        return jnp.sum(per), (per, l2sq, x_adv, is_adversarial(logits, y, t, kappa))

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def cond(carry):
        i, _, _, active, *_ = carry
        return (i < num_steps) & jnp.any(active)

    def body(carry):
        i, w, opt_state, active, (strikes, prev), found, best_l2sq, best_x = carry
        (_, (per, l2sq, x_adv, adv)), g = grad_fn(w)
        adv = adv & active
        closer = adv & (l2sq < best_l2sq)
        best_l2sq = jnp.where(closer, l2sq, best_l2sq)
        best_x = jnp.where(per_example(closer, x), x_adv, best_x)
        found = found | adv
        if abort_patience:
            check = (i % check_every) == 0
            strikes = jnp.where(check, jnp.where(per > prev * 0.9999, strikes + 1, 0), strikes)
            active = active & (strikes < abort_patience)
            prev = jnp.where(check, per, prev)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(g, opt_state, w)
        w = w + jnp.where(per_example(active, x), updates.astype(dt), 0.0)
        return i + 1, w, opt_state, active, (strikes, prev), found, best_l2sq, best_x

    with jax.numpy_dtype_promotion("standard"):
        opt_state = tx.init(w0)
    inf = jnp.full((b,), jnp.inf, dt)
    init = (jnp.asarray(0, jnp.int32), w0, opt_state, jnp.ones((b,), jnp.bool_),
            (jnp.zeros((b,), jnp.int32), inf),
            jnp.zeros((b,), jnp.bool_), best_l2sq, best_x)
    out = lax.while_loop(cond, body, init)
    return out[5], out[6], out[7]


def cw_l2(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, targets=None,
          kappa=0.0, c_init=1e-3, num_binary_steps: int = 9, num_steps: int = 1000,
          learning_rate=1e-2, abort_early: bool = True, abort_patience: int = 2,
          bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """Carlini-Wagner l2 attack with a per-example binary search over c (module docstring).

    Defaults are Carlini's (methods.md 2.2): 9 binary-search steps, c0 = 1e-3, Adam with
    learning rate 1e-2, 10,000 iterations in the paper (1000 here, as in Foolbox and ART), kappa 0.
    The StrAttack repository's comparison used 6 binary steps, 2000 iterations, c0 = 1, lr 1e-3.

    Args:
      logits_fn: images (B, ...) -> logits (B, K); eval mode, normalisation inside.
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels in [0, K).
      key: typed PRNG key (used only by ``targets="random"``).
      targets: None (untargeted), (B,) int targets, ``"random"`` or ``"least_likely"``.
      kappa: confidence, the logit margin an example must clear (>= 0).
      c_init: the first constant c (> 0).
      num_binary_steps: rounds of the search over c (static, >= 1).
      num_steps: Adam steps per round (static, >= 1).
      learning_rate: Adam's step size (> 0).
      abort_early: stop an input's round when its objective stalls.
      abort_patience: consecutive stalled checks (one every ``num_steps // 10`` steps) before an
        input stops; Carlini's rule is 1, but Adam's momentum typically overshoots after crossing
        the boundary and raises the objective for one check before it falls again, and with the
        per-input rule (no batch average to smooth this) 1 stops too early.
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the adversarial example of smallest l2 distance found (x
      itself where the clean input is already adversarial; x where none was found); ``success``
      (B,); ``loss`` (B,) = minus that l2 distance (-inf where none was found).

    Raises:
      ValueError: bad counts, c_init or learning_rate <= 0, kappa < 0, labels or targets out of
        range, shape mismatch, NaN inputs.
    """
    check_int("num_binary_steps", num_binary_steps, 1)
    check_int("num_steps", num_steps, 1)
    check_int("abort_patience", abort_patience, 1)
    check_positive("c_init", c_init)
    check_positive("learning_rate", learning_rate)
    _check_kappa(kappa)
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    b, dt = x.shape[0], x.dtype
    tx = optax.adam(learning_rate)
    w0 = from_box(x, bounds)

    clean_adv = is_adversarial(logits_fn(x), y, t, kappa)
    best_l2sq = jnp.where(clean_adv, 0.0, jnp.inf).astype(dt)

    def round_(_, carry):
        c, lower, upper, best_l2sq, best_x = carry
        found, best_l2sq, best_x = _cw_round(
            logits_fn, x, y, t, c, w0, kappa=kappa, tx=tx, num_steps=num_steps,
            abort_patience=abort_patience if abort_early else 0, bounds=bounds,
            best_l2sq=best_l2sq, best_x=best_x)
        c, lower, upper = binary_search_update(c, lower, upper, found)
        return c, lower, upper, best_l2sq, best_x

    init = (jnp.full((b,), c_init, dt), jnp.zeros((b,), dt), jnp.full((b,), C_UPPER_INIT, dt),
            best_l2sq, x)
    _, _, _, best_l2sq, best_x = lax.fori_loop(0, num_binary_steps, round_, init)
    found = jnp.isfinite(best_l2sq)
    return AttackResult(jnp.where(per_example(found, x), best_x, x), found,
                        jnp.where(found, -jnp.sqrt(best_l2sq), -jnp.inf))


__all__ = ["binary_search_update", "cw_l2", "is_adversarial", "margin_loss"]
