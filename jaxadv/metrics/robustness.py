"""Robust accuracy: masked (sum, count) helpers and a streamed, sharded accuracy-vs-eps curve.

Metrics are accumulated on device as ``(sum, count)`` pairs over padded, masked batches (padding
never counts) and fetched once at the end. ``robust_accuracy_curve`` jits one function that attacks
a batch at every epsilon (``jaxadv.attacks.sweep.attack_over_eps``: one compiled call), so the whole
curve compiles once; with a ``Mesh`` the batch is sharded ``NamedSharding(mesh, P("data"))`` and
XLA splits the attack over the devices.

An example counts as robust at eps when it is classified correctly on the clean input **and** the
attack did not succeed (so robust accuracy <= clean accuracy even for attacks with a random start,
and eps = 0 gives the clean accuracy).
"""

import functools
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxadv import sharding as sharding_lib
from jaxadv import validation
from jaxadv.attacks.gradient import pgd_boopathy_eval, resolve_unroll
from jaxadv.attacks.sweep import attack_over_eps
from jaxadv.data.pipeline import eval_batches
from jaxadv.types import Array


def masked_sum_count(values: Array, mask: Array | None = None) -> tuple[Array, Array]:
    """(sum of values over the unmasked examples, number of unmasked examples).

    Args:
      values: (B,) or (K, B) per-example values (bool or numeric); the last axis is the batch.
      mask: (B,) bool, False on padding; None counts every example.

    Returns:
      ``(sum, count)``: sum of shape values.shape[:-1] and count, a scalar, both in float32
      (bool, integer, bfloat16 or float32 values) or float64 (float64 values, a gradient check
      under x64 stays in float64).
    """
    values = jnp.asarray(values)
    v = values.astype(jnp.promote_types(values.dtype, jnp.float32))
    if mask is None:
        mask = jnp.ones(v.shape[-1:], jnp.bool_)
    m = jnp.asarray(mask).astype(jnp.bool_)
    if m.shape != v.shape[-1:]:
        raise ValueError(f"mask must have shape {v.shape[-1:]} to match the values {v.shape}; "
                         f"got {m.shape}.")
    return jnp.sum(jnp.where(m, v, jnp.zeros_like(v)), axis=-1), jnp.sum(m.astype(v.dtype))


def accuracy_sum_count(logits: Array, labels: Array, mask: Array | None = None
                       ) -> tuple[Array, Array]:
    """(number of correct unmasked predictions, number of unmasked examples) for logits (B, K)."""
    return masked_sum_count(jnp.argmax(logits, axis=-1) == labels, mask)


def ratio(total, count) -> np.ndarray:
    """sum / count on the host (NaN where count is 0)."""
    total, count = np.asarray(total, np.float64), np.asarray(count, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


class RobustAccuracy(NamedTuple):
    """Robust accuracy against eps.

    Attributes:
      epsilons: (K,) the radii.
      robust_accuracy: (K,) share of examples correct on the clean input and not broken at eps.
      clean_accuracy: float.
      num_examples: number of (unpadded) examples evaluated.
    """

    epsilons: np.ndarray
    robust_accuracy: np.ndarray
    clean_accuracy: float
    num_examples: int


class _ArraySource:
    """A random-access source over in-memory arrays (for ``eval_batches``)."""

    def __init__(self, images, labels):
        self.images, self.labels = np.asarray(images), np.asarray(labels)
        if self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must have shape ({self.images.shape[0]},) to match images "
                             f"{self.images.shape}; got {self.labels.shape}.")
        self.name = "arrays"

    def __len__(self):
        return len(self.labels)

    def get(self, indices):
        return self.images[indices], self.labels[indices]


def _batches(data, batch_size: int, num_examples: int | None) -> Iterable[dict]:
    if isinstance(data, tuple) and len(data) == 2:
        data = _ArraySource(*data)
    if hasattr(data, "get") and hasattr(data, "__len__"):
        return eval_batches(data, batch_size=batch_size, num_examples=num_examples)
    if num_examples is not None:
        raise ValueError("num_examples applies to a source or (images, labels); an iterable of "
                         "batches is used as given.")
    return data


def make_robust_counts_fn(logits_fn: Callable, attack_fn: Callable, **attack_kw) -> Callable:
    """A jitted ``counts(images, labels, mask, key, epsilons) -> (robust (K,), clean, count)`` on
    one padded batch, attacking at every epsilon in one compiled call (compiles once per batch
    shape and number of epsilons; eps values are traced)."""

    @jax.jit
    def counts(images, labels, mask, key, epsilons):
        clean_ok = jnp.argmax(logits_fn(images), axis=-1) == labels
        sweep = attack_over_eps(attack_fn, logits_fn, images, labels, key, epsilons=epsilons,
                                **attack_kw)
        robust, count = masked_sum_count(clean_ok[None, :] & ~sweep.success, mask)
        clean, _ = masked_sum_count(clean_ok, mask)
        return robust, clean, count

    return counts


