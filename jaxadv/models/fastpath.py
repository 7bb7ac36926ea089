"""Convolution and pooling lowerings used by every jaxadv model.

This module is the single switch point for faster lowerings (issue: CPU fast path). For now both
functions are the standard XLA lowerings.
"""

import jax
from jax import lax

from jaxadv.types import Array


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
    """Drop-in for ``lax.conv_general_dilated`` (same signature, same results)."""
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)


def max_pool(x: Array, *, window: int, stride: int, padding: str = "VALID") -> Array:
    """Max-pool over the spatial axes of (B, H, W, C)."""
    return lax.reduce_window(
        x, -jax.numpy.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), padding)
