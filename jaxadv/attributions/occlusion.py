"""Occlusion: the drop in the target logit when a k x k patch is replaced by a fill value.

Zeiler & Fergus, "Visualizing and understanding convolutional networks", ECCV 2014. Patches cover all
channels and slide with ``strides``; along each spatial axis there are ceil((size - k) / stride) + 1
positions p = 0, stride, 2 stride, ..., the last one cropped at the border, so every pixel is
covered. A pixel's attribution is the mean, over the patches that cover it, of

    f_c(x) - f_c(x with the patch set to fill)

which is Captum ``Occlusion`` with ``sliding_window_shapes=(C, k, k)``, ``strides=(C, s, s)``.
Patches are evaluated ``chunk_size`` at a time (one model call on chunk_size * B images per step of a
``lax.scan``); None = all at once.
"""

import jax.numpy as jnp
import numpy as np

from jaxadv import validation
from jaxadv.attributions import _common
from jaxadv.types import Array, LogitsFn


def _pair(v, name):
    if validation.is_int(v):
        v = (v, v)
    if (not isinstance(v, tuple | list) or len(v) != 2
            or not all(validation.is_int(u) and u >= 1 for u in v)):
        raise ValueError(f"{name} must be a positive int or a pair of them; got {v!r}.")
    return tuple(int(u) for u in v)


def occlusion_masks(height: int, width: int, *, window=(8, 8), strides=1) -> np.ndarray:
    """The (P, H, W) float masks of all patch positions (row-major over positions)."""
    (kh, kw), (sh, sw) = _pair(window, "window"), _pair(strides, "strides")
    if kh > height or kw > width:
        raise ValueError(f"window {(kh, kw)} is larger than the image {(height, width)}.")
    if (sh > kh and height > kh) or (sw > kw and width > kw):
        raise ValueError(f"strides {(sh, sw)} larger than the window {(kh, kw)} would leave "
                         "pixels uncovered.")
    rows = [i * sh for i in range(-(-(height - kh) // sh) + 1)]
    cols = [j * sw for j in range(-(-(width - kw) // sw) + 1)]
    masks = np.zeros((len(rows) * len(cols), height, width), np.float32)
    for p, (r, c) in enumerate((r, c) for r in rows for c in cols):
        masks[p, r:r + kh, c:c + kw] = 1.0
    return masks


def occlusion(logits_fn: LogitsFn, x: Array, target, *, window=(8, 8), strides=1,
              fill=0.0, chunk_size: int | str | None = None) -> Array:
    """Occlusion map of the target logit.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) class indices.
      window: patch size k or (kh, kw).
      strides: patch stride s or (sh, sw) (<= window, so every pixel is covered; default 1, as
        Captum).
      fill: float, or an array shaped like x or like x[0] (e.g. a blurred copy).
      chunk_size: patches per model call; None = all at once; ``"auto"`` as in
        :func:`jaxadv.attributions.integrated_gradients`.

    Returns:
      (B, H, W, C) (the same value in every channel of a pixel).
    """
    t = _common.prepare(logits_fn, x, target)
    if x.ndim != 4:
        raise ValueError(f"occlusion expects (B, H, W, C) images; got shape {x.shape}.")
    masks_np = occlusion_masks(x.shape[1], x.shape[2], window=window, strides=strides)
    fill_arr = _common.constant_or_array(fill, x, "fill")
    validation.check_finite(fill, "fill", fix="the occluded pixels' value must be finite.")
    counts = masks_np.sum(0)
    masks = jnp.asarray(masks_np, x.dtype)
    base = _common.select(logits_fn(x), t)

    def drops(ms):  # (c, H, W) masks -> (c, B) drops of the target logit
        m = ms[:, None, :, :, None]
        occluded = x[None] * (1.0 - m) + fill_arr[None] * m
        return base[None] - _common.stacked_scores(logits_fn, t, occluded)

    num = masks.shape[0]
    chunk = _common.resolve_chunk_size(chunk_size, num, batch=x.shape[0],
                                       one_point=lambda: drops(masks[:1]))
    num_chunks = -(-num // chunk)
    pad = num_chunks * chunk - num
    padded = jnp.concatenate([masks, jnp.zeros((pad,) + masks.shape[1:], x.dtype)])
    padded = padded.reshape((num_chunks, chunk) + masks.shape[1:])

    def body(acc, ms):
        d = drops(ms)  # (chunk, B)
        return acc + jnp.einsum("pb,phw->bhw", d, ms), None

    acc = _common.scan_chunks(body, jnp.zeros(x.shape[:3], x.dtype), padded)
    attr = acc / jnp.asarray(counts, x.dtype)
    return jnp.broadcast_to(attr[..., None], x.shape)
