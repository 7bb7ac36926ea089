"""Square attack (Andriushchenko et al. 2020): a score-based black-box attack, l-inf and l2.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020. Random search on the margin ``m(x') = z_y - max_{j != y} z_j``
(minimised; the point is broken when the prediction leaves y): each iteration proposes a change
confined to random s x s squares and keeps it if the margin goes down. Only forward passes are
used (one per iteration and point, plus one for the starting point).

* l-inf: start from vertical stripes ``x + eps * (+-1)`` (one sign per column and channel); the
  proposal sets the perturbation in one square to ``+-eps`` (one sign per channel).
* l2: start from a 5 x 5 grid of the paper's "double bump" patterns ``eta`` (two rectangles of
  opposite sign, each ``sum_{k >= d} 1/(k + 1)^2`` at Chebyshev distance d from its centre) with
  random signs, scaled to norm eps; the proposal moves the mass of a second square into the first
  one (redrawn as ``eta`` plus the old content) and rescales the whole perturbation to norm eps.
* Square size: ``s = round(sqrt(p * H * W))`` (l2: at least 3 and odd), where p starts at
  ``p_init`` (0.8) and halves at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (of
  10,000; with ``rescale_schedule`` these are scaled to ``num_queries``; AutoAttack uses the raw
  iteration numbers with 5,000 queries).

JAX form: fixed shapes throughout. The square's side is a traced integer and every square is a
mask built from index comparisons on the full H x W grid, so nothing is sliced dynamically; the
position, signs and the pattern's orientation are drawn per example (the reference code shares a
square position across the batch). Points already broken, or not ``active``, are frozen by a mask
(never gathered), and the ``lax.while_loop`` stops as soon as no active point is left or the
query budget is spent. Facts about the reference behaviour were checked against AutoAttack's
``square.py``; the code is written from the paper.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv.attacks.apgd import check_common, check_int, check_norm, is_tracer, per_example
from jaxadv.attacks.base import AttackResult, update_best
from jaxadv.types import Array

SQUARE_NORMS = ("linf", "l2")
_P_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_TINY = 1e-12


def p_schedule(iteration: Array, *, p_init: float, num_queries: int,
               rescale_schedule: bool) -> Array:
    """The fraction p of pixels changed at ``iteration`` (0-based): ``p_init / 2^m`` with m the
    number of schedule points strictly below the (optionally rescaled) iteration."""
    it = jnp.asarray(iteration, jnp.int32)
    if rescale_schedule:
        it = (it * 10000) // num_queries
    m = jnp.sum(it > jnp.asarray(_P_SCHEDULE, jnp.int32)).astype(jnp.float32)
    return p_init * jnp.exp2(-m)


def square_side(p: Array, h: int, w: int, norm: str) -> Array:
    """Side of the square for fraction p on an H x W image (int32 scalar)."""
    s = jnp.round(jnp.sqrt(p * (h * w))).astype(jnp.int32)
    if norm == "linf":
        s = jnp.maximum(s, 1)
    else:
        s = jnp.maximum(s, 3)
        s = s + (s % 2 == 0).astype(jnp.int32)
    return jnp.minimum(s, min(h, w))


def _margin(logits: Array, y: Array) -> Array:
    """z_y - max_{j != y} z_j, (B,)."""
    one_hot = jax.nn.one_hot(y, logits.shape[-1], dtype=jnp.bool_)
    z_y = jnp.sum(jnp.where(one_hot, logits, 0.0), axis=-1)
    return z_y - jnp.max(jnp.where(one_hot, -jnp.inf, logits), axis=-1)


def _window(vh: Array, vw: Array, s: Array, h: int, w: int) -> Array:
    """(B, H, W, 1) bool mask of the squares [vh, vh + s) x [vw, vw + s)."""
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = ((rows >= vh[:, None, None]) & (rows < vh[:, None, None] + s)
              & (cols >= vw[:, None, None]) & (cols < vw[:, None, None] + s))
    return inside[..., None]


def _positions(key: jax.Array, b: int, h: int, w: int, s: Array) -> tuple[Array, Array]:
    """Top-left corners uniform over the valid positions [0, H - s] x [0, W - s], per example."""
    kh, kw = jax.random.split(key)
    vh = jnp.floor(jax.random.uniform(kh, (b,)) * (h - s + 1).astype(jnp.float32))
    vw = jnp.floor(jax.random.uniform(kw, (b,)) * (w - s + 1).astype(jnp.float32))
    return (jnp.minimum(vh.astype(jnp.int32), h - s), jnp.minimum(vw.astype(jnp.int32), w - s))


def _random_signs(key: jax.Array, shape, dtype) -> Array:
    return jnp.where(jax.random.bernoulli(key, 0.5, shape), 1.0, -1.0).astype(dtype)


def _inv_square_cumsum(n: int) -> np.ndarray:
    """H[m] = sum_{k=1}^{m} 1/k^2 for m = 0..n."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1) ** 2)]).astype(np.float32)


