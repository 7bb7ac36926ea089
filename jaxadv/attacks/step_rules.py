"""Step rules of the gradient-attack family: how an input gradient becomes an update direction.

A step rule is a pair of pure functions (optax style)::

    state = rule.init(x_adv)                                   # x_adv: (B, ...)
    direction, state = rule.update(grad, state, x_adv)         # direction: (B, ...)

and an attack moves ``x_adv <- Proj(x_adv + step_size * direction)``. ``grad`` is the gradient of
the objective to *maximise*, so the direction is an ascent direction. Every rule works per example:
no quantity couples the examples of a batch.

The rules:

* ``sign``: ``sign(g)``, the l-inf steepest-ascent direction (FGSM, Goodfellow et al. 2015).
* ``normalized``: ``g / ||g||_2`` per example, the l2 steepest-ascent direction (FGM).
* ``sparse_l1``: the sparse l1 descent direction of Tramer & Boneh (2019): ``sign(g)`` on the
  coordinates whose ``|g|`` is at or above the ``q``-quantile (the top
  ``k = max(1, round((1-q) d))`` of the ``d`` coordinates), zero elsewhere, normalised to unit
  l1 norm; coordinates that sit on a box bound and whose gradient points out of the box are
  excluded first (they cannot move). With
  ``k = 1`` this is the exact l1 steepest-ascent direction (all mass on the largest ``|g_i|``).
* ``momentum``: MI-FGSM (Dong et al. 2018): ``m <- decay * m + g / ||g||_1``, then the base rule of
  the norm applied to ``m``.
* any ``optax.GradientTransformation`` ``tx``: ``updates = tx.update(-g, state, x_adv)`` (optax
  minimises, so it is fed the negated gradient); use a unit learning rate (e.g. ``optax.adam(1.0)``)
  and set the scale with the attack's ``step_size``, which stays a traced value.

``get_step_rule(rule, norm)`` resolves names; ``"steepest"`` picks the steepest-ascent rule of the
threat model's norm (sign for l-inf, normalized for l2, sparse_l1 for l1).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxadv.attacks.projections import check_norm
from jaxadv.types import Array

_TINY = 1e-12


class StepRule(NamedTuple):
    """A step rule: ``init(x_adv) -> state``, ``update(grad, state, x_adv) -> (direction, state)``.
    """

    init: Callable[[Array], Any]
    update: Callable[[Array, Any, Array], tuple[Array, Any]]


STEP_RULES = ("steepest", "sign", "normalized", "sparse_l1", "momentum")


def _expand(v: Array, x: Array) -> Array:
    """(B,) -> (B, 1, ..., 1) to broadcast against x (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def _per_example_norm(g: Array, ord_: str) -> Array:
    flat = g.reshape(g.shape[0], -1)
    if ord_ == "l1":
        return jnp.sum(jnp.abs(flat), axis=-1)
    return jnp.sqrt(jnp.sum(flat * flat, axis=-1))


def _stateless(direction_fn: Callable[[Array, Array], Array]) -> StepRule:
    def init(x_adv):
        del x_adv
        return ()

    def update(grad, state, x_adv):
        return direction_fn(grad, x_adv), state

    return StepRule(init, update)


def sign_direction(grad: Array) -> Array:
    """``sign(g)``, (B, ...) -> (B, ...)."""
    return jnp.sign(grad)


def normalized_direction(grad: Array) -> Array:
    """``g / ||g||_2`` per example (zero where g = 0), (B, ...) -> (B, ...)."""
    n = _per_example_norm(grad, "l2")
    return grad / _expand(jnp.maximum(n, _TINY), grad)


def l1_num_coordinates(dim: int, sparsity: float) -> int:
    """k = max(1, round((1 - q) * d)) coordinates kept by the sparse l1 direction (static)."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"l1_sparsity must lie in [0, 1]; got {sparsity}.")
    return max(1, min(dim, int(round((1.0 - sparsity) * dim))))


def sparse_l1_direction(grad: Array, x_adv: Array | None = None, *, sparsity: float = 0.99,
                        bounds: tuple[float, float] | None = None) -> Array:
    """Sparse l1 descent direction (Tramer & Boneh 2019), unit l1 norm per example.

    Args:
      grad: (B, ...) gradient of the objective to maximise.
      x_adv: (B, ...) current point; with ``bounds``, coordinates on a bound whose gradient points
        out of the box are excluded (the box clip would undo any step there).
      sparsity: the quantile q; the top ``k = max(1, round((1-q) d))`` coordinates by ``|g|`` get
        ``sign(g) / count`` (ties at the threshold share the mass). ``sparsity=1`` gives k = 1: the
        exact l1 steepest-ascent direction, which puts all of the budget on the largest ``|g_i|``.
      bounds: (low, high) or None.

    Returns:
      (B, ...) direction with l1 norm 1 (0 where every usable gradient entry is 0).
    """
    b = grad.shape[0]
    g = grad
    if bounds is not None and x_adv is not None:
        stuck = ((x_adv <= bounds[0]) & (g < 0)) | ((x_adv >= bounds[1]) & (g > 0))
        g = jnp.where(stuck, jnp.zeros_like(g), g)
    flat = g.reshape(b, -1)
    k = l1_num_coordinates(flat.shape[1], sparsity)
    abs_g = jnp.abs(flat)
    threshold = lax.top_k(abs_g, k)[0][:, k - 1]
    keep = (abs_g >= threshold[:, None]) & (abs_g > 0)
    count = jnp.sum(keep.astype(flat.dtype), axis=-1, keepdims=True)
    direction = jnp.where(keep, jnp.sign(flat), jnp.zeros_like(flat)) / jnp.maximum(count, 1.0)
    return direction.reshape(grad.shape)


def l1_box_fill_direction(grad: Array, x_adv: Array, *, budget, bounds: tuple[float, float]
                          ) -> Array:
    """The exact l1 steepest ascent inside a box: a maximiser of ``g . delta`` over
    ``||delta||_1 <= budget`` and ``x_adv + delta`` in ``bounds``, divided by ``budget``.

    A fractional knapsack: the budget fills the coordinates in decreasing order of ``|g_i|``, each
    moved in the direction of ``sign(g_i)`` up to its distance to the bound on that side, until the
    budget is spent. Without the box (or with enough room in the first coordinate) this is the
    top-1 direction of :func:`sparse_l1_direction` with ``sparsity=1``; with the box, that
    direction loses the part of the budget the clip removes.

    Args:
      grad: (B, ...) gradient of the objective to maximise.
      x_adv: (B, ...) current point, inside ``bounds``.
      budget: the l1 step, scalar or (B,) (the attack's ``step_size``); traced values welcome.
      bounds: (low, high).

    Returns:
      (B, ...) ``delta / budget`` (0 where the budget is 0 or no coordinate can move up the
      gradient); its l1 norm is 1 where the box leaves room for the whole budget, less otherwise.
    """
    b = grad.shape[0]
    g = grad.reshape(b, -1)
    x = x_adv.reshape(b, -1)
    room = jnp.where(g > 0, bounds[1] - x, jnp.where(g < 0, x - bounds[0], jnp.zeros_like(x)))
    room = jnp.maximum(room, 0).astype(g.dtype)
    order = jnp.argsort(-jnp.abs(g), axis=-1)
    room_sorted = jnp.take_along_axis(room, order, axis=-1)
    spent_before = jnp.cumsum(room_sorted, axis=-1) - room_sorted
    budget_b = jnp.broadcast_to(jnp.asarray(budget, g.dtype), (b,))[:, None]
    fill_sorted = jnp.clip(budget_b - spent_before, 0, room_sorted)
    fill = jnp.zeros_like(g).at[jnp.arange(b)[:, None], order].set(fill_sorted)
    safe = jnp.where(budget_b > 0, budget_b, jnp.ones_like(budget_b))
    direction = jnp.where(budget_b > 0, jnp.sign(g) * fill / safe, jnp.zeros_like(g))
    return direction.reshape(grad.shape)


def l1_box_fill_rule(*, budget, bounds: tuple[float, float]) -> StepRule:
    """The exact l1 steepest ascent inside the box for steps of l1 size ``budget`` (the attack's
    ``step_size``); see :func:`l1_box_fill_direction`. FGM-l1 (:func:`jaxadv.attacks.fgsm` with
    ``l1_sparsity=1``) uses it."""
    return _stateless(lambda g, x_adv: l1_box_fill_direction(g, x_adv, budget=budget,
                                                             bounds=bounds))


def sign_rule() -> StepRule:
    """l-inf steepest ascent: ``sign(g)``."""
    return _stateless(lambda g, x_adv: sign_direction(g))


def normalized_rule() -> StepRule:
    """l2 steepest ascent: ``g / ||g||_2`` per example."""
    return _stateless(lambda g, x_adv: normalized_direction(g))


def sparse_l1_rule(*, sparsity: float = 0.99, bounds: tuple[float, float] | None = (0.0, 1.0)
                   ) -> StepRule:
    """Sparse l1 descent (Tramer & Boneh 2019); see :func:`sparse_l1_direction`."""
    return _stateless(lambda g, x_adv: sparse_l1_direction(g, x_adv, sparsity=sparsity,
                                                           bounds=bounds))


def _base_rule(norm: str, *, l1_sparsity: float, bounds) -> StepRule:
    if norm == "linf":
        return sign_rule()
    if norm == "l2":
        return normalized_rule()
    return sparse_l1_rule(sparsity=l1_sparsity, bounds=bounds)


def momentum_rule(base: StepRule, *, decay: float = 1.0) -> StepRule:
    """MI-FGSM (Dong et al. 2018): ``m <- decay * m + g / ||g||_1``; direction = base(m).

    Args:
      base: a stateless rule applied to the accumulated gradient (sign for l-inf as in the paper,
        normalized for l2).
      decay: the momentum factor mu (1.0 in the paper).
    """
    def init(x_adv):
        return (jnp.zeros_like(x_adv), base.init(x_adv))

    def update(grad, state, x_adv):
        m, base_state = state
        n = _per_example_norm(grad, "l1")
        m = decay * m + grad / _expand(jnp.maximum(n, _TINY), grad)
        direction, base_state = base.update(m, base_state, x_adv)
        return direction, (m, base_state)

    return StepRule(init, update)


def optax_rule(tx: optax.GradientTransformation) -> StepRule:
    """An optax optimiser as a step rule, ascending the objective (fed ``-grad``)."""
    # optax mixes Python floats with int32 step counts (e.g. in Adam's bias correction), which
    # strict dtype promotion rejects; its internal arithmetic runs under standard promotion.
    def init(x_adv):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(x_adv)

    def update(grad, state, x_adv):
        with jax.numpy_dtype_promotion("standard"):
            updates, state = tx.update(-grad, state, x_adv)
        return updates.astype(grad.dtype), state

    return StepRule(init, update)


def get_step_rule(rule, norm: str, *, l1_sparsity: float = 0.99,
                  bounds: tuple[float, float] | None = (0.0, 1.0),
                  momentum_decay: float = 1.0) -> StepRule:
    """Resolves a step rule.

    Args:
      rule: one of ``STEP_RULES`` (``"steepest"``: the norm's steepest-ascent rule; ``"momentum"``:
        MI-FGSM on top of it), a :class:`StepRule`, or an ``optax.GradientTransformation``.
      norm: 'linf', 'l2' or 'l1'.
      l1_sparsity: q of the sparse l1 direction.
      bounds: the box (sparse l1 skips coordinates stuck on it).
      momentum_decay: mu of ``"momentum"``.

    Raises:
      ValueError: unknown rule name or norm.
    """
    check_norm(norm)
    if isinstance(rule, StepRule):
        return rule
    if isinstance(rule, optax.GradientTransformation):
        return optax_rule(rule)
    if rule == "steepest":
        return _base_rule(norm, l1_sparsity=l1_sparsity, bounds=bounds)
    if rule == "sign":
        return sign_rule()
    if rule == "normalized":
        return normalized_rule()
    if rule == "sparse_l1":
        return sparse_l1_rule(sparsity=l1_sparsity, bounds=bounds)
    if rule == "momentum":
        return momentum_rule(_base_rule(norm, l1_sparsity=l1_sparsity, bounds=bounds),
                             decay=momentum_decay)
    raise ValueError(f"Unknown step rule {rule!r}; choose one of {STEP_RULES}, a StepRule, or an "
                     "optax.GradientTransformation.")


__all__ = ["STEP_RULES", "StepRule", "get_step_rule", "l1_box_fill_direction", "l1_box_fill_rule",
           "l1_num_coordinates", "momentum_rule",
           "normalized_direction", "normalized_rule", "optax_rule", "sign_direction", "sign_rule",
           "sparse_l1_direction", "sparse_l1_rule"]
