"""Robustness evaluation in the AutoAttack protocol (Croce & Hein 2020), with fixed shapes.

An ensemble of parameter-free attacks runs one after another; each attacks only the points still
robust, and a point counts as robust only if it survives every attack (the worst case per
example). Versions (as AutoAttack's):

* ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries).
* ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square, APGD-T, FAB-T.
* ``rand`` (randomised models): APGD-CE and APGD-DLR with EOT over 20 draws per gradient.

Each stage is one jitted call with a mask of the points still robust: the others are frozen
(their results are discarded and they add nothing to the per-point cost). With ``compact=True``
(the default) a stage runs on a bucket of the batch instead of all of it: the points still robust
are gathered on device into the smallest of eight fixed sizes (B/8, 2B/8, ..., B) that holds
them, padded with frozen points, so a stage after APGD-CE has broken most points costs a fraction
of a full pass (as AutoAttack, which attacks only the survivors), while each stage compiles for at
most eight shapes. With ``compact=False`` every stage runs on the whole batch: one shape, and a
new eps never recompiles (eps is a traced value). Random draws follow a point's position in the
batch a stage sees, so the two modes break different points by chance, not on average. The batch
is split over the devices of ``mesh`` (default: all devices, as :func:`jaxadv.metrics.
pgd_eval_accuracy`) when its size divides evenly. Per point, the result counts the gradient and
forward evaluations each attack spent on it while it was still unbroken.

Gradient-masking flags (AutoAttack's checks, plus one of Carlini et al. 2019's): zero input
gradients, randomness in the forward pass (two forward passes differ), outputs that look like
probabilities (rows in [0, 1] summing to 1), the black-box Square attack breaking points that the
white-box attacks before it missed, and accuracy that does not reach 0 at a large eps (an
unbounded attack must succeed).

References: Croce & Hein, ICML 2020 (AutoAttack, APGD); Croce & Hein, ICML 2020b (FAB);
Andriushchenko et al., ECCV 2020 (Square); Athalye et al., ICML 2018 (EOT, obfuscated gradients);
Carlini et al. 2019, "On evaluating adversarial robustness".
"""

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import sharding as sharding_lib
from jaxadv.attacks import losses as losses_lib
from jaxadv.attacks import projections
from jaxadv.attacks.apgd import (
    apgd_runs,
    call_logits,
    check_common,
    check_int,
    check_norm,
    top_k_other_classes,
)
from jaxadv.attacks.fab import fab_runs
from jaxadv.attacks.square import square_runs
from jaxadv.types import Array

ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
VERSIONS = ("standard", "plus", "rand")
WHITE_BOX = ("apgd-ce", "apgd-dlr", "fab", "apgd-t", "fab-t")
FLAGS = ("zero_gradients", "randomized", "probability_outputs", "black_box_beats_white_box",
         "accuracy_not_zero_at_large_eps")


class StageConfig(NamedTuple):
    """Settings of one attack in the ensemble (hashable: they are static arguments)."""

    name: str
    num_steps: int = 100
    num_restarts: int = 1
    num_targets: int = 9
    num_queries: int = 5000
    p_init: float = 0.8
    eot_iter: int = 1


def version_stages(version: str, *, num_steps: int = 100, num_queries: int = 5000,
                   num_targets: int = 9, eot_iter: int = 20) -> tuple[StageConfig, ...]:
    """The attacks of an AutoAttack version, in order, with AutoAttack's settings."""
    if version == "standard":
        return (StageConfig("apgd-ce", num_steps),
                StageConfig("apgd-t", num_steps, num_targets=num_targets),
                StageConfig("fab-t", num_steps, num_targets=num_targets),
                StageConfig("square", num_queries=num_queries))
    if version == "plus":
        return (StageConfig("apgd-ce", num_steps, num_restarts=5),
                StageConfig("apgd-dlr", num_steps, num_restarts=5),
                StageConfig("fab", num_steps, num_restarts=5),
                StageConfig("square", num_queries=num_queries),
                StageConfig("apgd-t", num_steps, num_targets=num_targets),
                StageConfig("fab-t", num_steps, num_targets=num_targets))
    if version == "rand":
        return (StageConfig("apgd-ce", num_steps, eot_iter=eot_iter),
                StageConfig("apgd-dlr", num_steps, eot_iter=eot_iter))
    raise ValueError(f"Unknown version {version!r}; choose one of {VERSIONS}.")


