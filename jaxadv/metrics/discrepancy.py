"""Interpretation discrepancy between clean and perturbed inputs (Boopathy et al., ICML 2020;
methods.md 1.3).

Maps of all classes are arrays (B, ..., K): class axis last, every axis between the batch and the
class axis is spatial (CAM (B, h, w, K); IG maps stacked per class (B, H, W, C, K)). With
dI_c = I(x', c) - I(x, c):

| measure | per class d_c | combined |
|---|---|---|
| ``norm="l1"`` | ||dI_c||_1 | |
| ``norm="l2sq"`` | sum (dI_c)^2 | |
| ``norm="l2"`` | ||dI_c||_2 | |
| ``normalize=True`` | d_c / (max I(x, c) - min I(x, c)) (range of the clean map) | |
| ``classes="one"`` | | d_t |
| ``classes="two"`` | | (d_t + d_t') / 2 (the "proper" measure of Prop. 1) |
| ``classes="all"`` | | mean_c d_c |

A clean map of zero range (constant; a ReLU channel that is all zero on x, say) has no range to
normalise by: its normalised d_c is 0 where the map did not change and NaN (undefined) where it
did, rather than d_c divided by a tiny floor (which gave values around 1e8-1e12 that swamped
every average). ``classes="all"``, :func:`representation_discrepancy` and
:func:`defined_mean` average over the defined entries only; ``"one"`` and ``"two"`` are NaN where
a picked class's entry is.

Boopathy et al.'s evaluation uses ``normalize=True`` with ``norm="l1"`` or ``"l2"``; their ISA
loss uses the raw ``l1`` / ``l2sq``. :func:`label_free_discrepancy` is the training discrepancy D~
of Int / Int2 and :func:`representation_discrepancy` the ``rep`` measure. All return (B,).
"""

import jax
import jax.numpy as jnp

from jaxadv import numerics
from jaxadv.attributions import _common
from jaxadv.types import Array

NORMS = ("l1", "l2sq", "l2")
CLASS_SETS = ("one", "two", "all")


def _check_pair(clean: Array, adv: Array) -> None:
    if clean.shape != adv.shape:
        raise ValueError(f"clean and perturbed maps must have the same shape; got {clean.shape} "
                         f"and {adv.shape}.")
    if clean.ndim < 2:
        raise ValueError(f"maps must be batched (B, ...); got shape {clean.shape}.")


def _norm(d: Array, axes, norm: str) -> Array:
    if norm == "l1":
        return jnp.sum(jnp.abs(d), axis=axes)
    if norm == "l2sq":
        return jnp.sum(d * d, axis=axes)
    if norm == "l2":
        return numerics.l2_norm(d, axis=axes)  # gradient 0, not NaN, where the maps agree
    raise ValueError(f"Unknown norm {norm!r}; choose one of {NORMS}.")


def _range(a: Array, axes) -> Array:
    return jnp.max(a, axis=axes) - jnp.min(a, axis=axes)


def _normalized(d: Array, clean: Array, axes, eps: float) -> Array:
    """d / range(clean) where the range passes ``eps``; 0 where it does not and d is 0 (nothing
    moved); NaN where it does not and d is not (undefined). Gradients stay finite."""
    rng = _range(clean, axes)
    ok = rng > eps
    ratio = d / jnp.where(ok, rng, 1.0)
    return jnp.where(ok, ratio, jnp.where(d == 0, jnp.zeros_like(d), jnp.full_like(d, jnp.nan)))


def defined_mean(d: Array, axis: int = -1) -> Array:
    """Mean of ``d`` along ``axis`` over its non-NaN entries (NaN where there are none): how the
    range-normalised discrepancies of several maps are averaged (module docstring)."""
    ok = ~jnp.isnan(d)
    total = jnp.sum(jnp.where(ok, d, 0), axis=axis)
    count = jnp.sum(ok, axis=axis).astype(total.dtype)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def map_discrepancy(clean: Array, adv: Array, *, norm: str = "l1", normalize: bool = False,
                    eps: float = 1e-12) -> Array:
    """Discrepancy of one map per example: clean and adv (B, ...) -> (B,)."""
    _check_pair(clean, adv)
    axes = tuple(range(1, clean.ndim))
    d = _norm(adv - clean, axes, norm)
    if normalize:
        d = _normalized(d, clean, axes, eps)
    return d


def class_discrepancies(maps_clean: Array, maps_adv: Array, *, norm: str = "l1",
                        normalize: bool = False, eps: float = 1e-12) -> Array:
    """Per-class discrepancies d_c: maps (B, ..., K) -> (B, K)."""
    _check_pair(maps_clean, maps_adv)
    if maps_clean.ndim < 3:
        raise ValueError(f"class maps must be (B, ..., K) with spatial axes; got shape "
                         f"{maps_clean.shape}.")
    axes = tuple(range(1, maps_clean.ndim - 1))
    d = _norm(maps_adv - maps_clean, axes, norm)
    if normalize:
        d = _normalized(d, maps_clean, axes, eps)
    return d


