"""Type aliases shared across jaxadv."""

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
PRNGKey = jax.Array  # a typed key from ``jax.random.key``
PyTree = Any
Params = Any
Variables = Any

LogitsFn = Callable[[Array], Array]
"""Maps images (B, H, W, C) in pixel units to logits (B, K); parameters are closed over."""

FeaturesFn = Callable[[Array], Array]
"""Maps images (B, H, W, C) to the last feature map A (B, h, w, k)."""

HeadFn = Callable[[Array], Array]
"""Maps a feature map A (B, h, w, k) to logits (B, K)."""

LossFn = Callable[[Array, Array], Array]
"""Per-example loss ``(logits (B, K), labels (B,)) -> (B,)``."""
