"""Gradient maps: vanilla gradient (saliency) and gradient x input.

Saliency: Simonyan, Vedaldi & Zisserman, "Deep inside convolutional networks", ICLR-W 2014.
Gradient x input: Shrikumar et al., "Not just a black box", 2016 (Captum ``InputXGradient``).

Both are taken on the **logit** of the target class (pass a log-softmax ``logits_fn`` for the
log-probability). They are differentiable in x and in the parameters ``logits_fn`` closes over
(second derivatives of a ReLU network are zero almost everywhere: use softplus where that matters).
"""

import jax.numpy as jnp

from jaxadv.attributions import _common
from jaxadv.types import Array, LogitsFn


def saliency(logits_fn: LogitsFn, x: Array, target, *, absolute: bool = False) -> Array:
    """Vanilla gradient d f_target(x) / dx.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) inputs (any (B, ...) shape ``logits_fn`` accepts).
      target: int or (B,) int class indices.
      absolute: return |gradient| (Captum ``Saliency``'s default ``abs=True``).

    Returns:
      (B, H, W, C), shaped like x.
    """
    t = _common.prepare(logits_fn, x, target)
    g = _common.input_gradient(logits_fn, x, t)
    return jnp.abs(g) if absolute else g


def gradient_x_input(logits_fn: LogitsFn, x: Array, target) -> Array:
    """x * d f_target(x) / dx (Captum ``InputXGradient``). Shape like x."""
    t = _common.prepare(logits_fn, x, target)
    return x * _common.input_gradient(logits_fn, x, t)