class EnsembleResult(NamedTuple):
    """Output of :func:`evaluate_ensemble` on a batch of B points.

    Attributes:
      x_adv: (B, ...) an adversarial example for every broken point; for robust points the
        highest-loss point of the first stage (x itself where no stage ran).
      robust: (B,) bool: correctly classified and not broken by any attack (False on padding).
      clean_correct: (B,) bool: correctly classified at x (False on padding).
      per_attack_robust: attack name -> (B,) bool, robust after that stage (cumulative, in the
        order run, as AutoAttack reports it).
      num_grad: (B,) int32 gradient evaluations (one forward + backward each; FAB counts K per
        Jacobian) spent on the point while it was unbroken.
      num_forward: (B,) int32 forward-only evaluations likewise (the clean pass and each stage's
        check of its output included).
      flags: name -> bool, the gradient-masking warnings (see :data:`FLAGS`); empty when
        ``check_flags=False``.
      mask: (B,) bool, the valid (non-padding) points.
    """

    x_adv: Array
    robust: Array
    clean_correct: Array
    per_attack_robust: dict
    num_grad: Array
    num_forward: Array
    flags: dict
    mask: Array


# ----------------------------------------------------------------------------------------------
# Stages: one jitted call each, on the full batch, with a mask of the points still robust.


@functools.partial(jax.jit, static_argnames=("logits_fn", "stage", "norm", "bounds", "randomized"))
def run_stage(x: Array, y: Array, key: jax.Array, eps: Array, active: Array, *,
              logits_fn: Callable, stage: StageConfig, norm: str, bounds: tuple[float, float],
              randomized: bool = False):
    """Runs one attack of the ensemble on the ``active`` points.

    Returns ``(x_adv, broken, num_grad, num_forward)``, all (B, ...): ``broken`` is verified by a
    forward pass at ``x_adv`` (and its membership in the ball and the box), so a point counts as
    broken only if the returned example really is adversarial.
    """
    b = x.shape[0]
    k_attack, k_check, k_clean = jax.random.split(key, 3)
    zeros = jnp.zeros((b,), jnp.int32)
    n_fwd = zeros
    if stage.name in ("apgd-ce", "apgd-dlr", "apgd-t"):
        loss = "ce" if stage.name == "apgd-ce" else "dlr"
        targets_list = None
        if stage.name == "apgd-t":
            logits = call_logits(logits_fn, x, k_clean, randomized)
            targets_list = top_k_other_classes(logits, y, stage.num_targets)
            n_fwd = n_fwd + active.astype(jnp.int32)
        res, n_grad = apgd_runs(logits_fn, x, y, k_attack, eps=eps, active=active,
                                targets_list=targets_list, norm=norm, num_steps=stage.num_steps,
                                loss=loss, num_restarts=stage.num_restarts, bounds=bounds,
                                eot_iter=stage.eot_iter, randomized=randomized)
    elif stage.name in ("fab", "fab-t"):
        targets_list = None
        if stage.name == "fab-t":
            targets_list = top_k_other_classes(logits_fn(x), y, stage.num_targets)
            n_fwd = n_fwd + active.astype(jnp.int32)
        res, n_grad, f = fab_runs(logits_fn, x, y, k_attack, eps=eps, active=active,
                                  targets_list=targets_list, norm=norm,
                                  num_steps=stage.num_steps, num_restarts=stage.num_restarts,
                                  bounds=bounds)
        n_fwd = n_fwd + f
    elif stage.name == "square":
        res, f = square_runs(logits_fn, x, y, k_attack, eps=eps, active=active, norm=norm,
                             num_queries=stage.num_queries, p_init=stage.p_init,
                             num_restarts=stage.num_restarts, bounds=bounds,
                             rescale_schedule=False)
        n_grad, n_fwd = zeros, n_fwd + f
    else:  # pragma: no cover - names are validated by evaluate_ensemble
        raise ValueError(f"Unknown attack {stage.name!r}.")
    broken = active & res.success & _verify(logits_fn, res.x_adv, x, y, k_check, eps, norm,
                                            bounds, randomized)
    n_fwd = n_fwd + active.astype(jnp.int32)
    return res.x_adv, broken, n_grad, n_fwd


