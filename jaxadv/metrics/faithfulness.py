"""Faithfulness of attribution maps: deletion and insertion AUC, and the completeness error.

Deletion / insertion: Petsiuk, Das & Saenko, "RISE: randomized input sampling for explanation of
black-box models", BMVC 2018. Pixels are ranked by the attribution (summed over channels when the
map is input-shaped) and, in ``num_steps`` equal steps, the top-ranked pixels are

* deleted: replaced by the baseline (RISE: zeros); a faithful map makes the score fall fast, so a
  **low** deletion AUC is good;
* inserted: copied from x into the baseline image (RISE: a blurred copy); a **high** insertion AUC
  is good.

The score is the target's softmax probability (``output="prob"``, as RISE) or its logit. The AUC is
the trapezoid rule over the fraction of pixels in [0, 1]: (sum_k s_k - (s_0 + s_S)/2) / S.

Completeness (Sundararajan et al. 2017): for a path method, sum_i attr_i = f_c(x) - f_c(baseline);
:func:`completeness_error` measures the violation.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import validation
from jaxadv.attributions import _common
from jaxadv.attributions.integrated_gradients import make_baseline
from jaxadv.types import Array, LogitsFn

OUTPUTS = ("prob", "logit")


def _pixel_scores(attribution: Array, x: Array) -> Array:
    if attribution.shape == x.shape:
        return jnp.sum(attribution, axis=-1) if x.ndim == 4 else attribution
    if x.ndim == 4 and attribution.shape == x.shape[:3]:
        return attribution
    raise ValueError(f"attribution must be shaped like x {x.shape} or like its pixels "
                     f"{x.shape[:3]}; got {attribution.shape} (upsample CAM-type maps first).")


def _score(logits_fn, z, t, output):
    logits = logits_fn(z)
    if output == "prob":
        logits = jax.nn.softmax(logits, axis=-1)
    return _common.select(logits, t)


def _curve(logits_fn, x, target, attribution, *, insertion, num_steps, baseline, output,
           chunk_size, blur_sigma):
    t = _common.prepare(logits_fn, x, target)
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}; choose one of {OUTPUTS}.")
    num_steps = validation.check_int("num_steps", num_steps, 1)
    validation.check_finite(attribution, "attribution", fix="its ranking of the pixels would be "
                            "arbitrary (NaN sorts last); explain finite inputs only.")
    scores = _pixel_scores(attribution, x)
    b = make_baseline(x, baseline, blur_sigma=blur_sigma)
    batch = x.shape[0]
    flat = scores.reshape(batch, -1)
    n = flat.shape[1]
    order = jnp.argsort(-flat, axis=-1)
    rank = jnp.zeros_like(order).at[jnp.arange(batch)[:, None], order].set(
        jnp.broadcast_to(jnp.arange(n, dtype=order.dtype), order.shape))
    rank = rank.reshape(scores.shape)
    counts = jnp.asarray(np.round(np.arange(num_steps + 1) * n / num_steps), rank.dtype)

    def at(count):
        mask = (rank < count)
        if x.ndim == 4:
            mask = mask[..., None]
        z = jnp.where(mask, x, b) if insertion else jnp.where(mask, b, x)
        return _score(logits_fn, z, t, output)

    chunk = _common.check_chunk_size(chunk_size, num_steps + 1)
    if chunk >= num_steps + 1:  # one call, no loop
        curve = jax.vmap(at)(counts).T  # (B, S + 1)
    else:
        curve = jax.lax.map(at, counts, batch_size=chunk).T
    auc = (jnp.sum(curve, axis=-1) - 0.5 * (curve[:, 0] + curve[:, -1])) / num_steps
    return auc, curve


def deletion_auc(logits_fn: LogitsFn, x: Array, target, attribution: Array, *,
                 num_steps: int = 50, baseline="zero", output: str = "prob",
                 chunk_size: int | None = None, blur_sigma: float = 5.0,
                 return_curve: bool = False):
    """Deletion AUC per example (lower is better).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C).
      target: int or (B,) classes.
      attribution: (B, H, W, C) or (B, H, W) map (higher = more important).
      num_steps: S, the number of deletion steps (n/S pixels each).
      baseline: what deleted pixels become (see ``attributions.make_baseline``: "zero", "blur",
        a float or an array).
      output: "prob" (softmax of the target) or "logit".
      chunk_size: steps per model call (``lax.map`` batch size); None = all at once.
      blur_sigma: for ``baseline="blur"``.
      return_curve: also return the (B, S + 1) curve.

    Returns:
      (B,) AUC, or (auc, curve).
    """
    auc, curve = _curve(logits_fn, x, target, attribution, insertion=False, num_steps=num_steps,
                        baseline=baseline, output=output, chunk_size=chunk_size,
                        blur_sigma=blur_sigma)
    return (auc, curve) if return_curve else auc


def insertion_auc(logits_fn: LogitsFn, x: Array, target, attribution: Array, *,
                  num_steps: int = 50, baseline="blur", output: str = "prob",
                  chunk_size: int | None = None, blur_sigma: float = 5.0,
                  return_curve: bool = False):
    """Insertion AUC per example (higher is better); pixels of x are pasted, most important first,
    into the baseline image (default a blurred copy of x, as RISE). Arguments as
    :func:`deletion_auc`."""
    auc, curve = _curve(logits_fn, x, target, attribution, insertion=True, num_steps=num_steps,
                        baseline=baseline, output=output, chunk_size=chunk_size,
                        blur_sigma=blur_sigma)
    return (auc, curve) if return_curve else auc


def completeness_error(logits_fn: LogitsFn, x: Array, target, attribution: Array, *,
                       baseline="zero", relative: bool = True, blur_sigma: float = 5.0,
                       eps: float = 1e-12) -> Array:
    """|sum attribution - (f_c(x) - f_c(baseline))| per example (B,), on the logit.

    Args:
      logits_fn, x, target: as for the attribution.
      attribution: (B, ...) map shaped like x.
      baseline: the attribution's baseline (``attributions.make_baseline`` forms).
      relative: divide by |f_c(x) - f_c(baseline)|.
    """
    t = _common.prepare(logits_fn, x, target)
    if attribution.shape != x.shape:
        raise ValueError(f"attribution must be shaped like x {x.shape}; got {attribution.shape}.")
    b = make_baseline(x, baseline, blur_sigma=blur_sigma)
    gap = _common.select(logits_fn(x), t) - _common.select(logits_fn(b), t)
    total = jnp.sum(attribution.reshape(x.shape[0], -1), axis=-1)
    err = jnp.abs(total - gap)
    return err / jnp.maximum(jnp.abs(gap), eps) if relative else err
