"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020b), and its targeted form FAB-T.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020; FAB-T as used in AutoAttack (Croce & Hein 2020, targets = the top-9 non-true classes of
the clean logits). FAB looks for the adversarial example of smallest ``norm`` distance to x:

    linearise the decision boundary at the current point x^k:
        f(x^k) + <grad f(x^k), z - x^k> = 0,  f = z_t - z_y  (FAB-T; FAB takes the class l != y
        whose linearised boundary is closest, |f_l| / ||grad f_l||_*)
    d1 = projection of x^k, d2 = projection of the original x, onto {that hyperplane} ∩ box
    alpha = clip(||d1|| / (||d1|| + ||d2||), 0, alpha_max)
    x^{k+1} = clip((x^k + eta d1)(1 - alpha) + (x + eta d2) alpha, box)
    if x^{k+1} is misclassified: keep it if it is the closest so far, then step back towards x,
        x^{k+1} <- x + beta (x^{k+1} - x)

with ``alpha_max = 0.1``, overshoot ``eta = 1.05`` and backward step ``beta = 0.9``. A point
counts as broken when an adversarial example within ``eps`` was found (FAB-T's role in the
AutoAttack ensemble); restarts after the first start from a random point at distance eps / 2.

The projection onto ``{z : <w, z> = b} ∩ [low, high]^d`` is solved exactly for l-inf and l2: the
optimal perturbation is ``d_i = sign(w_i) min(mu, cap_i)`` (l-inf) or ``sign(w_i) min(mu |w_i|,
cap_i)`` (l2), where ``cap_i`` is the room to the box along ``sign(w_i)``; the constraint is
piecewise linear and nondecreasing in mu, so one sort and two cumulative sums give mu (no
bisection). If the hyperplane cannot be reached inside the box, every coordinate moves to its cap.
Facts were checked against AutoAttack's ``fab_base``; the code is written from the paper.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxadv.attacks import projections
from jaxadv.attacks.apgd import check_common, check_int, check_norm, per_example, top_k_other_classes
from jaxadv.attacks.base import AttackResult, update_best
from jaxadv.types import Array

FAB_NORMS = ("linf", "l2")


def project_hyperplane_box(p: Array, w: Array, b: Array, *, norm: str,
                           bounds: tuple[float, float]) -> Array:
    """Smallest ``norm`` perturbation d with ``<w, p + d> = b`` and ``p + d`` in the box.

    Args:
      p: (B, d) points. w: (B, d) normals. b: (B,) offsets.
      norm: 'linf' or 'l2'.
      bounds: the box (low, high).

    Returns:
      d (B, d); where the hyperplane is out of reach inside the box, the perturbation that gets
      closest (every coordinate at its cap); d = 0 where w = 0.
    """
    lo, hi = bounds
    c = b - jnp.sum(w * p, axis=-1)
    flip = c < 0
    w = jnp.where(flip[:, None], -w, w)
    c = jnp.abs(c)
    aw = jnp.abs(w)
    cap = jnp.where(w > 0, hi - p, jnp.where(w < 0, p - lo, 0.0))
    cap = jnp.maximum(cap, 0.0)
    if norm == "linf":
        a, beta = aw, cap
    else:
        a = w * w
        beta = jnp.where(aw > 0, cap / jnp.where(aw > 0, aw, 1.0), 0.0)
    order = jnp.argsort(beta, axis=-1)
    beta_s = jnp.take_along_axis(beta, order, axis=-1)
    a_s = jnp.take_along_axis(a, order, axis=-1)
    sat = jnp.cumsum(a_s * beta_s, axis=-1) - a_s * beta_s  # sum_{j<k} a_j beta_j
    rest = jnp.cumsum(a_s[:, ::-1], axis=-1)[:, ::-1]  # sum_{j>=k} a_j
    g = sat + beta_s * rest  # constraint value at mu = beta_(k), nondecreasing in k
    k = jnp.sum(g < c[:, None], axis=-1)
    reachable = k < g.shape[-1]
    kc = jnp.minimum(k, g.shape[-1] - 1)[:, None]
    sat_k = jnp.take_along_axis(sat, kc, axis=-1)[:, 0]
    rest_k = jnp.take_along_axis(rest, kc, axis=-1)[:, 0]
    mu = (c - sat_k) / jnp.where(rest_k > 0, rest_k, 1.0)
    mu = jnp.where(reachable & (rest_k > 0), mu, jnp.max(beta, axis=-1))
    if norm == "linf":
        mag = jnp.minimum(mu[:, None], cap)
    else:
        mag = jnp.minimum(mu[:, None] * aw, cap)
    # With w flipped, <w', d> = |c| is the same constraint as <w, d> = c: d needs no unflipping.
    return jnp.sign(w) * mag


