"""The global-average-pooling (GAP) linear head that makes CAM exact.

For a feature map A (B, h, w, k) and head weights W (k, K) (and optional bias b (K,)):

    logits_c = mean_{h,w} sum_k W[k, c] A[:, h, w, k] + b_c
    CAM_c    = sum_k W[k, c] A[:, h, w, k] + b_c          (B, h, w, K)

so ``mean_{h,w} CAM_c == logits_c`` holds exactly (Zhou et al. 2016; Boopathy et al. 2020, sec. 1.1).
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxadv.types import Array


class GAPHead(nn.Module):
    """Bias-free (by default) GAP + linear head, the 1x1-conv head of Boopathy et al.

    Attributes:
      num_classes: K.
      use_bias: Boopathy et al.'s networks have no bias; generic ResNets do.
      kernel_init: defaults to N(0, 1/k) (Boopathy et al.'s head initialisation).
    """

    num_classes: int
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.variance_scaling(
        1.0, "fan_in", "normal")

    @nn.compact
    def __call__(self, a: Array, *, per_location: bool = False) -> Array:
        """(B, h, w, k) -> logits (B, K), or the CAM (B, h, w, K) with ``per_location=True``."""
        kernel = self.param("kernel", self.kernel_init, (a.shape[-1], self.num_classes))
        bias = (self.param("bias", nn.initializers.zeros, (self.num_classes,))
                if self.use_bias else None)
        if per_location:
            out = jnp.einsum("bhwk,kc->bhwc", a, kernel.astype(a.dtype))
        else:
            out = jnp.mean(a, axis=(1, 2)) @ kernel.astype(a.dtype)
        if bias is not None:
            out = out + bias.astype(a.dtype)
        return out
