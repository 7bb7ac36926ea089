"""CIFAR-scale residual networks with a GAP head: PreAct ResNet-18 and WideResNet.

PreAct ResNet-18: He et al. 2016 ("Identity mappings"), the variant used by most CIFAR robustness
work (Rice et al. 2020, Wong et al. 2020). WideResNet: Zagoruyko & Komodakis 2016 (depth = 6n + 4).
Both end with norm -> activation -> GAP -> linear (with bias), so CAM on the final feature map is exact.
Batch norm is optional; in eval mode (``train=False``) it uses running statistics and never couples
examples of a batch.
"""

from collections.abc import Sequence

import flax.linen as nn

from jaxadv.models import fastpath, layers
from jaxadv.models.base import GAPClassifier
from jaxadv.types import Array

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def _norm(use_batch_norm: bool, train: bool, name: str):
    if use_batch_norm:
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    return lambda x: x


class _PreActBlock(nn.Module):
    width: int
    stride: int
    use_batch_norm: bool
    activation: str

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        act = layers.get_activation(self.activation)
        out = act(_norm(self.use_batch_norm, train, "norm0")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.width:
            shortcut = layers.conv(self.width, 1, strides=self.stride, use_bias=False,
                                   name="shortcut")(out)
        out = layers.conv(self.width, 3, strides=self.stride, use_bias=False, name="conv0")(out)
        out = act(_norm(self.use_batch_norm, train, "norm1")(out))
        out = layers.conv(self.width, 3, use_bias=False, name="conv1")(out)
        return out + shortcut


class _ResNetBody(nn.Module):
    stem_width: int
    stage_widths: Sequence[int]
    blocks_per_stage: Sequence[int]
    first_stride: int
    use_batch_norm: bool
    activation: str

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        stem = layers.conv(self.stem_width, 3, use_bias=False, name="stem")
        stages = [[_PreActBlock(width, (self.first_stride if s == 0 else 2) if b == 0 else 1,
                                self.use_batch_norm, self.activation, name=f"stage{s}_block{b}")
                   for b in range(n)]
                  for s, (width, n) in enumerate(zip(self.stage_widths, self.blocks_per_stage,
                                                     strict=True))]

        def run(h, blocks):
            for block in blocks:
                h = block(h, train)
            return h

        def first_stage(images):
            return run(stem(images), stages[0])

        # On CPU the stem and first stage (the largest maps) run depth first over chunks of
        # images where the fast path would chunk their convolutions (fastpath.depth_first_images;
        # not in training mode, where batch norm couples the images). Only where nothing is
        # written to the variables: the chunks are a plain lax.map around bound submodules, so
        # parameters created at init, or intermediates sown with mutable collections, would
        # escape the map as tracers.
        hw = tuple(-(-n // self.first_stride) for n in x.shape[1:3])
        writes = self.is_initializing() or bool(self.scope.mutable)
        size = None if train or writes else fastpath.depth_first_images(
            x.shape[0], hw, self.stage_widths[0], x.dtype)
        h = first_stage(x) if size is None else fastpath.map_images(first_stage, x, size)
        for blocks in stages[1:]:
            h = run(h, blocks)
        h = _norm(self.use_batch_norm, train, "final_norm")(h)
        return layers.get_activation(self.activation)(h)


class PreActResNet18(GAPClassifier):
    """PreAct ResNet-18 (widths 64-128-256-512, 2 blocks each). CAM map 4x4x512 on 32x32 inputs."""

    activation: str = "relu"
    use_batch_norm: bool = True
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    width_multiplier: float = 1.0

    def setup(self):
        w = [int(round(c * self.width_multiplier)) for c in (64, 128, 256, 512)]
        self.normalize = layers.Normalize(self.mean, self.std)
        self.body = _ResNetBody(w[0], tuple(w), (2, 2, 2, 2), 1, self.use_batch_norm,
                                self.activation)
        self.head_layer = self._make_head(use_bias=True)

    def features(self, x: Array, train: bool = False) -> Array:
        return self.body(self.normalize(x), train)


class WideResNet(GAPClassifier):
    """WideResNet-depth-width (e.g. WRN-28-10, WRN-34-10); depth = 6n + 4.

    Attributes:
      depth, width: WRN depth and widening factor.
      use_batch_norm: set False for normalisation-free robustness experiments.
      activation: 'relu' or 'swish' (as in Gowal et al. 2020) or 'softplus'.
    """

    depth: int = 28
    width: int = 10
    activation: str = "relu"
    use_batch_norm: bool = True
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD

    def setup(self):
        if (self.depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 16, 28, 34); got {self.depth}.")
        n = (self.depth - 4) // 6
        widths = tuple(c * self.width for c in (16, 32, 64))
        self.normalize = layers.Normalize(self.mean, self.std)
        self.body = _ResNetBody(16, widths, (n, n, n), 1, self.use_batch_norm, self.activation)
        self.head_layer = self._make_head(use_bias=True)

    def features(self, x: Array, train: bool = False) -> Array:
        return self.body(self.normalize(x), train)


class MLP(GAPClassifier):
    """A small MLP for tests: flatten -> hidden layers -> linear. Its "feature map" is the last hidden
    layer reshaped to (B, 1, 1, k), so the GAP head and CAM interfaces still apply."""

    hidden: Sequence[int] = (64,)
    activation: str = "relu"

    def setup(self):
        self.layers_ = [nn.Dense(h) for h in self.hidden]
        self.head_layer = self._make_head(use_bias=True)

    def features(self, x: Array, train: bool = False) -> Array:
        act = layers.get_activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        for dense in self.layers_:
            h = act(dense(h))
        return h[:, None, None, :]


class Linear(GAPClassifier):
    """A linear model logits = flatten(x) W + b, for closed-form tests."""

    def setup(self):
        self.head_layer = self._make_head(use_bias=True)

    def features(self, x: Array, train: bool = False) -> Array:
        return x.reshape(x.shape[0], 1, 1, -1)


