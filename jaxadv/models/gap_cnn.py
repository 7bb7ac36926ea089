"""The GAP-head CNNs of Boopathy et al. (ICML 2020), exactly as in methods.md section 1.1.

Every conv except the first applies the activation to its *input* (pre-activation style); there is no
activation between the last conv and global average pooling, no batch norm and no dropout; the head is
a bias-free linear map, so CAM is exact. Initialisation: conv W ~ N(0, 1/(k*k*C_in)), bias 0; head
W ~ N(0, 1/C).
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxadv.models import layers
from jaxadv.models.base import GAPClassifier
from jaxadv.types import Array


class SmallGAP(GAPClassifier):
    """Boopathy et al.'s ``smallgap``: conv16 4x4 s2 -> [act] conv32 4x4 s2 -> [act] conv100 7x7 s1
    -> GAP -> linear. CAM map 7x7x100 on 28x28 inputs, 8x8x100 on 32x32.

    Attributes:
      num_classes: K.
      activation: 'relu' (as trained) or 'softplus' (for IG, as in section 1.2).
      widths: conv widths (16, 32, 100).
      mean, std: optional input normalisation (None for the official checkpoints).
    """

    activation: str = "relu"
    widths: Sequence[int] = (16, 32, 100)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def setup(self):
        init = layers.fan_in_normal()
        w1, w2, w3 = self.widths
        self.normalize = layers.Normalize(self.mean, self.std)
        self.conv1 = layers.conv(w1, 4, strides=2, kernel_init=init)
        self.conv2 = layers.conv(w2, 4, strides=2, kernel_init=init)
        self.conv3 = layers.conv(w3, 7, strides=1, kernel_init=init)
        self.head_layer = self._make_head()

    def _conv3_input(self, x: Array) -> Array:
        act = layers.get_activation(self.activation)
        h = self.conv1(self.normalize(x))
        return act(self.conv2(act(h)))

    def features(self, x: Array, train: bool = False) -> Array:
        return self.conv3(self._conv3_input(x))

    def folded_cam(self, x: Array, train: bool = False) -> Array | None:
        # conv3 feeds the GAP head directly: CAM = conv(h, W3 @ W_head) + b3 @ W_head.
        if not layers.conv_mean_available(self.conv3):
            return None
        return layers.conv_then_dense(self.conv3, self._conv3_input(x), self.head_layer)

    def pooled_features(self, x: Array, train: bool = False) -> Array | None:
        # conv3 feeds the GAP head directly (no activation): its mean over positions needs no map.
        if not layers.conv_mean_available(self.conv3, x.shape[0]):
            return None
        return layers.conv_mean(self.conv3, self._conv3_input(x))


class PoolGAP(GAPClassifier):
    """Boopathy et al.'s ``pool``: conv32 5x5 -> maxpool 2 -> [act] conv64 5x5 -> maxpool 2 -> GAP ->
    linear. CAM map 7x7x64 on 28x28 inputs."""

    activation: str = "relu"
    widths: Sequence[int] = (32, 64)
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def setup(self):
        init = layers.fan_in_normal()
        self.normalize = layers.Normalize(self.mean, self.std)
        self.conv1 = layers.conv(self.widths[0], 5, kernel_init=init)
        self.conv2 = layers.conv(self.widths[1], 5, kernel_init=init)
        self.head_layer = self._make_head()

    def features(self, x: Array, train: bool = False) -> Array:
        act = layers.get_activation(self.activation)
        h = layers.max_pool(self.conv1(self.normalize(x)), 2)
        h = self.conv2(act(h))
        return layers.max_pool(h, 2)


def _option_a_shortcut(x: Array, out_channels: int, stride: int) -> Array:
    """Parameter-free shortcut: average-pool by the stride, zero-pad channels symmetrically."""
    if stride > 1:
        b, h, w, c = x.shape
        x = x.reshape(b, h // stride, stride, w // stride, stride, c).mean(axis=(2, 4))
    extra = out_channels - x.shape[-1]
    if extra > 0:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
    return x


class _WResNetBody(nn.Module):
    activation: str
    stage_widths: Sequence[int]
    blocks_per_stage: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = layers.fan_in_normal()
        act = layers.get_activation(self.activation)
        h = layers.conv(self.stage_widths[0], 3, kernel_init=init, name="stem")(x)
        for s, width in enumerate(self.stage_widths):
            for b in range(self.blocks_per_stage):
                stride = 2 if (s > 0 and b == 0) else 1
                r = layers.conv(width, 3, strides=stride, kernel_init=init,
                                name=f"stage{s}_block{b}_conv0")(act(h))
                r = layers.conv(width, 3, kernel_init=init, name=f"stage{s}_block{b}_conv1")(act(r))
                h = r + _option_a_shortcut(h, width, stride)
        return h


class BoopathyWResNet(GAPClassifier):
    """Boopathy et al.'s ``wresnet``: conv16 3x3, then 15 pre-activation residual blocks (two 3x3 convs
    each; widths 16x5 | 32x5 | 64x5; the first block of stages 2 and 3 has stride 2), option-A
    shortcuts, no batch norm, GAP head. 31 convs; CAM map 8x8x64 on CIFAR-10."""

    activation: str = "relu"
    stage_widths: Sequence[int] = (16, 32, 64)
    blocks_per_stage: int = 5
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def setup(self):
        self.normalize = layers.Normalize(self.mean, self.std)
        self.body = _WResNetBody(self.activation, tuple(self.stage_widths), self.blocks_per_stage)
        self.head_layer = self._make_head()

    def features(self, x: Array, train: bool = False) -> Array:
        return self.body(self.normalize(x))