def robust_accuracy_curve(logits_fn: Callable, data, attack_fn: Callable, *, epsilons,
                          batch_size: int, key: jax.Array, num_examples: int | None = None,
                          mesh: Mesh | None = None, **attack_kw) -> RobustAccuracy:
    """Robust accuracy at every epsilon, streamed over a dataset in padded, masked batches.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K), eval mode.
      data: a source (``len`` and ``get``, e.g. ``jaxadv.data.load_dataset(...)``), a pair
        ``(images (N, H, W, C), labels (N,))``, or an iterable of batches
        ``{"image", "label", "mask"}`` already padded to ``batch_size``.
      attack_fn: ``(logits_fn, x, y, key, *, eps, **attack_kw) -> AttackResult``.
      epsilons: K radii (all evaluated in one vmapped call per batch).
      batch_size: global batch size (a multiple of the mesh size when ``mesh`` is given).
      key: typed PRNG key; batch i uses ``fold_in(key, i)``.
      num_examples: evaluate only the first N examples of a source.
      mesh: optional ``jax.sharding.Mesh`` with a "data" axis; batches are sharded over it.
      **attack_kw: the attack's hyperparameters (step_size, num_steps, norm, ...).

    Returns:
      RobustAccuracy: epsilons (K,), robust_accuracy (K,), clean_accuracy, num_examples.
    """
    batch_size = validation.check_int("batch_size", batch_size, 1)
    if mesh is not None:
        sharding_lib.check_divisible(batch_size, mesh)
    eps_host = np.asarray(epsilons, np.float32)
    if (eps_host.ndim != 1 or eps_host.size == 0 or not np.all(np.isfinite(eps_host))
            or np.any(eps_host < 0)):
        raise ValueError(f"epsilons must be a non-empty 1-D sequence of finite values >= 0; got "
                         f"{epsilons}.")
    counts_fn = make_robust_counts_fn(logits_fn, attack_fn, **attack_kw)
    eps = jnp.asarray(eps_host)
    robust = jnp.zeros(eps_host.shape, jnp.float32)
    clean = jnp.zeros((), jnp.float32)
    count = jnp.zeros((), jnp.float32)
    for i, batch in enumerate(_batches(data, batch_size, num_examples)):
        images = np.asarray(batch["image"], np.float32)
        labels = np.asarray(batch["label"]).astype(np.int32)
        mask = np.asarray(batch.get("mask", np.ones(len(labels), bool)), bool)
        if images.shape[0] != batch_size:
            raise ValueError(f"Batch {i} has {images.shape[0]} examples, not batch_size="
                             f"{batch_size}; pad it and pass a mask (jaxadv.data.eval_batches).")
        arrays = (images, labels, mask)
        if mesh is not None:
            arrays = sharding_lib.shard_batch(arrays, mesh)
        r, c, n = counts_fn(*arrays, jax.random.fold_in(key, i), eps)
        robust, clean, count = robust + r, clean + c, count + n
        if mesh is not None:  # several CPU devices: one batch at a time (XLA:CPU deadlock)
            sharding_lib.wait_between_steps((robust, clean, count), mesh)
    robust, clean, count = jax.device_get((robust, clean, count))
    return RobustAccuracy(epsilons=eps_host, robust_accuracy=ratio(robust, count),
                          clean_accuracy=float(ratio(clean, count)),
                          num_examples=int(count))


__all__ = ["RobustAccuracy", "accuracy_sum_count", "make_robust_counts_fn", "masked_sum_count",
           "nested_robust_accuracy", "pgd_eval_accuracy", "ratio", "robust_accuracy_curve"]


def nested_robust_accuracy(success_fn: Callable[[Array, Array, Array], Array],
                           predict_fn: Callable[[Array], Array], x, y, *,
                           epsilons: Iterable[float], chunk: int = 256) -> dict[float, float]:
    """Robust accuracy at each radius, attacking only the points still robust at smaller radii.

    Radii run in ascending order; a point broken at a smaller radius stays broken at every larger
    one (its adversarial example lies inside every larger ball), so each radius attacks only the
    survivors: for robust models nearly every point, for weak models few. This is the cheap way to
    evaluate expensive attacks (PGD-200) on many radii; it can only report a robust accuracy lower
    than or equal to attacking each radius independently, and equal where the attack is monotone.

    Args:
      success_fn: ``(x (C, ...), y (C,), eps scalar) -> success (C,) bool``, typically a jitted
        attack; it always sees chunks of exactly ``chunk`` points (the last chunk is padded with
        repeats), so it compiles once.
      predict_fn: ``x (C, ...) -> predicted labels (C,)``, called on chunks of ``chunk`` points.
      x: (N, ...) images (numpy). y: (N,) labels.
      epsilons: radii (eps = 0 gives the clean accuracy).
      chunk: points per call.

    Returns:
      {eps: accuracy} over the N points, accuracy = share classified correctly clean and robust
      at every radius up to eps.
    """
    x, y = np.asarray(x), np.asarray(y)
    n = len(x)
    if n == 0:
        raise ValueError("nested_robust_accuracy needs at least one example.")
    radii = [float(e) for e in np.ravel(np.asarray(epsilons, np.float64))]
    bad = [e for e in radii if not np.isfinite(e) or e < 0]
    if bad:  # before any attack; a NaN would also leave the radii unsorted (wrong nesting)
        raise ValueError(f"epsilons must be finite and >= 0; got {bad} in {list(epsilons)}.")

    def padded(idx):
        return np.resize(idx, chunk)

    robust = np.zeros(n, bool)
    for i in range(0, n, chunk):
        part = np.arange(i, min(i + chunk, n))
        robust[part] = np.asarray(predict_fn(x[padded(part)]))[:len(part)] == y[part]
    out = {}
    for eps in sorted(radii):
        if eps > 0:
            idx = np.flatnonzero(robust)
            for i in range(0, len(idx), chunk):
                part = idx[i:i + chunk]
                success = np.asarray(success_fn(x[padded(part)], y[padded(part)],
                                                np.float32(eps)))[:len(part)]
                robust[part[success]] = False
        out[eps] = float(robust.mean())
    return out


