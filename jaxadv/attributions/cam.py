"""Class activation maps: CAM, Grad-CAM, Grad-CAM++ (general form) and the closed-form CAM++.

All take ``features_fn`` (images (B, H, W, C) -> a feature map A (B, h, w, k), any layer) and
``head_fn`` (A -> logits (B, K)), and return one (B, h, w) map per example for its target class.
Upsample with :func:`jaxadv.attributions.postprocess.upsample` to compare with the input.

* CAM (Zhou et al., CVPR 2016): for a GAP-linear head f_c = mean_hw sum_k W_kc A_hwk + b_c,
  CAM_c = sum_k W_kc A_hwk + b_c, so mean_hw CAM_c == f_c exactly. It is computed from
  ``head_fn`` as CAM_c = h w sum_k (d f_c / d A_hwk) A_hwk + f_c(0), which is exact for any
  GAP-linear head (d f_c / d A_hwk = W_kc / (h w)); pass ``cam_fn`` (A -> (B, h, w, K), e.g.
  ``ModelFns.cam``) to use the model's own CAM instead.
* Grad-CAM (Selvaraju et al., ICCV 2017): alpha_k = mean_hw d f_c / d A_hwk;
  map = ReLU(sum_k alpha_k A_k) (Captum ``LayerGradCam`` with ``relu_attributions=True``). For a
  GAP-linear head without bias it equals CAM_c / (h w) before the ReLU.
* Grad-CAM++ (Chattopadhay et al., WACV 2018), general form with the exponential-score closed form
  of the higher derivatives, g = d f_c / d A:
  a_hwk = g^2 / (2 g^2 + sum_{h'w'} A_{h'w'k} g^3), w_k = sum_hw a_hwk ReLU(g_hwk),
  map = ReLU(sum_k w_k A_k). (The paper's positive factor exp(f_c) is dropped, as in common
  implementations; it rescales each map without changing its shape.)
* CAM++ (Boopathy et al.'s ``cam++``, methods.md 1.2): the closed form for GAP-linear heads,
  sum_k ReLU(W_kc) A_k, i.e. CAM with negative head weights clipped (no bias).
"""

import jax
import jax.numpy as jnp

from jaxadv.attributions import _common
from jaxadv.types import Array, FeaturesFn, HeadFn


def _features_and_grads(features_fn, head_fn, x, target):
    _common.check_images(x)
    a = features_fn(x)
    if a.ndim != 4:
        raise ValueError(f"features_fn must return a (B, h, w, k) feature map; got shape "
                         f"{a.shape}.")
    t = _common.as_target(target, x.shape[0], _common.num_classes(head_fn, a))
    g = jax.grad(lambda v: jnp.sum(_common.select(head_fn(v), t)))(a)
    return a, g, t


def cam(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, target, *, cam_fn=None) -> Array:
    """CAM of the target class (exact for GAP-linear heads); mean over (h, w) == logit.

    Args:
      features_fn: images (B, H, W, C) -> A (B, h, w, k).
      head_fn: A -> logits (B, K); must be GAP followed by a linear map for the result to be CAM.
      x: (B, H, W, C).
      target: int or (B,) class indices.
      cam_fn: optional A -> (B, h, w, K) (the model's own CAM); used instead of ``head_fn``.

    Returns:
      (B, h, w).
    """
    if cam_fn is not None:
        _common.check_images(x)
        a = features_fn(x)
        maps = cam_fn(a)
        t = _common.as_target(target, x.shape[0], maps.shape[-1])
        return jnp.take_along_axis(maps, t[:, None, None, None], axis=-1)[..., 0]
    a, g, t = _features_and_grads(features_fn, head_fn, x, target)
    hw = a.shape[1] * a.shape[2]
    bias = _common.select(head_fn(jnp.zeros_like(a)), t)
    return hw * jnp.sum(g * a, axis=-1) + bias[:, None, None]


def grad_cam(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, target, *,
             relu: bool = True) -> Array:
    """Grad-CAM of the target class on the layer ``features_fn`` ends at.

    Args:
      features_fn: images -> A (B, h, w, k) (any layer of any model).
      head_fn: A -> logits (B, K) (the rest of the model).
      x: (B, H, W, C).
      target: int or (B,) class indices.
      relu: apply the final ReLU (the paper's definition; Captum's default is False).

    Returns:
      (B, h, w).
    """
    a, g, _ = _features_and_grads(features_fn, head_fn, x, target)
    alpha = jnp.mean(g, axis=(1, 2), keepdims=True)
    m = jnp.sum(alpha * a, axis=-1)
    return jax.nn.relu(m) if relu else m


def grad_cam_plus_plus(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, target, *,
                       relu: bool = True) -> Array:
    """Grad-CAM++ of the target class, general form (see module docstring). Returns (B, h, w)."""
    a, g, _ = _features_and_grads(features_fn, head_fn, x, target)
    g2 = g * g
    denom = 2.0 * g2 + jnp.sum(a, axis=(1, 2), keepdims=True) * g2 * g
    alpha = g2 / jnp.where(denom != 0, denom, 1.0)
    w = jnp.sum(alpha * jax.nn.relu(g), axis=(1, 2), keepdims=True)
    m = jnp.sum(w * a, axis=-1)
    return jax.nn.relu(m) if relu else m


def cam_plus_plus(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, target) -> Array:
    """Boopathy et al.'s closed-form CAM++ for GAP-linear heads: sum_k ReLU(W_kc) A_k (B, h, w).

    W_kc is read off the head as h w d f_c / d A_hwk (exact for GAP-linear heads).
    """
    a, g, _ = _features_and_grads(features_fn, head_fn, x, target)
    hw = a.shape[1] * a.shape[2]
    return jnp.sum(jax.nn.relu(hw * g) * a, axis=-1)