def _fab_run(logits_fn, x, y, t, key, eps, active, *, norm, num_steps, alpha_max, eta, beta,
             bounds, random_start) -> tuple[AttackResult, Array, Array]:
    """One FAB(-T) run: (AttackResult, gradient evaluations, forward passes) per point."""
    b = x.shape[0]
    dt = x.dtype
    lo, hi = bounds
    flat = lambda v: v.reshape(b, -1)  # noqa: E731
    eps_b = jnp.broadcast_to(jnp.asarray(eps, dt), (b,))
    targeted = t is not None

    if norm == "linf":
        u = jax.random.uniform(key, x.shape, dt, -1.0, 1.0)
    else:
        u = jax.random.normal(key, x.shape, dt)
    u = u / per_example(jnp.maximum(projections.norm_of(u, norm), 1e-12), u)
    x1 = jnp.where(random_start, jnp.clip(x + per_example(0.5 * eps_b, x) * u, lo, hi), x)

    def diffs_and_grads(z):
        """df (B,) and dg (B, ...) of the boundary to cross: z_t - z_y for FAB-T; for FAB the
        class l != y with the closest linearised boundary."""
        if targeted:
            def f(v):
                logits = logits_fn(v)
                zt = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
                zy = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
                return jnp.sum(zt - zy), zt - zy
            g, df = jax.grad(f, has_aux=True)(z)
            return df, g
        logits, vjp = jax.vjp(logits_fn, z)
        num_k = logits.shape[-1]
        eye = jnp.eye(num_k, dtype=logits.dtype)
        jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, logits.shape))[0])(eye)  # (K, B, ...)
        jac = jnp.moveaxis(jac, 0, 1)  # (B, K, ...)
        zy = jnp.take_along_axis(logits, y[:, None], axis=-1)
        gy = jnp.take_along_axis(jac, y.reshape((b, 1) + (1,) * (x.ndim - 1)), axis=1)
        df = logits - zy  # (B, K)
        dg = (jac - gy).reshape(b, num_k, -1)
        dual = jnp.sum(jnp.abs(dg), -1) if norm == "linf" else jnp.sqrt(jnp.sum(dg * dg, -1))
        dist = jnp.abs(df) / (dual + 1e-12)
        dist = jnp.where(jax.nn.one_hot(y, num_k, dtype=jnp.bool_), jnp.inf, dist)
        cls = jnp.argmin(dist, axis=-1)
        df_l = jnp.take_along_axis(df, cls[:, None], axis=-1)[:, 0]
        dg_l = jnp.take_along_axis(dg, cls[:, None, None], axis=1)[:, 0]
        return df_l, dg_l.reshape(x.shape)

    grads_per_iter = 1 if targeted else int(jax.eval_shape(logits_fn, x).shape[-1])

    def body(_, carry):
        x1, adv, res, n_grad, n_fwd = carry
        counting = active & ~(res <= eps_b)
        df, dg = diffs_and_grads(x1)
        w = flat(dg)
        bb = jnp.sum(w * flat(x1), axis=-1) - df
        d1 = project_hyperplane_box(flat(x1), w, bb, norm=norm, bounds=bounds)
        d2 = project_hyperplane_box(flat(x), w, bb, norm=norm, bounds=bounds)
        a1 = jnp.maximum(projections.norm_of(d1, norm), 1e-8)
        a2 = jnp.maximum(projections.norm_of(d2, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)
        al = per_example(alpha, x)
        x1 = jnp.clip((x1 + eta * d1.reshape(x.shape)) * (1.0 - al)
                      + (x + eta * d2.reshape(x.shape)) * al, lo, hi)
        is_adv = jnp.argmax(logits_fn(x1), axis=-1) != y
        dist = projections.norm_of(x1 - x, norm)
        closer = is_adv & (dist < res)
        adv = jnp.where(per_example(closer, x), x1, adv)
        res = jnp.where(closer, dist, res)
        x1 = jnp.where(per_example(is_adv, x), x + (x1 - x) * beta, x1)
        return (x1, adv, res, n_grad + grads_per_iter * counting.astype(jnp.int32),
                n_fwd + counting.astype(jnp.int32))

    zeros = jnp.zeros((b,), jnp.int32)
    init = (x1, x, jnp.full((b,), jnp.inf, dt), zeros, zeros)
    _, adv, res, n_grad, n_fwd = lax.fori_loop(0, num_steps, body, init)
    succ = active & (res <= eps_b)
    out = AttackResult(jnp.where(per_example(succ, x), adv, x), succ,
                       jnp.where(active, -res, -jnp.inf))
    return out, n_grad, n_fwd


def fab_runs(logits_fn, x, y, key, *, eps, active, targets_list=None, norm="linf",
             num_steps=100, num_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9,
             bounds=(0.0, 1.0)) -> tuple[AttackResult, Array, Array]:
    """FAB for every target row of ``targets_list`` (T, B) (or untargeted) times
    ``num_restarts`` (restart r > 0 starts at random at distance eps / 2), one after another on
    the points still active and unbroken. Returns (best, gradient evaluations, forward passes)."""
    b = x.shape[0]
    num_t = 1 if targets_list is None else targets_list.shape[0]
    tl = (jnp.zeros((1, b), jnp.int32) if targets_list is None
          else targets_list.astype(jnp.int32))
    zeros = jnp.zeros((b,), jnp.int32)
    empty = AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype))

    def one(carry, r):
        best, n_grad, n_fwd = carry
        t = None if targets_list is None else tl[r // num_restarts]
        act = active & ~best.success
        restart = r % num_restarts

        def run(_):
            return _fab_run(logits_fn, x, y, t, jax.random.fold_in(key, r), eps, act, norm=norm,
                            num_steps=num_steps, alpha_max=alpha_max, eta=eta, beta=beta,
                            bounds=bounds, random_start=restart > 0)

        def skip(_):
            return empty, zeros, zeros

        res, g, f = lax.cond(jnp.any(act), run, skip, None)
        return (update_best(best, res.x_adv, res.success, res.loss), n_grad + g, n_fwd + f), None

    (best, n_grad, n_fwd), _ = lax.scan(one, (empty, zeros, zeros), jnp.arange(num_t * num_restarts))
    return best, n_grad, n_fwd


def _check_fab_args(norm, num_steps, num_restarts, alpha_max, eta, beta):
    check_norm(norm, FAB_NORMS)
    check_int("num_steps", num_steps, 1)
    check_int("num_restarts", num_restarts, 1)
    if not 0.0 <= float(alpha_max) <= 1.0:
        raise ValueError(f"alpha_max must lie in [0, 1]; got {alpha_max}.")
    if not float(eta) >= 1.0:
        raise ValueError(f"eta (overshoot) must be >= 1; got {eta}.")
    if not 0.0 < float(beta) <= 1.0:
        raise ValueError(f"beta (backward step) must lie in (0, 1]; got {beta}.")


def fab(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
        num_steps: int = 100, num_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """FAB (Croce & Hein 2020b), untargeted: each iteration uses the full Jacobian (K backward
    passes) to pick the closest linearised boundary.

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs in ``bounds``. y: (B,) int labels.
      key: typed PRNG key (random starts of restarts > 0).
      eps: the threat model's radius (scalar or (B,)): success = an adversarial example within
        eps was found; also sets the random-start radius eps / 2.
      norm: 'linf' or 'l2'. num_steps: iterations per run. num_restarts: runs.
      alpha_max, eta, beta: the paper's step parameters (0.1, 1.05, 0.9).
      bounds: the box.

    Returns:
      AttackResult: ``x_adv`` the closest adversarial example found if within eps, else x;
      ``success`` (B,); ``loss`` = minus the distance of the closest adversarial example found
      (-inf if none).

    Raises:
      ValueError: unknown norm, bad counts or step parameters, eps < 0, labels out of range.
    """
    _check_fab_args(norm, num_steps, num_restarts, alpha_max, eta, beta)
    x, y, _ = check_common(logits_fn, x, y, eps=eps, bounds=bounds)
    succ0 = jnp.argmax(logits_fn(x), axis=-1) != y
    clean = AttackResult(x, succ0, jnp.where(succ0, 0.0, -jnp.inf).astype(x.dtype))
    res, _, _ = fab_runs(logits_fn, x, y, key, eps=eps, active=~succ0, norm=norm,
                         num_steps=num_steps, num_restarts=num_restarts, alpha_max=alpha_max,
                         eta=eta, beta=beta, bounds=bounds)
    return update_best(clean, res.x_adv, res.success, res.loss)


def fab_t(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
          num_steps: int = 100, num_targets: int = 9, num_restarts: int = 1,
          alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
          bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """FAB-T: FAB towards each of the ``num_targets`` highest-scoring non-true classes of the
    clean logits in turn (one gradient per iteration), on the points still robust; success =
    misclassified within eps. Needs ``1 <= num_targets <= K - 1``. Arguments as :func:`fab`."""
    _check_fab_args(norm, num_steps, num_restarts, alpha_max, eta, beta)
    x, y, k = check_common(logits_fn, x, y, eps=eps, bounds=bounds)
    check_int("num_targets", num_targets, 1)
    if num_targets > k - 1:
        raise ValueError(f"num_targets must be <= K - 1 = {k - 1}; got {num_targets}.")
    logits = logits_fn(x)
    succ0 = jnp.argmax(logits, axis=-1) != y
    clean = AttackResult(x, succ0, jnp.where(succ0, 0.0, -jnp.inf).astype(x.dtype))
    res, _, _ = fab_runs(logits_fn, x, y, key, eps=eps, active=~succ0,
                         targets_list=top_k_other_classes(logits, y, num_targets), norm=norm,
                         num_steps=num_steps, num_restarts=num_restarts, alpha_max=alpha_max,
                         eta=eta, beta=beta, bounds=bounds)
    return update_best(clean, res.x_adv, res.success, res.loss)
