"""Pure functions of a bound model: ``logits_fn``, ``features_fn``, ``head_fn``, ``cam_fn``.

Attacks and attributions take functions, not modules (they never import ``jaxadv.models``). This
module closes a model's variables (eval mode: batch norm uses running statistics) over its methods.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from jaxadv.types import Array, Variables


@dataclasses.dataclass(frozen=True)
class ModelFns:
    """The functions of one model with fixed variables, all on images in [0, 1] NHWC.

    Attributes:
      logits: x (B, H, W, C) -> logits (B, K).
      features: x -> last feature map A (B, h, w, k).
      head: A -> logits (B, K).
      cam: A -> class activation maps (B, h, w, K).
    """

    logits: Callable[[Array], Array]
    features: Callable[[Array], Array]
    head: Callable[[Array], Array]
    cam: Callable[[Array], Array]


def model_fns(model: nn.Module, variables: Variables) -> ModelFns:
    """Binds ``variables`` to ``model`` in eval mode and returns its pure functions."""

    def logits(x):
        return model.apply(variables, x, train=False)

    def features(x):
        return model.apply(variables, x, train=False, method="features")

    def head(a):
        return model.apply(variables, a, method="head")

    def cam(a):
        return model.apply(variables, a, method="cam")

    return ModelFns(logits=logits, features=features, head=head, cam=cam)


def init_variables(model: nn.Module, key: Array, input_shape: tuple[int, ...]) -> Variables:
    """Initialises ``model`` for inputs of shape (B, H, W, C) (B may be 1)."""
    import jax.numpy as jnp

    return model.init(key, jnp.zeros(input_shape, jnp.float32), train=False)
