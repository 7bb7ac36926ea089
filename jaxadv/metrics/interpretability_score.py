"""The interpretability score IS and its promotion / suppression split IS+ / IS- (Xu et al., ICLR
2019, StrAttack; methods.md 2.3).

    B_nu = 1[S > nu],    IS(delta) = ||B_nu * delta||_2 / ||delta||_2  in [0, 1]

the share of the perturbation's energy that falls on salient entries of a saliency map S. With S the
adversarial saliency map ASM of the target class this is the paper's IS; with the split maps ASM+
(promotion of the target) and ASM- (suppression of the source class) it gives IS+ and IS-
(``jaxadv.attributions.asm``); with a CAM mask it is the CAM energy share of methods.md 2.4.

nu is a per-example percentile of S (``percentile``, default 90: the top 10% of entries); the
methods spec leaves the paper's value to be confirmed [rec], so it is an argument. ``threshold=``
gives an absolute nu instead. A zero perturbation scores 0.
"""

from typing import NamedTuple

import jax.numpy as jnp

from jaxadv import numerics, validation
from jaxadv.attributions import _common
from jaxadv.attributions.asm import adversarial_saliency_map, promotion_suppression_maps
from jaxadv.types import Array, LogitsFn


def saliency_mask(saliency_map: Array, *, percentile: float = 90.0,
                  threshold: float | None = None) -> Array:
    """B_nu = 1[S > nu] per example, nu the ``percentile`` of each example's S (or ``threshold``)."""
    _common.check_batch(saliency_map, "saliency_map")
    validation.check_finite(saliency_map, "saliency_map", fix="its percentile, and so the mask, "
                            "would be NaN; explain finite inputs only.")
    if threshold is not None:
        return saliency_map > threshold
    validation.check_range("percentile", percentile, 0.0, 100.0)
    flat = saliency_map.reshape(saliency_map.shape[0], -1)
    nu = jnp.percentile(flat, percentile, axis=-1, keepdims=True)
    return (flat > nu).reshape(saliency_map.shape)


def energy_share(delta: Array, mask: Array) -> Array:
    """||mask * delta||_2 / ||delta||_2 per example (B,). ``mask`` (bool or float) is shaped like
    delta or like its pixels (B, H, W) for (B, H, W, C) perturbations."""
    _common.check_batch(delta, "delta")
    validation.check_finite(delta, "delta", fix="pass the finite perturbation x' - x.")
    m = jnp.asarray(mask)
    if m.shape != delta.shape:
        if delta.ndim == 4 and m.shape == delta.shape[:3]:
            m = m[..., None]
        else:
            raise ValueError(f"mask must be shaped like delta {delta.shape} or like its pixels "
                             f"{delta.shape[:3]}; got {m.shape}.")
    m = jnp.broadcast_to(m.astype(delta.dtype), delta.shape)
    flat = delta.reshape(delta.shape[0], -1)
    # Finite gradients where the masked or the whole perturbation is zero (numerics.l2_norm).
    num = numerics.l2_norm(m.reshape(flat.shape) * flat, axis=-1)
    den = numerics.l2_norm(flat, axis=-1)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def interpretability_score(delta: Array, saliency_map: Array, *, percentile: float = 90.0,
                           threshold: float | None = None) -> Array:
    """IS(delta) = ||B_nu * delta||_2 / ||delta||_2 (B,) for a given saliency map (shaped like
    delta)."""
    if saliency_map.shape != delta.shape:
        raise ValueError(f"saliency_map must be shaped like delta {delta.shape}; got "
                         f"{saliency_map.shape}.")
    return energy_share(delta, saliency_mask(saliency_map, percentile=percentile,
                                             threshold=threshold))


class InterpretabilityScores(NamedTuple):
    """IS (ASM of the target), IS+ (promotion map), IS- (suppression map); each (B,)."""

    score: Array
    promotion: Array
    suppression: Array


def interpretability_scores(logits_fn: LogitsFn, x: Array, delta: Array, source, target, *,
                            percentile: float = 90.0,
                            direction: str = "increase") -> InterpretabilityScores:
    """IS, IS+ and IS- of a perturbation ``delta`` of x for the attack source -> target.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images (the maps are taken at x).
      delta: (B, H, W, C) perturbation x' - x.
      source: int or (B,) true classes t0.
      target: int or (B,) target classes t.
      percentile: nu as a per-example percentile of each map.
      direction: ASM direction (``attributions.adversarial_saliency_map``).

    Returns:
      InterpretabilityScores(score, promotion, suppression).
    """
    if delta.shape != x.shape:
        raise ValueError(f"delta must be shaped like x {x.shape}; got {delta.shape}.")
    asm = adversarial_saliency_map(logits_fn, x, target, direction=direction)
    promo, supp = promotion_suppression_maps(logits_fn, x, source, target)
    return InterpretabilityScores(
        interpretability_score(delta, asm, percentile=percentile),
        interpretability_score(delta, promo, percentile=percentile),
        interpretability_score(delta, supp, percentile=percentile))
