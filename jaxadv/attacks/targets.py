"""Target classes for targeted attacks: random, least likely, all others, highest-scoring others.

All functions are pure and jit-compatible; labels are int32 (B,), logits (B, K).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.types import Array


def _check_num_classes(num_classes: int) -> None:
    if int(num_classes) < 2:
        raise ValueError(f"A targeted attack needs num_classes >= 2; got {num_classes}.")


def random_targets(key: jax.Array, y: Array, num_classes: int) -> Array:
    """A target drawn uniformly among the K - 1 classes other than the label, (B,) int32.

    Args:
      key: a typed PRNG key.
      y: (B,) int labels.
      num_classes: K (static).
    """
    _check_num_classes(num_classes)
    y = jnp.asarray(y).astype(jnp.int32)
    offset = jax.random.randint(key, y.shape, 1, num_classes, dtype=jnp.int32)
    return (y + offset) % num_classes


def least_likely_targets(logits: Array) -> Array:
    """The least likely class per example (Kurakin et al. 2017, "iterative least-likely class"),
    ``argmin_k logits``, (B, K) -> (B,) int32."""
    return jnp.argmin(logits, axis=-1).astype(jnp.int32)


def all_other_targets(y: Array, num_classes: int) -> Array:
    """Every class other than the label, (K - 1, B) int32: row j is ``(y + j + 1) mod K``.

    Row order is by offset from the label, the same for every input; use :func:`top_k_targets`
    to order targets by the model's scores instead (as APGD-T does).
    """
    _check_num_classes(num_classes)
    y = jnp.asarray(y).astype(jnp.int32)
    offsets = jnp.arange(1, num_classes, dtype=jnp.int32)
    return (y[None, :] + offsets[:, None]) % num_classes


def top_k_targets(logits: Array, y: Array, k: int) -> Array:
    """The k highest-scoring classes other than the label, best first, (k, B) int32 (AutoAttack's
    APGD-T target choice, Croce & Hein 2020)."""
    num_classes = logits.shape[-1]
    if not 1 <= k <= num_classes - 1:
        raise ValueError(f"k must lie in [1, {num_classes - 1}] for {num_classes} classes; "
                         f"got {k}.")
    masked = jnp.where(jax.nn.one_hot(y, num_classes, dtype=jnp.bool_), -jnp.inf, logits)
    return jnp.argsort(-masked, axis=-1)[:, :k].T.astype(jnp.int32)


TARGET_CHOICES = ("random", "least_likely")


def resolve_targets(targets, *, key: jax.Array, y: Array, logits_clean_fn) -> Array | None:
    """Turns the ``targets`` argument of an attack into (B,) labels or None (untargeted).

    Args:
      targets: None, a (B,) int array, ``"random"`` or ``"least_likely"``.
      key: used by ``"random"``.
      y: (B,) labels.
      logits_clean_fn: a thunk returning the clean logits (B, K); called only where needed.
    """
    if targets is None:
        return None
    if isinstance(targets, str):
        if targets == "random":
            num_classes = jax.eval_shape(logits_clean_fn).shape[-1]
            return random_targets(key, y, num_classes)
        if targets == "least_likely":
            return least_likely_targets(logits_clean_fn())
        raise ValueError(f"Unknown target choice {targets!r}; pass (B,) target labels or one of "
                         f"{TARGET_CHOICES} (all other classes: jaxadv.attacks.sweep."
                         "attack_over_targets).")
    t = jnp.asarray(targets)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"targets must be integer class labels; got dtype {t.dtype}.")
    if t.shape != y.shape:
        raise ValueError(f"targets must have shape {y.shape} to match the labels; got {t.shape}.")
    return t.astype(jnp.int32)


def check_targets_differ(targets, y) -> None:
    """ValueError where concrete, given targets (B,) or (T, B) equal the labels y (B,): a targeted
    attack towards an example's own label 'succeeds' at distance 0. (Call after the range check;
    the choices such as ``"random"`` are not inspected.)"""
    if (targets is None or isinstance(targets, str) or isinstance(targets, jax.core.Tracer)
            or isinstance(y, jax.core.Tracer)):
        return
    same = np.asarray(targets) == np.asarray(y)
    if same.any():
        rows = np.flatnonzero(same.reshape(-1, same.shape[-1]).any(axis=0))
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise ValueError(f"targets equal the labels for examples [{shown}]; a targeted attack "
                         f"towards an example's own class succeeds at distance 0. Choose other "
                         f"classes (e.g. targets='random').")


__all__ = ["TARGET_CHOICES", "all_other_targets", "check_targets_differ", "least_likely_targets",
           "random_targets", "resolve_targets", "top_k_targets"]
