"""Auto-PGD (Croce & Hein 2020): APGD-CE, APGD-DLR and APGD-T, with EOT for randomised models.

APGD is PGD with momentum and a step size that adapts itself, so it needs no tuning (Croce & Hein,
"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
ICML 2020, Algorithm 1). For N iterations on the ball ``S = B_norm(x, eps) ∩ bounds``:

    x^0 = P_S(x + eps * u / ||u||),  u ~ U[-1, 1]^d (l-inf) or N(0, I) (l2);  eta^0 = 2 eps
    z^{k+1} = P_S(x^k + eta^k * s(grad f(x^k)))      s = sign (l-inf) or g / ||g||_2 (l2)
    x^{k+1} = P_S(x^k + alpha (z^{k+1} - x^k) + (1 - alpha)(x^k - x^{k-1})),  alpha = 0.75
              (alpha = 1 at k = 0)

At the checkpoints ``w_j = ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22`` and
``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` (see :func:`apgd_checkpoints`) the step size is
halved, and the iterate restarts from the best point found so far ``x_max`` (with its gradient),
whenever

    1. sum_{i = w_{j-1}}^{w_j - 1} 1[f(x^{i+1}) > f(x^i)] < rho (w_j - w_{j-1})   (too few increases)
    2. eta^{w_{j-1}} == eta^{w_j} and f_max^{w_{j-1}} == f_max^{w_j}   (no halving last time and no
       progress since).

Every iterate costs one gradient evaluation (N + 1 per run, the start included). The returned
example per input is the strongest one seen over the clean input and all iterates of all runs
(:func:`jaxadv.attacks.base.update_best`: successful first, then the higher loss).

Variants (AutoAttack's): :func:`apgd_ce` (cross-entropy), :func:`apgd_dlr` (difference of logits
ratio) and :func:`apgd_t` (targeted DLR towards each of the top-9 non-true classes by clean logits,
one target per run, the worst case kept; succeeds on *any* misclassification). Restarts and
targets run one after another on the points still robust (the others are frozen by a mask and cost
nothing in the per-point count); all shapes are fixed, and eps is a traced value.

Randomised models (``randomized=True``): ``logits_fn(x, key)`` draws its own randomness from
``key``; each gradient is the mean over ``eot_iter`` draws (Expectation over Transformation,
Athalye et al. 2018), as in AutoAttack's ``rand`` version (``eot_iter=20``).

Facts about the reference behaviour were checked against AutoAttack's ``autopgd_base``; the
implementation follows the paper where the two differ (conditions use the paper's strict ``<`` and
the paper's condition 2 also applies at the first checkpoint; see the notes in :func:`apgd`).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv.attacks import losses as losses_lib
from jaxadv.attacks import projections
from jaxadv.attacks.base import AttackResult, update_best
from jaxadv.attacks.targets import check_targets_differ
from jaxadv.types import Array
from jaxadv.validation import check_int

APGD_NORMS = ("linf", "l2")
APGD_LOSSES = ("ce", "dlr")
_TINY = 1e-12


class RunStats(NamedTuple):
    """Per-point cost of an attack: evaluations spent on a point while it was still unbroken
    (up to and including the one that broke it), (B,) int32 each."""

    num_grad: Array
    num_forward: Array


# ----------------------------------------------------------------------------------------------
# Shared argument checks (also used by square.py, fab.py and ensemble.py).


def is_tracer(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def check_norm(norm: str, allowed=APGD_NORMS) -> str:
    if norm not in allowed:
        raise ValueError(f"Unknown norm {norm!r}; choose one of {allowed}.")
    return norm


def num_classes_of(logits_fn: Callable, x: Array, randomized: bool = False) -> int:
    """K of ``logits_fn`` on x, from shapes only (no computation)."""
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    if randomized:
        out = jax.eval_shape(logits_fn, spec, jax.random.key(0))
    else:
        out = jax.eval_shape(logits_fn, spec)
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"logits_fn must map x {x.shape} to logits ({x.shape[0]}, K); got "
                         f"{out.shape}.")
    return int(out.shape[-1])


def check_labels(name: str, labels, num_classes: int, batch: int) -> Array:
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers; got dtype {labels.dtype}.")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},); got {labels.shape}.")
    if not is_tracer(labels):
        v = np.asarray(labels)
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}); got range "
                             f"[{v.min()}, {v.max()}].")
    return labels.astype(jnp.int32)


def check_common(logits_fn, x, y, *, eps, bounds, randomized=False) -> tuple[Array, Array, int]:
    """Validates (x, y, eps, bounds) where concrete; returns (x, y int32, K)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array; got dtype {x.dtype}.")
    y = jnp.asarray(y)
    if len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (low, high); got {bounds}.")
    projections.check_attack_inputs(x, y, eps=eps, bounds=bounds)
    if not is_tracer(eps) and np.ndim(eps) not in (0, 1):
        raise ValueError(f"eps must be a scalar or a ({x.shape[0]},) array; got shape "
                         f"{np.shape(eps)}.")
    k = num_classes_of(logits_fn, x, randomized)
    y = check_labels("labels", y, k, x.shape[0])
    return x, y, k


