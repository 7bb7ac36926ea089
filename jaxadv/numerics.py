"""Elementary functions whose gradients stay finite where the textbook form's do not.

The metrics enter training losses (the discrepancy terms of Boopathy et al.'s Int / Int2,
methods.md 1.3) and attack objectives, where a norm of a zero difference is a common point: the
first step of an attack without a random start, or a map that does not move. ``jnp.sqrt`` has an
infinite slope at 0, which the chain rule turns into NaN (inf * 0) and which then spreads to every
parameter of a training step.
"""

import jax.numpy as jnp

from jaxadv.types import Array


def safe_sqrt(x: Array) -> Array:
    """sqrt(x) for x >= 0, with gradient 0 at x = 0 (the subgradient of the l2 norm ||v||_2 at
    v = 0), elementwise and any shape."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def l2_norm(v: Array, axis=None, keepdims: bool = False) -> Array:
    """||v||_2 over ``axis`` (all axes by default) with a finite gradient at v = 0
    (:func:`safe_sqrt`)."""
    return safe_sqrt(jnp.sum(v * v, axis=axis, keepdims=keepdims))