class _ByOwner:
    """Wraps ``apply_fn`` for the compile cache: a bound method is keyed by its function and its
    owner compared by value, so ``model.apply`` of two equal Flax modules (built separately, with
    the same fields) shares one compilation; Python compares bound methods' owners by identity."""

    def __init__(self, fn: Callable):
        self.fn = fn
        owner = getattr(fn, "__self__", None)
        self.key = (fn.__func__, owner) if owner is not None and hasattr(fn, "__func__") else fn

    def __eq__(self, other):
        return isinstance(other, _ByOwner) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


@functools.cache
def _pgd_eval_fns(fn: _ByOwner, num_steps: int, step_size: float, unroll: bool):
    """(success, predict), jitted once per (model, settings) with the variables an argument."""
    apply_fn = fn.fn
    success = jax.jit(lambda v, xb, yb, e: pgd_boopathy_eval(
        functools.partial(apply_fn, v), xb, yb, jax.random.key(0), eps=e, num_steps=num_steps,
        step_size=step_size, unroll=unroll).success)
    predict = jax.jit(lambda v, xb: jnp.argmax(apply_fn(v, xb), -1))
    return success, predict


def pgd_eval_accuracy(apply_fn: Callable, variables, x, y, *, epsilons: Iterable[float],
                      num_steps: int = 200, step_size: float = 0.01, chunk: int = 250,
                      unroll: bool | None = None, mesh: Mesh | None = None) -> dict[str, float]:
    """Robust accuracy under Boopathy et al.'s evaluation PGD at nested radii.

    The attack is :func:`jaxadv.attacks.pgd_boopathy_eval` (untargeted l-inf PGD on CE, no random
    start, absolute step ``step_size``; methods.md 1.8), evaluated by
    :func:`nested_robust_accuracy` (each radius attacks only the points robust at the smaller
    ones). The attack is compiled once per ``(apply_fn, num_steps, step_size, unroll)`` with the
    variables an argument, so many checkpoints of one architecture share one compilation (also
    when each comes with its own, equal, Flax module: ``model.apply`` is keyed by the module's
    value).

    Args:
      apply_fn: ``(variables, x (B, ...)) -> logits (B, K)``, e.g. a Flax ``model.apply``; must
        be hashable (Flax modules and their bound methods are).
      variables: the model's variables.
      x: (N, ...) images in [0, 1] (numpy). y: (N,) int labels.
      epsilons: l-inf radii (0 gives the clean accuracy).
      num_steps: PGD steps (static). step_size: absolute step.
      chunk: points per call; each chunk is split over ``mesh``'s devices when it divides evenly
        (on CPU, the host devices of :func:`jaxadv.devices.use_host_devices`).
      unroll: unroll the step loop; None follows :func:`jaxadv.attacks.pgd` (a loop unless
        JAXADV_UNROLL_MAX_STEPS allows ``num_steps`` on CPU).
      mesh: device mesh (default: all devices on one ``"data"`` axis).

    Returns:
      ``{"<eps>": accuracy}`` with eps formatted by ``"%g"``.
    """
    if unroll is None:
        unroll = resolve_unroll(None, int(num_steps))
    success, predict = _pgd_eval_fns(_ByOwner(apply_fn), int(num_steps), float(step_size),
                                     bool(unroll))
    n = len(x)
    chunk = max(1, min(chunk, n))
    mesh = sharding_lib.mesh_for_batch(chunk, mesh)
    if mesh is not None:
        batch = sharding_lib.batch_sharding(mesh)
        put = lambda a: jax.device_put(a, batch)  # noqa: E731
        variables = sharding_lib.replicate(variables, mesh)  # e.g. restored onto one device
    else:
        put = jnp.asarray
    acc = nested_robust_accuracy(lambda xb, yb, e: success(variables, put(xb), put(yb), e),
                                 lambda xb: predict(variables, put(xb)), x, y,
                                 epsilons=epsilons, chunk=chunk)
    return {f"{e:g}": v for e, v in acc.items()}
