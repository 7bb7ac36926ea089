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
        cam = apply_fn(variables, apply_fn(variables, x, method="features"), method="cam")
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