def _verify(logits_fn, x_adv, x, y, key, eps, norm, bounds, randomized) -> Array:
    """(B,) misclassified at x_adv, inside the eps-ball (float tolerance) and the box."""
    wrong = jnp.argmax(call_logits(logits_fn, x_adv, key, randomized), axis=-1) != y
    dist = projections.norm_of(x_adv - x, norm)
    eps_b = jnp.broadcast_to(jnp.asarray(eps, x.dtype), dist.shape)
    in_ball = dist <= eps_b * (1.0 + 1e-5) + 1e-6
    flat = x_adv.reshape(x.shape[0], -1)
    in_box = jnp.all((flat >= bounds[0]) & (flat <= bounds[1]), axis=-1)
    return wrong & in_ball & in_box


@functools.partial(jax.jit, static_argnames=("logits_fn", "randomized"))
def _clean_pass(x, y, key, *, logits_fn, randomized):
    logits = call_logits(logits_fn, x, key, randomized)
    return logits, jnp.argmax(logits, axis=-1) == y


@functools.partial(jax.jit, static_argnames=("logits_fn", "randomized"))
def _loss_grads(x, y, key, *, logits_fn, randomized):
    """(B,) L1 norms of the input gradients of CE and (K >= 3) DLR at x."""
    k = jax.eval_shape(lambda v: call_logits(logits_fn, v, key, randomized), x).shape[-1]
    norms = []
    for fn in [losses_lib.cross_entropy] + ([losses_lib.dlr] if k >= 3 else []):
        g = jax.grad(lambda v, fn=fn: jnp.sum(fn(call_logits(logits_fn, v, key, randomized), y)))(x)
        norms.append(jnp.sum(jnp.abs(g.reshape(x.shape[0], -1)), axis=-1))
    return jnp.stack(norms)


# ----------------------------------------------------------------------------------------------
# Gradient-masking flags.


def gradient_masking_flags(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps,
                           norm: str = "linf", bounds: tuple[float, float] = (0.0, 1.0),
                           mask: Array | None = None, randomized: bool = False,
                           large_eps=None, large_eps_steps: int = 20,
                           large_eps_tolerance: float = 0.0) -> dict:
    """AutoAttack's sanity checks that warn of gradient masking, on one batch.

    Args:
      logits_fn: the model (``logits_fn(x, key)`` if ``randomized``).
      x: (B, ...) inputs. y: (B,) labels. key: typed PRNG key.
      eps: the evaluated radius (unused by the checks themselves; kept for symmetry).
      norm, bounds: threat model.
      mask: (B,) valid points (default all).
      randomized: the model takes a key.
      large_eps: radius of the unbounded-attack check (default: the whole box, ``high - low``
        for l-inf, ``(high - low) sqrt(d)`` for l2).
      large_eps_steps: APGD-CE iterations of that check.
      large_eps_tolerance: the fraction of valid points allowed to stay robust there.

    Returns:
      dict with booleans ``zero_gradients`` (some point has an all-zero gradient of CE or DLR),
      ``randomized`` (two forward passes on the same input differ: relative l2 change of the
      outputs > 1e-4 or different predictions), ``probability_outputs`` (every output in
      [-1e-5, 1 + 1e-5] and rows summing to 1 within 1e-5), ``accuracy_not_zero_at_large_eps``,
      and the counts behind them (``num_zero_gradients``, ``robust_at_large_eps``).
    """
    del eps
    x = jnp.asarray(x)
    y = jnp.asarray(y).astype(jnp.int32)
    b = x.shape[0]
    m = np.ones((b,), bool) if mask is None else np.asarray(mask, bool)
    k1, k2, k3, k4 = jax.random.split(key, 4)

    g = np.asarray(_loss_grads(x, y, k1, logits_fn=logits_fn, randomized=randomized))
    zero = np.any(g == 0.0, axis=0) & m

    # Two forward passes, eagerly (outside jit), so host-side randomness shows as well.
    out1 = np.asarray(call_logits(logits_fn, x, k2, randomized))
    out2 = np.asarray(call_logits(logits_fn, x, k3 if randomized else k2, randomized))
    n1 = out1 / (np.linalg.norm(out1, axis=-1, keepdims=True) + 1e-10)
    n2 = out2 / (np.linalg.norm(out2, axis=-1, keepdims=True) + 1e-10)
    rand = bool(np.any(np.linalg.norm(n1 - n2, axis=-1)[m] > 1e-4)
                or np.any((out1.argmax(-1) != out2.argmax(-1))[m]))

    rows = out1[m]
    prob = bool(rows.size and rows.max() < 1.0 + 1e-5 and rows.min() > -1e-5
                and np.all(np.abs(rows.sum(-1) - 1.0) < 1e-5))

    if large_eps is None:
        span = bounds[1] - bounds[0]
        large_eps = span if norm == "linf" else span * float(np.sqrt(x[0].size))
    stage = StageConfig("apgd-ce", num_steps=large_eps_steps)
    _, correct = _clean_pass(x, y, k4, logits_fn=logits_fn, randomized=randomized)
    active = jnp.asarray(m) & correct
    _, broken, _, _ = run_stage(x, y, jax.random.fold_in(k4, 1), jnp.asarray(large_eps, x.dtype),
                                active, logits_fn=logits_fn, stage=stage, norm=norm,
                                bounds=tuple(bounds), randomized=randomized)
    still = np.asarray(active & ~broken)
    n_valid = max(int(m.sum()), 1)
    return {
        "zero_gradients": bool(zero.any()),
        "num_zero_gradients": int(zero.sum()),
        "randomized": rand,
        "probability_outputs": prob,
        "accuracy_not_zero_at_large_eps": bool(still.sum() / n_valid > large_eps_tolerance),
        "robust_at_large_eps": int(still.sum()),
    }


