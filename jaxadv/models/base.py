"""The interface every jaxadv classifier implements: ``features -> head``, so CAM and Grad-CAM work.

A model is a Flax module with these methods (all take images in [0, 1], NHWC; input normalisation
lives inside ``features``):

* ``features(x, train=False) -> A``        the last feature map, (B, h, w, k)
* ``head(A) -> logits``                    (B, K)
* ``cam(A) -> I``                          class activation maps, (B, h, w, K); exact for GAP heads
* ``__call__(x, train=False) -> logits``   ``head(features(x))``
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxadv.models.head import GAPHead
from jaxadv.types import Array


class GAPClassifier(nn.Module):
    """Base class: subclasses define ``setup`` (which must create ``self.head_layer``) and
    ``features``."""

    num_classes: int = 10

    def features(self, x: Array, train: bool = False) -> Array:
        raise NotImplementedError

    def head(self, a: Array) -> Array:
        """Feature map (B, h, w, k) -> logits (B, K)."""
        return self.head_layer(a)

    def cam(self, a: Array) -> Array:
        """Feature map (B, h, w, k) -> CAM (B, h, w, K); ``mean_{h,w}(cam) == head(a)``."""
        return self.head_layer(a, per_location=True)

    def logits_and_cam(self, x: Array, train: bool = False) -> tuple[Array, Array]:
        """Input (B, H, W, C) -> (logits (B, K), CAM (B, h, w, K)) in one pass; where the model
        composes its last convolution with the head (:meth:`folded_cam`), logits are the CAM's
        mean over positions (equal to ``head(features(x))`` for a GAP head, up to rounding)."""
        cam = self.folded_cam(x, train=train)
        if cam is not None:
            return jnp.mean(cam, axis=(1, 2)), cam
        feats = self.features(x, train=train)
        return self.head(feats), self.cam(feats)

    def folded_cam(self, x: Array, train: bool = False) -> Array | None:
        """The CAM (B, h, w, K) computed without the (B, h, w, k) feature map, or None (the
        default). A model whose feature map is a convolution followed only by the GAP head
        composes that convolution's kernel with the head's weights (``layers.conv_then_dense``):
        K output channels instead of k."""
        del x, train
        return None

    def pooled_features(self, x: Array, train: bool = False) -> Array | None:
        """``mean_{h,w} features(x)`` (B, k) computed without the feature map, or None (the
        default) where the model has no such shortcut. Models whose feature map is a convolution
        followed only by the GAP head return ``layers.conv_mean(...)`` here, and ``__call__`` then
        computes the logits from it (same values to float32 rounding, far fewer multiply-adds)."""
        del x, train
        return None

    def __call__(self, x: Array, train: bool = False) -> Array:
        pooled = self.pooled_features(x, train=train)
        if pooled is not None:
            return self.head_layer(pooled[:, None, None, :])
        return self.head(self.features(x, train=train))

    def _make_head(self, *, use_bias: bool = False, kernel_init=None) -> GAPHead:
        kwargs = {} if kernel_init is None else {"kernel_init": kernel_init}
        return GAPHead(self.num_classes, use_bias=use_bias, name="head", **kwargs)