def _rect(a: Array, bb: Array, rows: Array, cols: Array, htab: Array) -> Array:
    """The paper's rectangle pattern of size rows x cols at local coordinates (a, bb):
    ``sum_{k=d}^{M-1} 1/(k+1)^2`` with d the Chebyshev distance to the centre
    (rows // 2, cols // 2) and M = max(rows // 2, cols // 2) + 1."""
    d = jnp.maximum(jnp.abs(a - rows // 2), jnp.abs(bb - cols // 2))
    m = jnp.maximum(rows // 2, cols // 2) + 1
    last = htab.shape[0] - 1
    return htab[jnp.clip(m, 0, last)] - htab[jnp.clip(d, 0, last)]


def _eta(li: Array, lj: Array, s: Array, transpose: Array, htab: Array, dtype) -> Array:
    """The l2 proposal ``eta(s)`` evaluated at local coordinates (li, lj) in [0, s)^2 (values
    outside are 0), shape of li: (B, H, W). Top s // 2 rows: one rectangle; the rest: minus the
    other; each half has unit l2 norm, then the whole has unit norm. ``transpose`` (B,) swaps
    rows and columns."""
    t = transpose[:, None, None]
    li, lj = jnp.where(t, lj, li), jnp.where(t, li, lj)
    inside = (li >= 0) & (li < s) & (lj >= 0) & (lj < s)
    half = s // 2
    top = inside & (li < half)
    bot = inside & (li >= half)
    v_top = jnp.where(top, _rect(li, lj, half, s, htab), 0.0).astype(dtype)
    v_bot = jnp.where(bot, _rect(li - half, lj, s - half, s, htab), 0.0).astype(dtype)

    def unit(v):
        n = jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))
        return v / jnp.maximum(n, _TINY)

    e = unit(v_top) - unit(v_bot)
    return unit(e)


def _l2_normalize_to(delta: Array, radius: Array) -> Array:
    n = jnp.sqrt(jnp.sum(delta.reshape(delta.shape[0], -1) ** 2, axis=-1))
    return delta * per_example(radius / jnp.maximum(n, _TINY), delta)


def _square_run(logits_fn, x, y, key, eps, active, *, norm, num_queries, p_init, bounds,
                rescale_schedule) -> tuple[AttackResult, Array]:
    """One Square run on the ``active`` points: (AttackResult, forward passes per point)."""
    b, h, w, c = x.shape
    dt = x.dtype
    eps_b = jnp.broadcast_to(jnp.asarray(eps, dt), (b,))
    eps_x = per_example(eps_b, x)
    lo, hi = bounds
    htab = jnp.asarray(_inv_square_cumsum(max(h, w) + 2))
    k_init, k_loop = jax.random.split(key)

    if norm == "linf":
        stripes = _random_signs(k_init, (b, 1, w, c), dt)
        x_best = jnp.clip(x + eps_x * stripes, lo, hi)
    else:
        s0 = max(h // 5, 1)
        sp = (h - 5 * s0) // 2
        k_sign, k_tr = jax.random.split(k_init)
        rows = jnp.arange(h)[:, None] - sp
        cols = jnp.arange(w)[None, :] - sp
        valid = ((rows >= 0) & (rows < (h // s0) * s0) & (cols >= 0) & (cols < (w // s0) * s0))
        bi, bj = rows // s0, cols // s0
        li = jnp.broadcast_to(jnp.where(valid, rows % s0, -1), (b, h, w))
        lj = jnp.broadcast_to(jnp.where(valid, cols % s0, -1), (b, h, w))
        # One orientation and one sign per (example, block[, channel]).
        nbh, nbw = max(h // s0, 1), max(w // s0, 1)
        tr = jax.random.bernoulli(k_tr, 0.5, (b, nbh, nbw))
        signs = _random_signs(k_sign, (b, nbh, nbw, c), dt)
        bi_c = jnp.clip(bi, 0, nbh - 1)
        bj_c = jnp.clip(bj, 0, nbw - 1)
        # Every block holds the same s0 x s0 pattern (possibly transposed), so normalising over
        # the whole grid only rescales all blocks alike; the final rescaling to eps absorbs it.
        zeros = jnp.zeros((b,), jnp.bool_)
        e_plain = _eta(li, lj, jnp.int32(s0), zeros, htab, dt)
        e_tr = _eta(lj, li, jnp.int32(s0), zeros, htab, dt)
        e = jnp.where(tr[:, bi_c, bj_c], e_tr, e_plain)
        delta0 = e[..., None] * signs[:, bi_c, bj_c, :]
        x_best = jnp.clip(x + _l2_normalize_to(delta0, eps_b), lo, hi)

    logits0 = logits_fn(x_best)
    margin0 = _margin(logits0, y)
    succ0 = (jnp.argmax(logits0, axis=-1) != y) & active
    n_fwd0 = active.astype(jnp.int32)

    def cond(carry):
        i, _, _, succ, _ = carry
        return (i < num_queries) & jnp.any(active & ~succ)

    def body(carry):
        i, x_best, margin_min, succ, n_fwd = carry
        todo = active & ~succ
        p = p_schedule(i, p_init=p_init, num_queries=num_queries,
                       rescale_schedule=rescale_schedule)
        s = square_side(p, h, w, norm)
        k_i = jax.random.fold_in(k_loop, i)
        k_pos, k_pos2, k_sign, k_tr = jax.random.split(k_i, 4)
        vh, vw = _positions(k_pos, b, h, w, s)
        win = _window(vh, vw, s, h, w)
        if norm == "linf":
            signs = _random_signs(k_sign, (b, 1, 1, c), dt)
            x_new = jnp.clip(jnp.where(win, x_best + 2.0 * eps_x * signs, x_best), x - eps_x,
                             x + eps_x)
            x_new = jnp.clip(x_new, lo, hi)
        else:
            delta = x_best - x
            vh2, vw2 = _positions(k_pos2, b, h, w, s)
            win2 = _window(vh2, vw2, s, h, w)
            both = win | win2
            d_w1 = jnp.where(win, delta, 0.0)
            n_w1 = jnp.sqrt(jnp.sum(d_w1 ** 2, axis=(1, 2), keepdims=True))
            n_ws = jnp.sqrt(jnp.sum(jnp.where(both, delta, 0.0) ** 2, axis=(1, 2), keepdims=True))
            n_img = jnp.sqrt(jnp.sum(delta.reshape(b, -1) ** 2, axis=-1))
            li = jnp.arange(h)[None, :, None] - vh[:, None, None]
            lj = jnp.arange(w)[None, None, :] - vw[:, None, None]
            li = jnp.broadcast_to(li, (b, h, w))
            lj = jnp.broadcast_to(lj, (b, h, w))
            tr = jax.random.bernoulli(k_tr, 0.5, (b,))
            eta = _eta(li, lj, s, tr, htab, dt)[..., None]
            new = eta * _random_signs(k_sign, (b, 1, 1, c), dt) + d_w1 / (_TINY + n_w1)
            n_new = jnp.sqrt(jnp.sum(jnp.where(win, new, 0.0) ** 2, axis=(1, 2), keepdims=True))
            room = jnp.maximum(eps_b ** 2 - n_img ** 2, 0.0)
            target = jnp.sqrt(per_example(room, x) / c + n_ws ** 2)
            new = new / (_TINY + n_new) * target
            delta = jnp.where(win, new, jnp.where(win2, 0.0, delta))
            x_new = jnp.clip(x + _l2_normalize_to(delta, eps_b), lo, hi)

        logits = logits_fn(x_new)
        margin = _margin(logits, y)
        succ_new = jnp.argmax(logits, axis=-1) != y
        accept = todo & ((margin < margin_min) | succ_new)
        x_best = jnp.where(per_example(accept, x), x_new, x_best)
        margin_min = jnp.where(accept, margin, margin_min)
        succ = succ | (accept & succ_new)
        return i + 1, x_best, margin_min, succ, n_fwd + todo.astype(jnp.int32)

    init = (jnp.int32(0), x_best, margin0, succ0, n_fwd0)
    _, x_best, margin_min, succ, n_fwd = lax.while_loop(cond, body, init)
    res = AttackResult(jnp.where(per_example(active, x), x_best, x), succ & active,
                       jnp.where(active, -margin_min, -jnp.inf))
    return res, n_fwd


def square_runs(logits_fn, x, y, key, *, eps, active, norm="linf", num_queries=5000,
                p_init=0.8, num_restarts=1, bounds=(0.0, 1.0), rescale_schedule=True
                ) -> tuple[AttackResult, Array]:
    """``num_restarts`` Square runs one after another, each on the points still active and
    unbroken (run r uses ``fold_in(key, r)``; empty runs are skipped). Returns the best result and
    the forward passes per point. Arguments are not validated here."""
    b = x.shape[0]

    def one(carry, r):
        best, n_fwd = carry
        act = active & ~best.success

        def run(_):
            return _square_run(logits_fn, x, y, jax.random.fold_in(key, r), eps, act, norm=norm,
                               num_queries=num_queries, p_init=p_init, bounds=bounds,
                               rescale_schedule=rescale_schedule)

        def skip(_):
            return (AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype)),
                    jnp.zeros((b,), jnp.int32))

        res, n = lax.cond(jnp.any(act), run, skip, None)
        return (update_best(best, res.x_adv, res.success, res.loss), n_fwd + n), None

    init = (AttackResult(x, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype)),
            jnp.zeros((b,), jnp.int32))
    (best, n_fwd), _ = lax.scan(one, init, jnp.arange(num_restarts))
    return best, n_fwd


def check_square_args(x, norm, num_queries, p_init, num_restarts):
    check_norm(norm, SQUARE_NORMS)
    check_int("num_queries", num_queries, 0)
    check_int("num_restarts", num_restarts, 1)
    if not is_tracer(p_init) and not 0.0 < float(p_init) <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1]; got {p_init}.")
    if x.ndim != 4:
        raise ValueError(f"Square attack needs images (B, H, W, C); got shape {x.shape}.")


def square(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
           num_queries: int = 5000, p_init: float = 0.8, num_restarts: int = 1,
           bounds: tuple[float, float] = (0.0, 1.0),
           rescale_schedule: bool = True) -> AttackResult:
    """Square attack (Andriushchenko et al. 2020), untargeted, on the margin loss.

    Args:
      logits_fn: images (B, H, W, C) in ``bounds`` -> logits (B, K). Only its values are used.
      x: (B, H, W, C) clean images.
      y: (B,) int labels.
      key: typed PRNG key; the result is a deterministic function of it.
      eps: radius (scalar or (B,)); traced values welcome.
      norm: 'linf' or 'l2'.
      num_queries: iterations per run (one forward pass each, plus one for the start).
      p_init: initial fraction of pixels in the square (0.8; the paper's l2 setting is 0.1 on
        ImageNet, AutoAttack uses 0.8 for both norms).
      num_restarts: runs from fresh starts, each on the points still robust.
      bounds: (low, high) box.
      rescale_schedule: scale the p schedule (written for 10,000 queries) to ``num_queries``.

    Returns:
      AttackResult: ``x_adv`` the best point (clean input if it is already misclassified),
      ``success`` (B,), ``loss`` = ``max_{j != y} z_j - z_y`` at ``x_adv`` (higher = stronger).

    Raises:
      ValueError: unknown norm, x not 4-D, eps < 0, bad counts or p_init, labels out of range.
    """
    x = jnp.asarray(x)
    check_square_args(x, norm, num_queries, p_init, num_restarts)
    x, y, _ = check_common(logits_fn, x, y, eps=eps, bounds=bounds)
    logits = logits_fn(x)
    succ0 = jnp.argmax(logits, axis=-1) != y
    clean = AttackResult(x, succ0, -_margin(logits, y))
    res, _ = square_runs(logits_fn, x, y, key, eps=eps, active=~succ0, norm=norm,
                         num_queries=num_queries, p_init=p_init, num_restarts=num_restarts,
                         bounds=bounds, rescale_schedule=rescale_schedule)
    return update_best(clean, res.x_adv, res.success, res.loss)