# ----------------------------------------------------------------------------------------------
# The evaluator.


def stage_key(key: jax.Array, name: str) -> jax.Array:
    """A key per attack name, independent of which other attacks run (so a stage of the
    ensemble equals the standalone attack run with this key)."""
    return jax.random.fold_in(key, 1 + ATTACKS.index(name))


def evaluate_ensemble(logits_fn: Callable, x: Array, y: Array, key: jax.Array, *, eps,
                      norm: str = "linf", version: str = "standard",
                      attacks: tuple[str, ...] | None = None, mask: Array | None = None,
                      bounds: tuple[float, float] = (0.0, 1.0), num_steps: int = 100,
                      num_queries: int = 5000, num_targets: int = 9, eot_iter: int = 20,
                      randomized: bool = False, check_flags: bool = True,
                      square_alpha: float = 0.002, compact: bool = True, mesh=None,
                      **flag_kwargs) -> EnsembleResult:
    """Evaluates robustness on a batch with the AutoAttack ensemble.

    Args:
      logits_fn: images (B, ...) in ``bounds`` -> logits (B, K); pass the same function object
        on every call (it is a static argument of the jitted stages: a fresh closure per call
        recompiles). With ``randomized`` (only for ``version='rand'``): ``logits_fn(x, key)``.
      x: (B, ...) inputs. y: (B,) int labels. key: typed PRNG key.
      eps: radius, a scalar (traced inside the stages: new values do not recompile).
      norm: 'linf' or 'l2'.
      version: 'standard', 'plus' or 'rand' (see the module docstring).
      attacks: optional subset of the version's attacks to run (in the version's order).
      mask: (B,) bool valid points (padding excluded from everything); default all.
      bounds: the box.
      num_steps: APGD/FAB iterations (100). num_queries: Square's budget (5,000).
      num_targets: APGD-T/FAB-T targets (9; capped at K - 1).
      eot_iter: EOT draws per gradient in the 'rand' version (20).
      randomized: the model takes a key (each forward pass draws fresh randomness).
      check_flags: compute the gradient-masking flags (a few extra evaluations, not counted).
      square_alpha: the share of points Square must break beyond the white-box attacks for
        ``black_box_beats_white_box`` (AutoAttack: 0.002).
      compact: run each stage on the smallest of eight bucket sizes that holds the points still
        robust (module docstring); False: every stage on the whole batch (one compiled shape).
      mesh: a ``jax.sharding.Mesh`` with a "data" axis to split the batch (and the buckets) over
        (default: every device; the batch stays where it is when its size does not divide).
      **flag_kwargs: ``large_eps``, ``large_eps_steps``, ``large_eps_tolerance`` of
        :func:`gradient_masking_flags`.

    Returns:
      EnsembleResult.

    Raises:
      ValueError: unknown norm, version or attack name, eps < 0 or not a scalar, labels out of
        range, too few classes for DLR / targeted attacks, ``randomized`` outside 'rand'.
    """
    check_norm(norm)
    if version not in VERSIONS:
        raise ValueError(f"Unknown version {version!r}; choose one of {VERSIONS}.")
    if np.ndim(eps) != 0:
        raise ValueError(f"eps must be a scalar; got shape {np.shape(eps)}.")
    if randomized and version != "rand":
        raise ValueError("randomized=True (logits_fn(x, key)) is supported by version='rand' "
                         f"(APGD with EOT); got version={version!r}.")
    check_int("num_targets", num_targets, 1)
    x, y, k = check_common(logits_fn, x, y, eps=eps, bounds=bounds, randomized=randomized)
    stages = version_stages(version, num_steps=num_steps, num_queries=num_queries,
                            num_targets=min(num_targets, k - 1), eot_iter=eot_iter)
    if attacks is not None:
        unknown = [a for a in attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"Unknown attacks {unknown}; choose among {ATTACKS}.")
        missing = [a for a in attacks if a not in [s.name for s in stages]]
        if missing:
            raise ValueError(f"Attacks {missing} are not part of version {version!r}.")
        stages = tuple(s for s in stages if s.name in attacks)
    names = [s.name for s in stages]
    if any(n in ("apgd-dlr",) for n in names) and k < 3:
        raise ValueError(f"APGD-DLR needs at least 3 classes; logits_fn has {k}.")
    if "apgd-t" in names and k < 4:
        raise ValueError(f"APGD-T needs at least 4 classes; logits_fn has {k}.")
    b = x.shape[0]
    m = jnp.ones((b,), jnp.bool_) if mask is None else jnp.asarray(mask, jnp.bool_)
    if m.shape != (b,):
        raise ValueError(f"mask must have shape ({b},); got {m.shape}.")
    bounds = (float(bounds[0]), float(bounds[1]))
    eps_arr = jnp.asarray(eps, x.dtype)

    place = sharding_lib.mesh_for_batch(b, mesh)
    shards = 1 if place is None else place.size
    if place is not None:
        x, y, m = jax.device_put((x, y, m), sharding_lib.batch_sharding(place))

    _, correct = _clean_pass(x, y, jax.random.fold_in(key, 0), logits_fn=logits_fn,
                             randomized=randomized)
    clean_correct = correct & m
    robust = clean_correct
    x_adv = x
    num_grad = jnp.zeros((b,), jnp.int32)
    num_forward = m.astype(jnp.int32)
    per_attack = {}
    first = True
    for stage in stages:
        n_robust = int(jnp.sum(robust))
        if not n_robust:
            per_attack[stage.name] = robust
            continue
        run = functools.partial(run_stage, logits_fn=logits_fn, stage=stage, norm=norm,
                                bounds=bounds, randomized=randomized)
        size = bucket_size(n_robust, b, shards) if compact else b
        if size < b:
            idx = _survivors_first(robust, size)
            sub = (x[idx], y[idx], robust[idx])
            if shards > 1:
                sub = jax.device_put(sub, x.sharding)
            xs, bs, ngs, nfs = run(sub[0], sub[1], stage_key(key, stage.name), eps_arr, sub[2])
            xa, broken, ng, nf = _scatter(idx, x, xs, bs, ngs, nfs)
        else:
            xa, broken, ng, nf = run(x, y, stage_key(key, stage.name), eps_arr, robust)
        take = broken | (first & robust)  # robust points keep the first stage's strongest point
        x_adv = jnp.where(take.reshape((b,) + (1,) * (x.ndim - 1)), xa, x_adv)
        robust = robust & ~broken
        num_grad = num_grad + ng
        num_forward = num_forward + nf
        per_attack[stage.name] = robust
        first = False

    flags = {}
    if check_flags:
        flags = gradient_masking_flags(logits_fn, x, y, jax.random.fold_in(key, 100), eps=eps,
                                       norm=norm, bounds=bounds, mask=m, randomized=randomized,
                                       **flag_kwargs)
        flags["black_box_beats_white_box"] = black_box_flag(per_attack, m, square_alpha)
        flags = {f: flags[f] for f in FLAGS} | {f: v for f, v in flags.items() if f not in FLAGS}
    return EnsembleResult(x_adv, robust, clean_correct, per_attack, num_grad, num_forward, flags,
                          m)


