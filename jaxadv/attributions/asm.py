"""The adversarial saliency map (ASM) of JSMA and its promotion / suppression split.

Papernot et al., "The limitations of deep learning in adversarial settings", EuroS&P 2016 (JSMA);
used by Xu et al. (ICLR 2019, StrAttack) for the interpretability score, methods.md 2.3. On the
logits Z, for target class t:

    a_i = d Z_t / d x_i,     b_i = sum_{j != t} d Z_j / d x_i
    ASM_i = a_i |b_i|  if a_i > 0 and b_i < 0, else 0        (direction="increase", the JSMA map)
    ASM_i = |a_i| b_i  if a_i < 0 and b_i > 0, else 0        (direction="decrease")

``direction="both"`` takes the larger of the two (pixels worth increasing or decreasing).
The split of methods.md 2.3 [rec] separates the two ways a perturbation acts, for target t and
source (true) class t0:

    promotion   ASM+_i = max(d Z_t / d x_i, 0)     (raising x_i raises the target logit)
    suppression ASM-_i = max(-d Z_t0 / d x_i, 0)   (raising x_i lowers the source logit)

This module is independent of ``jaxadv.attacks`` (attributions never import attacks).
"""

import jax
import jax.numpy as jnp

from jaxadv.attributions import _common
from jaxadv.types import Array, LogitsFn

DIRECTIONS = ("increase", "decrease", "both")


def _target_and_rest(logits_fn, x, t):
    a = _common.input_gradient(logits_fn, x, t)
    total = jax.grad(lambda z: jnp.sum(logits_fn(z)))(x)
    return a, total - a


def adversarial_saliency_map(logits_fn: LogitsFn, x: Array, target, *,
                             direction: str = "increase") -> Array:
    """JSMA's adversarial saliency map for ``target`` (see module docstring).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) target classes t.
      direction: ``"increase"`` (JSMA), ``"decrease"`` or ``"both"``.

    Returns:
      (B, H, W, C), >= 0.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"Unknown direction {direction!r}; choose one of {DIRECTIONS}.")
    t = _common.prepare(logits_fn, x, target)
    a, b = _target_and_rest(logits_fn, x, t)
    inc = jnp.where((a > 0) & (b < 0), a * jnp.abs(b), 0.0)
    dec = jnp.where((a < 0) & (b > 0), jnp.abs(a) * b, 0.0)
    if direction == "increase":
        return inc
    if direction == "decrease":
        return dec
    return jnp.maximum(inc, dec)


def promotion_suppression_maps(logits_fn: LogitsFn, x: Array, source, target
                               ) -> tuple[Array, Array]:
    """(ASM+, ASM-): promotion of ``target`` and suppression of ``source`` (module docstring).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      source: int or (B,) true classes t0.
      target: int or (B,) target classes t.

    Returns:
      Two (B, H, W, C) maps, >= 0.
    """
    t = _common.prepare(logits_fn, x, target)
    s = _common.as_target(source, x.shape[0], _common.num_classes(logits_fn, x), "source")
    promo = jax.nn.relu(_common.input_gradient(logits_fn, x, t))
    supp = jax.nn.relu(-_common.input_gradient(logits_fn, x, s))
    return promo, supp