def per_example(v: Array, x: Array) -> Array:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def top_k_other_classes(logits: Array, y: Array, k: int) -> Array:
    """The k highest-scoring classes other than y, best first, (k, B) int32 (APGD-T's and
    FAB-T's targets: the 2nd..(k+1)-th classes of a correctly classified point)."""
    masked = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.bool_), -jnp.inf, logits)
    return jnp.argsort(-masked, axis=-1)[:, :k].T.astype(jnp.int32)


def call_logits(logits_fn: Callable, x: Array, key: jax.Array, randomized: bool) -> Array:
    return logits_fn(x, key) if randomized else logits_fn(x)


# ----------------------------------------------------------------------------------------------
# Step-size schedule.


def apgd_checkpoints(num_steps: int) -> tuple[int, ...]:
    """APGD's checkpoints ``w_j = ceil(p_j N) <= N`` (Croce & Hein 2020, section 3.2).

    ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``; computed in
    exact integer hundredths so that, e.g., ``ceil(0.22 * 100)`` is 22 and not 23. Duplicates (small
    N) are merged. For N = 100: (22, 41, 57, 70, 80, 87, 93, 99).
    """
    n = check_int("num_steps", num_steps, 1)
    prev, cur = 0, 22  # hundredths
    out = []
    while True:
        w = -(-cur * n // 100)  # ceil(cur * n / 100), exact
        if w > n:
            break
        if not out or w > out[-1]:
            out.append(w)
        prev, cur = cur, cur + max(cur - prev - 3, 6)
    return tuple(out)


def _schedule_tables(num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(is_checkpoint[k], interval_length[k]) for k = 0..N (k counts iterates x^k)."""
    is_ckpt = np.zeros(num_steps + 1, bool)
    length = np.zeros(num_steps + 1, np.float32)
    last = 0
    for w in apgd_checkpoints(num_steps):
        is_ckpt[w] = True
        length[w] = w - last
        last = w
    return is_ckpt, length


# ----------------------------------------------------------------------------------------------
# One run.


def _apgd_loss(loss: str, targeted: bool) -> Callable[[Array, Array, Array | None], Array]:
    if loss == "ce":
        if targeted:
            return lambda z, y, t: -losses_lib.cross_entropy(z, t)
        return lambda z, y, t: losses_lib.cross_entropy(z, y)
    if targeted:
        return lambda z, y, t: losses_lib.dlr_targeted(z, y, t)
    return lambda z, y, t: losses_lib.dlr(z, y)


def _apgd_run(logits_fn, x, y, t, key, eps, active, *, norm, num_steps, loss, rho, bounds,
              eot_iter, randomized, success_on_target, x_init=None) -> tuple[AttackResult, Array]:
    """One APGD run from a random start (or from ``x_init``, projected into the ball and the box)
    on the ``active`` points.

    Returns the best iterate per point (inactive points: x, success False, loss -inf) and the
    number of gradient evaluations made on each point while it was active and unbroken.
    """
    b = x.shape[0]
    dt = x.dtype
    loss_fn = _apgd_loss(loss, t is not None)
    eps_b = jnp.broadcast_to(jnp.asarray(eps, dt), (b,))
    eps_x = per_example(eps_b, x)
    is_ckpt, length = _schedule_tables(num_steps)
    is_ckpt, length = jnp.asarray(is_ckpt), jnp.asarray(length)

    def success_of(logits):
        pred = jnp.argmax(logits, axis=-1)
        return (pred == t) if success_on_target else (pred != y)

    def total_loss(x_adv, k):
        logits = call_logits(logits_fn, x_adv, k, randomized)
        per = loss_fn(logits, y, t).astype(dt)
        return jnp.sum(per), (per, logits)

    value_and_grad = jax.value_and_grad(total_loss, has_aux=True)

    def evaluate(x_adv, k):
        """(loss (B,), logits of the last draw, mean gradient) over eot_iter draws."""
        if eot_iter == 1:
            (_, (per, logits)), g = value_and_grad(x_adv, k)
            return per, logits, g

        def draw(carry, kk):
            per_sum, g_sum, _ = carry
            (_, (per, logits)), g = value_and_grad(x_adv, kk)
            return (per_sum + per, g_sum + g, logits), None

        k_all = jax.random.split(k, eot_iter)
        logits0 = jax.eval_shape(lambda: call_logits(logits_fn, x_adv, k, randomized))
        init = (jnp.zeros((b,), dt), jnp.zeros_like(x_adv), jnp.zeros(logits0.shape, logits0.dtype))
        (per_sum, g_sum, logits), _ = lax.scan(draw, init, k_all)
        return per_sum / eot_iter, logits, g_sum / eot_iter

    def feasible(x_adv):
        return projections.project_to_feasible(x_adv, x, eps_b, norm, bounds)

    def direction(g):
        g = jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))
        if norm == "linf":
            return jnp.sign(g)
        return g / per_example(jnp.maximum(projections.norm_of(g, "l2"), _TINY), g)

    k_start, k_eval = jax.random.split(key)
    if norm == "linf":
        u = jax.random.uniform(k_start, x.shape, dt, -1.0, 1.0)
    else:
        u = jax.random.normal(k_start, x.shape, dt)
    u = u / per_example(jnp.maximum(projections.norm_of(u, norm), _TINY), u)
    x0 = (projections.clip_to_bounds(x + eps_x * u, bounds) if x_init is None
          else feasible(jnp.asarray(x_init, dt)))
    loss0, logits0, g0 = evaluate(x0, jax.random.fold_in(k_eval, 0))
    succ0 = success_of(logits0) & active
    best0 = AttackResult(x0, succ0, jnp.where(active, loss0, -jnp.inf))
    num_grad0 = active.astype(jnp.int32)

    class Carry(NamedTuple):
        x_cur: Array
        x_prev: Array
        g_cur: Array
        loss_cur: Array
        step: Array
        x_max: Array
        g_max: Array
        loss_max: Array
        n_incr: Array
        loss_max_last: Array
        reduced_last: Array
        best: AttackResult
        num_grad: Array

    init = Carry(x0, x0, g0, loss0, 2.0 * eps_b, x0, g0, loss0, jnp.zeros((b,), dt), loss0,
                 jnp.zeros((b,), jnp.bool_), best0, num_grad0)

    def body(i, c: Carry) -> Carry:
        a = jnp.where(i == 0, 1.0, 0.75).astype(dt)
        z = feasible(c.x_cur + per_example(c.step, x) * direction(c.g_cur))
        x_new = feasible(c.x_cur + a * (z - c.x_cur) + (1.0 - a) * (c.x_cur - c.x_prev))
        loss_new, logits_new, g_new = evaluate(x_new, jax.random.fold_in(k_eval, i + 1))
        num_grad = c.num_grad + (active & ~c.best.success).astype(jnp.int32)
        succ = success_of(logits_new) & active
        best = update_best(c.best, x_new, succ, jnp.where(active, loss_new, -jnp.inf))
        n_incr = c.n_incr + (loss_new > c.loss_cur).astype(dt)
        improved = loss_new > c.loss_max
        imp_x = per_example(improved, x)
        x_max = jnp.where(imp_x, x_new, c.x_max)
        g_max = jnp.where(imp_x, g_new, c.g_max)
        loss_max = jnp.where(improved, loss_new, c.loss_max)

        # Checkpoint k = i + 1 (a static table lookup; applied with where so shapes stay fixed).
        ckpt = is_ckpt[i + 1]
        cond1 = n_incr < rho * length[i + 1]
        cond2 = ~c.reduced_last & (loss_max <= c.loss_max_last)
        halve = ckpt & (cond1 | cond2)
        h_x = per_example(halve, x)
        return Carry(
            x_cur=jnp.where(h_x, x_max, x_new),
            x_prev=c.x_cur,
            g_cur=jnp.where(h_x, g_max, g_new),
            loss_cur=jnp.where(halve, loss_max, loss_new),
            step=jnp.where(halve, 0.5 * c.step, c.step),
            x_max=x_max, g_max=g_max, loss_max=loss_max,
            n_incr=jnp.where(ckpt, jnp.zeros_like(n_incr), n_incr),
            loss_max_last=jnp.where(ckpt, loss_max, c.loss_max_last),
            reduced_last=jnp.where(ckpt, halve, c.reduced_last),
            best=best, num_grad=num_grad)

    out = lax.fori_loop(0, num_steps, body, init)
    best = out.best
    a_x = per_example(active, x)
    best = AttackResult(jnp.where(a_x, best.x_adv, x), best.success & active,
                        jnp.where(active, best.loss, -jnp.inf))
    return best, out.num_grad * eot_iter


def apgd_runs(logits_fn, x, y, key, *, eps, active, targets_list=None, norm="linf",
              num_steps=100, loss="ce", num_restarts=1, rho=0.75, bounds=(0.0, 1.0), eot_iter=1,
              randomized=False, success_on_target=False,
              x_init=None) -> tuple[AttackResult, Array]:
    """Runs APGD for every target row of ``targets_list`` (T, B) (or once, untargeted) times
    ``num_restarts``, one after another, each on the points still active and unbroken.

    Run r (target r // R, restart r % R) uses ``jax.random.fold_in(key, r)``; a run with no point
    left is skipped (``lax.cond``). ``x_init`` (B, ...) replaces every run's random start. Returns
    the best result over runs (only active points can succeed) and the per-point number of
    gradient evaluations. Arguments are not validated here.
    """
    b = x.shape[0]
    num_t = 1 if targets_list is None else targets_list.shape[0]
    runs = num_t * num_restarts
    tl = (jnp.zeros((1, b), jnp.int32) if targets_list is None
          else targets_list.astype(jnp.int32))

    def one(carry, r):
        best, num_grad = carry
        t = None if targets_list is None else tl[r // num_restarts]
        act = active & ~best.success

        def run(_):
            return _apgd_run(logits_fn, x, y, t, jax.random.fold_in(key, r), eps, act,
                             norm=norm, num_steps=num_steps, loss=loss, rho=rho, bounds=bounds,
                             eot_iter=eot_iter, randomized=randomized,
                             success_on_target=success_on_target, x_init=x_init)

        def skip(_):
            return (AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype)),
                    jnp.zeros((b,), jnp.int32))

        res, n = lax.cond(jnp.any(act), run, skip, None)
        return (update_best(best, res.x_adv, res.success, res.loss), num_grad + n), None

    init = (AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype)),
            jnp.zeros((b,), jnp.int32))
    (best, num_grad), _ = lax.scan(one, init, jnp.arange(runs))
    return best, num_grad


# ----------------------------------------------------------------------------------------------
# Public attacks.


def _check_apgd_args(norm, num_steps, loss, num_restarts, rho, eot_iter):
    check_norm(norm)
    check_int("num_steps", num_steps, 1)
    check_int("num_restarts", num_restarts, 1)
    check_int("eot_iter", eot_iter, 1)
    if loss not in APGD_LOSSES:
        raise ValueError(f"Unknown APGD loss {loss!r}; choose one of {APGD_LOSSES}.")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must lie in (0, 1]; got {rho}.")


def _clean_start(logits_fn, x, y, t, key, *, loss, randomized, success_on_target):
    """The clean input as the first candidate (AutoAttack counts points misclassified at x as
    broken with x_adv = x): (AttackResult, clean logits)."""
    logits = call_logits(logits_fn, x, key, randomized)
    pred = jnp.argmax(logits, axis=-1)
    succ = (pred == t) if success_on_target else (pred != y)
    per = _apgd_loss(loss, t is not None)(logits, y, t).astype(x.dtype)
    return AttackResult(x, succ, per), logits


def apgd(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
         num_steps: int = 100, loss: str = "ce", num_restarts: int = 1,
         targets: Array | None = None, rho: float = 0.75, bounds: tuple[float, float] = (0.0, 1.0),
         eot_iter: int = 1, randomized: bool = False, x_init: Array | None = None) -> AttackResult:
    """Auto-PGD (Croce & Hein 2020), untargeted or towards given targets.

    Args:
      logits_fn: images (B, ...) in ``bounds`` -> logits (B, K); with ``randomized``,
        ``logits_fn(x, key)``.
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels.
      key: typed PRNG key (random starts; restart r uses ``fold_in(key, r)``; EOT draws).
      eps: radius of the ``norm`` ball, scalar or (B,); traced values welcome (no recompile).
      norm: 'linf' or 'l2'.
      num_steps: N iterations per run (N + 1 gradient evaluations per run).
      loss: 'ce' (cross-entropy; targeted: -CE towards the target) or 'dlr' (difference of
        logits ratio; targeted: the targeted DLR, needs K >= 4).
      num_restarts: runs from fresh random starts, each on the points still unbroken.
      targets: None (untargeted: succeed on misclassification) or (B,) int targets (succeed when
        the prediction equals the target).
      rho: the fraction of increases below which condition 1 halves the step (0.75).
      bounds: (low, high) box of valid inputs.
      eot_iter: gradient samples averaged per iterate (EOT; > 1 only helps randomised models).
      randomized: ``logits_fn`` takes a key as its second argument.
      x_init: optional (B, ...) start instead of the random one (projected into the eps-ball and
        the box first), e.g. another library's random start for a paired comparison. Only with
        ``num_restarts=1``.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the strongest point seen (the clean input included);
      ``success`` (B,); ``loss`` (B,) the APGD objective at ``x_adv``.

    Raises:
      ValueError: unknown norm or loss, eps < 0, bad counts, rho outside (0, 1], labels or
        targets out of range or of the wrong shape, too few classes for DLR, an ``x_init`` of
        the wrong shape, not finite, or with restarts.

    Notes:
      Where AutoAttack's code and the paper differ, this follows the paper: condition 1 uses
      ``<`` (the code uses ``<=``); condition 2 is also checked at the first checkpoint against
      the starting loss (the code skips it there); checkpoints are ``ceil(p_j N)`` (the code
      rounds down 0.22 N, 0.03 N and 0.06 N to integers first; identical for N = 100). The
      starting point is AutoAttack's (a random direction scaled to the sphere, clipped to the
      box).
    """
    _check_apgd_args(norm, num_steps, loss, num_restarts, rho, eot_iter)
    x, y, k = check_common(logits_fn, x, y, eps=eps, bounds=bounds, randomized=randomized)
    t = None if targets is None else check_labels("targets", targets, k, x.shape[0])
    check_targets_differ(targets, y)
    if x_init is not None:
        projections.check_x_init(x_init, x, num_restarts)
    if loss == "dlr" and k < (4 if t is not None else 3):
        raise ValueError(f"{'targeted ' if t is not None else ''}DLR needs at least "
                         f"{4 if t is not None else 3} classes; logits_fn has {k}.")
    k_clean, k_runs = jax.random.split(key)
    clean, _ = _clean_start(logits_fn, x, y, t, k_clean, loss=loss, randomized=randomized,
                            success_on_target=t is not None)
    res, _ = apgd_runs(logits_fn, x, y, k_runs, eps=eps, active=~clean.success,
                       targets_list=None if t is None else t[None], norm=norm,
                       num_steps=num_steps, loss=loss, num_restarts=num_restarts, rho=rho,
                       bounds=bounds, eot_iter=eot_iter, randomized=randomized,
                       success_on_target=t is not None, x_init=x_init)
    return update_best(clean, res.x_adv, res.success, res.loss)


def apgd_ce(logits_fn, x, y, key, *, eps, **kwargs) -> AttackResult:
    """APGD on the cross-entropy loss (AutoAttack's APGD-CE). See :func:`apgd`."""
    return apgd(logits_fn, x, y, key, eps=eps, loss="ce", **kwargs)


def apgd_dlr(logits_fn, x, y, key, *, eps, **kwargs) -> AttackResult:
    """APGD on the DLR loss (AutoAttack's APGD-DLR; needs K >= 3). See :func:`apgd`."""
    return apgd(logits_fn, x, y, key, eps=eps, loss="dlr", **kwargs)


def apgd_t(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
           num_steps: int = 100, num_targets: int = 9, num_restarts: int = 1, rho: float = 0.75,
           bounds: tuple[float, float] = (0.0, 1.0), eot_iter: int = 1,
           randomized: bool = False) -> AttackResult:
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss towards each of the
    ``num_targets`` highest-scoring non-true classes of the clean logits in turn, on the points
    still robust; the worst case per point is kept.

    Success means misclassification (any class), as in AutoAttack. Needs K >= 4 and
    ``1 <= num_targets <= K - 1``. Other arguments as :func:`apgd`.

    Returns:
      AttackResult (B, ...): ``loss`` is the targeted DLR of the winning run.
    """
    _check_apgd_args(norm, num_steps, "dlr", num_restarts, rho, eot_iter)
    x, y, k = check_common(logits_fn, x, y, eps=eps, bounds=bounds, randomized=randomized)
    if k < 4:
        raise ValueError(f"APGD-T (targeted DLR) needs at least 4 classes; logits_fn has {k}.")
    check_int("num_targets", num_targets, 1)
    if num_targets > k - 1:
        raise ValueError(f"num_targets must be <= K - 1 = {k - 1}; got {num_targets}.")
    k_clean, k_runs = jax.random.split(key)
    logits = call_logits(logits_fn, x, k_clean, randomized)
    succ0 = jnp.argmax(logits, axis=-1) != y
    targets_list = top_k_other_classes(logits, y, num_targets)
    clean = AttackResult(x, succ0, losses_lib.dlr_targeted(logits, y, targets_list[0]).astype(x.dtype))
    res, _ = apgd_runs(logits_fn, x, y, k_runs, eps=eps, active=~succ0, targets_list=targets_list,
                       norm=norm, num_steps=num_steps, loss="dlr", num_restarts=num_restarts,
                       rho=rho, bounds=bounds, eot_iter=eot_iter, randomized=randomized,
                       success_on_target=False)
    return update_best(clean, res.x_adv, res.success, res.loss)
