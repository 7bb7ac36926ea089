"""The minimal-eps bisection of Boopathy et al. (2020): the smallest l-inf radius a short attack needs.

Boopathy et al., "Proper network interpretability helps adversarial robustness in classification",
ICML 2020, first step of the interpretability sneaking attack (methods.md 1.5 step 1 and 5.2; code:
``funcs.tradeoff_cam`` of AkhilanB/Proper-Interpretability). Per example, with the kappa-margin

    margin(x') = max(max_{j != t} z_j(x') - z_t(x'), -kappa)       (targeted, as in the paper)
    margin(x') = max(z_y(x') - max_{j != y} z_j(x'), -kappa)       (untargeted)

each of ``num_rounds`` rounds runs ``num_steps`` steps from x (no random start)

    x' <- Proj_{B_inf(x, eps) ∩ box}(x' - step_scale * eps * clip(grad_scale * grad margin, -1, 1))

and then moves eps inside the bracket [eps_min, eps_max] (initially ``eps_bounds``):

    success (unclipped margin < 0): eps_max = eps, eps = (eps_min + eps_max) / 2
    failure:              eps_min = eps, eps = min(2 eps, (eps_min + eps_max) / 2)

starting from ``eps_init``; the result is eps_adv = eps_max. Defaults are the paper's: eps0 = 0.05,
bracket [0, 1], 10 rounds of 10 steps, step 0.2 eps, gradient scale 1000, kappa = 0.1.

Differences from the reference code, all per example so that examples never interact: the
reference masks the target logit with the batch's logit range R (``z_j - R 1[j = t]``), here it is
masked out exactly; it differentiates the batch *mean* of the margins, so its gradient (and the
effect of ``grad_scale``) is 1/B of the per-example gradient used here (pass
``grad_scale=1000 / B`` to reproduce a batch of B exactly). A round succeeds when any of its
iterates has a negative margin (the reference checks only the last iterate), and the returned
example is the successful iterate of the round that set eps_max, which spares the reference's final
rerun at eps_adv.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv.attacks.apgd import check_int, is_tracer, per_example
from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.cw import margin_loss, prepare
from jaxadv.types import Array, LogitsFn


def _check_positive(name: str, value) -> None:
    if not is_tracer(value) and not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0; got {value}.")


def scaled_clip_step(z: Array, grad: Array, x: Array, eps: Array, *, step_scale, grad_scale,
                     bounds: tuple[float, float]) -> Array:
    """One descent step of Boopathy et al.'s attacks (module docstring), projected.

    ``Proj_{B_inf(x, eps) ∩ box}(z - step_scale * eps * clip(grad_scale * grad, -1, 1))``; z, grad
    and x are (B, ...), eps broadcasts against them (e.g. (B, 1, 1, 1)). Shared by
    :func:`min_eps_bisection` and the ISA (``jaxadv.analysis.isa``).
    """
    z = z - step_scale * eps * jnp.clip(grad_scale * grad, -1.0, 1.0)
    return jnp.clip(jnp.clip(z, x - eps, x + eps), *bounds)


def expanding_bisection(value: Array, grow: Array, low: Array, high: Array
                        ) -> tuple[Array, Array, Array]:
    """One round of the doubling bisection both of Boopathy et al.'s searches use, per example.

    Where ``grow`` the value was too small: ``low = value`` and the next value is
    ``min(2 value, (low + high) / 2)``; elsewhere ``high = value`` and the next is the midpoint.
    Returns (next value, low, high), all shaped like ``value``. The eps search grows on failure,
    the ISA's gamma search on success.
    """
    low = jnp.where(grow, value, low)
    high = jnp.where(grow, high, value)
    mid = 0.5 * (low + high)
    return jnp.where(grow, jnp.minimum(2.0 * value, mid), mid), low, high


def min_eps_bisection(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, targets=None,
                      kappa=0.1, eps_init=0.05, eps_bounds: tuple[float, float] = (0.0, 1.0),
                      num_rounds: int = 10, num_steps: int = 10, step_scale=0.2,
                      grad_scale=1000.0, bounds: tuple[float, float] = (0.0, 1.0)
                      ) -> AttackResult:
    """Per-example bisection for the smallest l-inf radius at which a short PGD succeeds.

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels.
      key: typed PRNG key (used only by ``targets="random"``, the paper's choice t' != y).
      targets: None (untargeted), (B,) int targets, ``"random"`` or ``"least_likely"``.
      kappa: margin clip (>= 0); the margin is bounded below by -kappa.
      eps_init: first radius tried (scalar or (B,)).
      eps_bounds: (eps_min, eps_max) of the initial bracket, 0 <= eps_min < eps_max.
      num_rounds: bisection rounds (static, >= 1). num_steps: attack steps per round (static).
      step_scale: step = step_scale * eps per unit of the clipped gradient.
      grad_scale: the gradient is multiplied by this before clipping to [-1, 1].
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, ...) a successful example at radius eps_adv (x where no round
      succeeded); ``success`` (B,); ``loss`` (B,) = -eps_adv (-inf where no round succeeded;
      ``eps_adv = -loss`` is then the usual summary, and ``||x_adv - x||_inf <= eps_adv``).

    Raises:
      ValueError: bad counts, kappa < 0, non-positive scales, a bad bracket, labels or targets out
        of range, shape mismatch.
    """
    check_int("num_rounds", num_rounds, 1)
    check_int("num_steps", num_steps, 1)
    _check_positive("step_scale", step_scale)
    _check_positive("grad_scale", grad_scale)
    if not is_tracer(kappa) and not float(kappa) >= 0.0:
        raise ValueError(f"kappa must be >= 0; got {kappa}.")
    if len(eps_bounds) != 2 or not 0.0 <= eps_bounds[0] < eps_bounds[1]:
        raise ValueError(f"eps_bounds must be (eps_min, eps_max) with 0 <= eps_min < eps_max; "
                         f"got {eps_bounds}.")
    if not is_tracer(eps_init) and np.any(np.asarray(eps_init) <= 0):
        raise ValueError(f"eps_init must be > 0; got {eps_init}.")
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    b, dt = x.shape[0], x.dtype

    def margins(z):
        # The step descends the kappa-clipped margin; success is decided on the unclipped one
        # (the clipped one never goes below 0 at kappa = 0).
        logits = logits_fn(z)
        return jnp.sum(margin_loss(logits, y, t, kappa)), margin_loss(logits, y, t, jnp.inf)

    grad_fn = jax.grad(margins, has_aux=True)

    def attack(eps):
        """``num_steps`` steps at radii eps (B,): (success (B,), a successful iterate or x)."""
        e = per_example(eps, x)

        def body(_, carry):
            z, found, z_found = carry
            g, m = grad_fn(z)
            hit = (m < 0) & ~found
            z_found = jnp.where(per_example(hit, x), z, z_found)
            z = scaled_clip_step(z, g, x, e, step_scale=step_scale, grad_scale=grad_scale,
                                 bounds=bounds)
            return z, found | hit, z_found

        z, found, z_found = lax.fori_loop(0, num_steps, body,
                                          (x, jnp.zeros((b,), jnp.bool_), x))
        hit = (margin_loss(logits_fn(z), y, t, jnp.inf) < 0) & ~found
        return found | hit, jnp.where(per_example(hit, x), z, z_found)

    def round_(_, carry):
        eps, eps_min, eps_max, found_any, x_best = carry
        succ, z = attack(eps)
        x_best = jnp.where(per_example(succ, x), z, x_best)
        eps, eps_min, eps_max = expanding_bisection(eps, ~succ, eps_min, eps_max)
        return eps, eps_min, eps_max, found_any | succ, x_best

    full = lambda v: jnp.broadcast_to(jnp.asarray(v, dt), (b,))  # noqa: E731
    init = (full(eps_init), full(eps_bounds[0]), full(eps_bounds[1]), jnp.zeros((b,), jnp.bool_),
            x)
    _, _, eps_max, found, x_best = lax.fori_loop(0, num_rounds, round_, init)
    return AttackResult(x_best, found, jnp.where(found, -eps_max, -jnp.inf))


def minimal_eps(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, **kwargs) -> Array:
    """eps_adv (B,) of :func:`min_eps_bisection` (inf where no round succeeded)."""
    return -min_eps_bisection(logits_fn, x, y, key, **kwargs).loss


__all__ = ["expanding_bisection", "min_eps_bisection", "minimal_eps", "scaled_clip_step"]