def _pick(d: Array, labels, name: str) -> Array:
    """d[b, labels[b]] (B,) for d (B, K); ``labels`` an int or (B,) integer class indices, checked
    against [0, K) where concrete (:func:`jaxadv.attributions._common.as_target`)."""
    lab = _common.as_target(labels, d.shape[0], d.shape[-1], name)
    return jnp.take_along_axis(d, lab[:, None], axis=-1)[:, 0]


def discrepancy(maps_clean: Array, maps_adv: Array, labels=None, targets=None, *,
                classes: str = "two", norm: str = "l1", normalize: bool = False) -> Array:
    """1-, 2- or all-class discrepancy (module table) between class maps (B, ..., K).

    Args:
      maps_clean: I(x, .) (B, ..., K).
      maps_adv: I(x', .) (B, ..., K).
      labels: (B,) true classes t (needed for "one" and "two").
      targets: (B,) target classes t' (needed for "two").
      classes: "one", "two" or "all".
      norm: "l1", "l2sq" or "l2".
      normalize: divide each class's discrepancy by the range of its clean map (a constant clean
        map: module docstring).

    Returns:
      (B,).
    """
    if classes not in CLASS_SETS:
        raise ValueError(f"Unknown class set {classes!r}; choose one of {CLASS_SETS}.")
    d = class_discrepancies(maps_clean, maps_adv, norm=norm, normalize=normalize)
    if classes == "all":
        return defined_mean(d) if normalize else jnp.mean(d, axis=-1)
    if labels is None:
        raise ValueError(f"classes={classes!r} needs labels.")
    one = _pick(d, labels, "labels")
    if classes == "one":
        return one
    if targets is None:
        raise ValueError("classes='two' needs targets.")
    return 0.5 * (one + _pick(d, targets, "targets"))


def label_free_discrepancy(maps_clean: Array, maps_adv: Array, logits_adv: Array,
                           labels) -> Array:
    """Boopathy et al.'s training discrepancy D~ (B,) (methods.md 1.3):

        D~(x, x') = ||dI_y||_1 + sum_{i != y} p^_i(x') ||dI_i||_1,
        p^_i = softmax(f(x'))_i / sum_{j != y} softmax(f(x'))_j

    Gradients flow through p^ (no stop_gradient) and there is no 1/2, as in the official code.

    Args:
      maps_clean, maps_adv: (B, ..., K) class maps of x and x'.
      logits_adv: (B, K) logits f(x').
      labels: (B,) true classes y.
    """
    d = class_discrepancies(maps_clean, maps_adv, norm="l1")
    k = d.shape[-1]
    if logits_adv.shape != d.shape:
        raise ValueError(f"logits_adv must have shape {d.shape}; got {logits_adv.shape}.")
    lab = _common.as_target(labels, d.shape[0], k, "labels")
    onehot = jax.nn.one_hot(lab, k, dtype=d.dtype)
    true_term = jnp.sum(d * onehot, axis=-1)
    if k == 1:  # no other class
        return true_term
    # p^ as a softmax over the other classes only (the true logit masked out): the same value as
    # softmax / (1 - softmax_y), but without the underflow of the other classes' probabilities
    # that makes that quotient 0 / 0 (NaN gradients, then a wrong value) once f(x') is confident.
    p_hat = jax.nn.softmax(jnp.where(onehot > 0, -jnp.inf, logits_adv), axis=-1)
    return true_term + jnp.sum(d * p_hat, axis=-1)


def representation_discrepancy(rep_clean: Array, rep_adv: Array, *, normalize: bool = False,
                               eps: float = 1e-12) -> Array:
    """||A(x') - A(x)||_1 of feature maps (B, h, w, k) -> (B,); with ``normalize`` the per-channel
    l1 divided by the channel's clean range, averaged over channels (methods.md 1.3). A channel
    constant on x (a dead ReLU channel) counts 0 if it stays so and is left out of the mean if
    it moves (no range to normalise by; module docstring); the raw l1 counts it."""
    if not normalize:
        return map_discrepancy(rep_clean, rep_adv, norm="l1")
    return defined_mean(class_discrepancies(rep_clean, rep_adv, norm="l1", normalize=True,
                                            eps=eps))


def margin_lower_bound(logits_clean: Array, labels, targets) -> Array:
    """(f_t(x) - f_t'(x)) / 2 (B,): for GAP-CAM networks, every x' with f_t'(x') >= f_t(x')
    satisfies two-class l1 discrepancy / (h w) >= this bound (methods.md 1.4)."""
    ft = _pick(logits_clean, labels, "labels")
    ftp = _pick(logits_clean, targets, "targets")
    return 0.5 * (ft - ftp)
