"""Attacks on interpretations: move a map while the attacker keeps (or ignores) the label.

The attack against interpretability (AAI) of Boopathy et al. (ICML 2020, methods.md 1.8), after
Ghorbani et al. (AAAI 2019): with I(x, y) the true-class map (CAM by default) and T the positions of
its k largest values on the clean image, maximise

    L(x') = - sum_{i in T} I(x', y)_i

by signed-gradient steps of ``step_size`` from a uniform start in B_inf(x, eps), projected onto the
ball and [0, 1] (paper: k = 8, 200 steps of 0.01). Robustness of the interpretation is the Kendall
tau between I(x, y) and I(x', y), averaged over the images whose predicted label did not change.

Maps are passed as functions ``map_fn(x (B, ...), y (B,)) -> (B, ...)`` so any differentiable
attribution of :mod:`jaxadv.attributions` (CAM, Grad-CAM, IG) can be attacked.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.gradient import pgd_objective
from jaxadv.metrics.rank import kendall_tau
from jaxadv.types import Array, LogitsFn

MapFn = Callable[[Array, Array], Array]


def cam_map_fn(apply_fn, variables) -> MapFn:
    """``map_fn(x, y) -> (B, h, w)``: the CAM of class y of a GAP-head model (no upsampling)."""

    def map_fn(x, y):
        _, cam = apply_fn(variables, x, method="logits_and_cam")
        return jnp.take_along_axis(cam, y[:, None, None, None], axis=-1)[..., 0]

    return map_fn


def top_k_mask(maps: Array, k: int) -> Array:
    """(B, ...) float mask of the k largest entries of each map (ties broken by position)."""
    flat = maps.reshape(maps.shape[0], -1)
    if not 1 <= k <= flat.shape[1]:
        raise ValueError(f"k must lie in [1, {flat.shape[1]}] (the map size); got {k}.")
    idx = jax.lax.top_k(flat, k)[1]
    mask = jnp.zeros_like(flat).at[jnp.arange(flat.shape[0])[:, None], idx].set(1.0)
    return mask.reshape(maps.shape)


def top_k_attack(map_fn: MapFn, x: Array, y: Array, key: jax.Array, *, eps, k: int = 8,
                 step_size=0.01, num_steps: int = 200, random_start: bool = True,
                 bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """AAI: lower the clean map's top-k mass (module docstring). Returns the iterate with the
    largest objective per example; ``success`` is all False (no label criterion)."""
    y = jnp.asarray(y)
    clean = jax.lax.stop_gradient(map_fn(x, y))
    mask = top_k_mask(clean, k)

    def objective(x_adv):
        m = map_fn(x_adv, y)
        return -jnp.sum((m * mask).reshape(m.shape[0], -1), axis=-1)

    return pgd_objective(objective, x, key, eps=eps, step_size=step_size, num_steps=num_steps,
                         random_start=random_start, step_rule="sign", bounds=bounds)


def region_mass(maps: Array, region: Array) -> Array:
    """Share of a map's positive mass inside a region: sum(R relu(I)) / sum(relu(I)) (B,).

    Args:
      maps: (B, ...) maps.
      region: (B, ...) or (...) weights in [0, 1] (1 inside the region), broadcastable to maps.
    """
    pos = jax.nn.relu(maps).reshape(maps.shape[0], -1)
    reg = jnp.broadcast_to(jnp.asarray(region, maps.dtype), maps.shape).reshape(pos.shape)
    return jnp.sum(pos * reg, -1) / jnp.maximum(jnp.sum(pos, -1), 1e-12)


def map_manipulation_attack(map_fn: MapFn, logits_fn: LogitsFn, x: Array, y: Array,
                            region: Array, key: jax.Array, *, eps, step_size=0.01,
                            num_steps: int = 200, label_weight=1.0, random_start: bool = True,
                            bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """Targeted map manipulation: move the map I(x', y) into ``region`` while keeping the label.

    After Ghorbani et al. (AAAI 2019) and Dombrowski et al. (NeurIPS 2019): maximise

        region_mass(I(x', y), R) - label_weight * CE(f(x'), y)

    by signed-gradient steps in B_inf(x, eps) ∩ box. The returned example is the iterate with the
    largest region mass among those still classified as y (``success``: some iterate kept the
    label; where none did, the iterate of largest region mass); ``loss`` is its region mass. The
    steps follow the whole objective; the choice of iterate looks at the region mass alone (the
    cross-entropy only steers). The cross-entropy weight is the project's choice [rec].

    Args:
      map_fn: ``(x, y) -> (B, ...)`` differentiable map (CAM: :func:`cam_map_fn`).
      logits_fn: images -> logits (B, K).
      x: (B, ...) images. y: (B,) labels (the class whose map is moved and must be kept).
      region: target region, (B, ...) or one (...) for all, shaped like the map.
      key: typed PRNG key (random start).
      eps, step_size, num_steps, random_start, bounds: as :func:`top_k_attack`.
      label_weight: weight of the cross-entropy that keeps the label (>= 0).
    """
    y = jnp.asarray(y)

    def objective(x_adv):
        logits = logits_fn(x_adv)
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[:, None], -1)[:, 0]
        # Value: the region mass (what the best iterate is chosen by); gradient: that of
        # region mass - label_weight * CE (the stop_gradient term cancels CE's value only).
        kept_ce = label_weight * ce
        obj = region_mass(map_fn(x_adv, y), region) - kept_ce + jax.lax.stop_gradient(kept_ce)
        return obj, jnp.argmax(logits, -1) == y

    return pgd_objective(objective, x, key, eps=eps, step_size=step_size, num_steps=num_steps,
                         random_start=random_start, step_rule="sign", bounds=bounds,
                         has_aux=True)


class MapRobustness(NamedTuple):
    """Per-example results of :func:`map_robustness` (all (B,))."""

    kendall_tau: Array
    label_kept: Array
    top_k_kept: Array  # share of the clean top-k positions still in the adversarial top-k


def map_robustness(map_fn: MapFn, logits_fn: LogitsFn, x: Array, y: Array, x_adv: Array, *,
                   k: int = 8) -> MapRobustness:
    """Kendall tau between I(x, y) and I(x', y), whether the prediction on x' still equals the
    one on x, and the top-k intersection (divided by k)."""
    clean, adv = map_fn(x, y), map_fn(x_adv, y)
    kept = jnp.argmax(logits_fn(x_adv), -1) == jnp.argmax(logits_fn(x), -1)
    inter = jnp.sum((top_k_mask(clean, k) * top_k_mask(adv, k)).reshape(x.shape[0], -1), -1) / k
    return MapRobustness(kendall_tau(clean, adv), kept, inter)


def mean_over_kept(values: Array, kept: Array) -> Array:
    """Mean of ``values`` over the examples whose label was kept (NaN where none was)."""
    kept = kept.astype(values.dtype)
    return jnp.sum(jnp.where(kept > 0, values, 0.0)) / jnp.sum(kept)