def bucket_size(n: int, b: int, multiple: int = 1, levels: int = 8) -> int:
    """The smallest of ``ceil(k b / levels)`` (k = 1..levels), rounded up to a multiple of
    ``multiple`` and capped at b, that holds ``n`` points."""
    for k in range(1, levels + 1):
        size = -(-k * b // levels)
        size = min(-(-size // multiple) * multiple, b)
        if size >= n:
            return size
    return b


@functools.partial(jax.jit, static_argnames=("size",))
def _survivors_first(robust: Array, size: int) -> Array:
    """Indices of the first ``size`` points in the order robust-first (stable)."""
    return jnp.argsort(~robust, stable=True)[:size]


@jax.jit
def _scatter(idx, x, xs, broken, num_grad, num_forward):
    """A bucket's outputs back at their batch positions (frozen values elsewhere)."""
    b = x.shape[0]
    return (x.at[idx].set(xs), jnp.zeros((b,), jnp.bool_).at[idx].set(broken),
            jnp.zeros((b,), jnp.int32).at[idx].set(num_grad),
            jnp.zeros((b,), jnp.int32).at[idx].set(num_forward))


def black_box_flag(per_attack: dict, mask: Array, alpha: float = 0.002) -> bool:
    """Square lowered the robust accuracy (a share of the valid points) by more than ``alpha``
    after the white-box attacks run before it (AutoAttack's ``check_square_sr``).

    Args:
      per_attack: the cumulative per-attack robust flags of an :class:`EnsembleResult`.
      mask: (B,) valid points.
      alpha: tolerated share (AutoAttack: 0.002).
    """
    names = list(per_attack)
    if "square" not in names:
        return False
    i = names.index("square")
    before = [n for n in names[:i] if n in WHITE_BOX]
    if not before:
        return False
    prev = per_attack[names[i - 1]]
    n = max(int(jnp.sum(mask)), 1)
    return bool(int(jnp.sum(prev & ~per_attack["square"])) / n > alpha)


def evaluate_ensemble_batches(logits_fn: Callable, batches: Iterable[dict], key: jax.Array, *,
                              eps, **kwargs) -> dict:
    """Streams :func:`evaluate_ensemble` over padded, masked batches and aggregates.

    Args:
      logits_fn: as :func:`evaluate_ensemble`.
      batches: dicts with "image" (B, ...), "label" (B,) and "mask" (B,) (e.g.
        ``jaxadv.data.eval_batches``); every batch should have the same B (the stages then
        compile once per bucket size, at most eight, or once with ``compact=False``).
      key: typed PRNG key; batch i uses ``fold_in(key, i)``.
      eps: radius. **kwargs: passed to :func:`evaluate_ensemble`.

    Returns:
      dict: ``n`` (valid points), ``clean_acc``, ``robust_acc``, ``per_attack_robust_acc``
      (name -> robust accuracy after that stage), ``num_grad_mean`` and ``num_forward_mean`` (per
      valid point), ``flags`` (each flag OR-ed over batches; counts summed).
    """
    n = clean = rob = 0
    grads = fwds = 0
    per_attack: dict[str, int] = {}
    flags: dict = {}
    for i, batch in enumerate(batches):
        res = evaluate_ensemble(logits_fn, batch["image"], batch["label"],
                                jax.random.fold_in(key, i), eps=eps, mask=batch.get("mask"),
                                **kwargs)
        m = np.asarray(res.mask)
        n += int(m.sum())
        clean += int(np.asarray(res.clean_correct).sum())
        rob += int(np.asarray(res.robust).sum())
        grads += int(np.asarray(res.num_grad)[m].sum())
        fwds += int(np.asarray(res.num_forward)[m].sum())
        for name, r in res.per_attack_robust.items():
            per_attack[name] = per_attack.get(name, 0) + int(np.asarray(r).sum())
        for f, v in res.flags.items():
            flags[f] = (flags.get(f, False) or v) if isinstance(v, bool) else flags.get(f, 0) + v
    d = max(n, 1)
    return {"n": n, "clean_acc": clean / d, "robust_acc": rob / d,
            "per_attack_robust_acc": {k: v / d for k, v in per_attack.items()},
            "num_grad_mean": grads / d, "num_forward_mean": fwds / d, "flags": flags}
