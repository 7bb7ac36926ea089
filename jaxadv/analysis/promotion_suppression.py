"""The promotion-suppression effect (PSE) of adversarial perturbations, and its link to CAM.

Xu, Liu, Zhang, Sun, Zhao, Fan, Gan & Lin, "Interpreting adversarial examples by activation
promotion and suppression" (arXiv 1904.02057; methods.md section 2). A perturbation delta that
moves x from its true class t0 to a target t can raise the target logit Z_t (promotion) and lower
the true-class logit Z_t0 (suppression). For a set G of pixels, delta_G being delta on G and 0
elsewhere (methods.md 2.3, [rec]: the spec's implementable definition, the project's choice):

    exact         P_G = Z_t(x + delta_G) - Z_t(x)        S_G = Z_t0(x) - Z_t0(x + delta_G)
    first order   P_G = sum_{i in G} delta_i dZ_t/dx_i   S_G = -sum_{i in G} delta_i dZ_t0/dx_i

(the gradients taken at the clean x). G is the whole image, one pixel (all its channels), or a
non-overlapping k x k window of the grid Str-attack uses for its group sparsity (windows that do
not fit at the bottom and right edges are smaller, as in :mod:`jaxadv.attacks.str_attack`).
The promotion ratio uses positive parts only,

    r = P+ / (P+ + S+),

and classifies each (image or group) effect as suppression-dominated (r < low), promotion-dominated
(r > high) or balanced, with ``low, high = 1/3, 2/3`` by default ([rec]: the thresholds are the
project's choice and are arguments). Effects with P+ + S+ <= ``min_effect`` (e.g. groups the
perturbation leaves untouched) are "inactive" (type -1, r = NaN).

Image-level link (methods.md 2.4, [rec]): the CAMs of t0 and t at the clean x, upsampled to the
input and thresholded at their top ``top_percent`` % (20 by default) give masks M_t0 and M_t; the
analysis reports the perturbation's energy share inside each (IS_CAM = ||M delta||_2 / ||delta||_2,
:func:`jaxadv.metrics.energy_share`), the share of the positive per-pixel promotion inside M_t and
of the positive per-pixel suppression inside M_t0; CAM-guided refinement re-runs a PGD-family
attack with delta confined to M_t0 U M_t (:mod:`jaxadv.attacks.masked`) and compares its success
and norm with the unconfined attack.

IS and IS+/IS- (methods.md 2.3) are :func:`jaxadv.metrics.interpretability_scores`;
:func:`pse_analysis` gathers them with the PSE quantities of one batch of adversarial examples.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.masked import masked_pgd
from jaxadv.attributions import _common
from jaxadv.attributions.cam import cam
from jaxadv.attributions.postprocess import upsample
from jaxadv.metrics.interpretability_score import energy_share, interpretability_scores
from jaxadv.types import Array, FeaturesFn, HeadFn, LogitsFn

METHODS = ("exact", "first_order")
PSE_TYPES = ("suppression", "balanced", "promotion")
"""Names of the type codes 0, 1, 2; code -1 is an inactive (no-effect) image or group."""
INACTIVE = -1


class PromotionSuppression(NamedTuple):
    """Promotion P and suppression S, each (B,) for whole images or (B, Hg, Wg) per group."""

    promotion: Array
    suppression: Array


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")


def _check_images(x: Array, delta: Array) -> None:
    if np.ndim(x) != 4:
        raise ValueError(f"x must be images (B, H, W, C); got shape {np.shape(x)}.")
    if np.shape(delta) != np.shape(x):
        raise ValueError(f"delta must be shaped like x {np.shape(x)}; got {np.shape(delta)}.")


def _classes(logits_fn, x, source, target):
    k = _common.num_classes(logits_fn, x)
    t0 = _common.as_target(source, x.shape[0], k, "source")
    t = _common.as_target(target, x.shape[0], k, "target")
    return t0, t


def _check_group_size(group_size) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int | np.integer) or group_size < 1:
        raise ValueError(f"group_size must be a positive int (1 = single pixels); got "
                         f"{group_size!r}.")
    return int(group_size)


def group_grid(height: int, width: int, group_size: int) -> np.ndarray:
    """Group index of each pixel, (H, W) int32: non-overlapping ``group_size`` windows numbered
    row-major over the (ceil(H / k), ceil(W / k)) grid (Str-attack's groups, methods.md 2.2)."""
    k = _check_group_size(group_size)
    gw = -(-width // k)
    rows, cols = np.meshgrid(np.arange(height) // k, np.arange(width) // k, indexing="ij")
    return (rows * gw + cols).astype(np.int32)


def group_sum(v: Array, group_size: int) -> Array:
    """Sum of v over each ``group_size`` window and all channels: (B, H, W, C) -> (B, Hg, Wg),
    Hg = ceil(H / k) (edge windows are smaller)."""
    k = _check_group_size(group_size)
    b, h, w, c = v.shape
    ph, pw = -h % k, -w % k
    v = jnp.pad(v, ((0, 0), (0, ph), (0, pw), (0, 0)))
    return jnp.sum(v.reshape(b, (h + ph) // k, k, (w + pw) // k, k, c), axis=(2, 4, 5))


def _gradients(logits_fn, x, t0, t):
    return (_common.input_gradient(logits_fn, x, t), _common.input_gradient(logits_fn, x, t0))


def image_promotion_suppression(logits_fn: LogitsFn, x: Array, delta: Array, source, target, *,
                                method: str = "exact") -> PromotionSuppression:
    """Whole-image promotion and suppression of ``delta`` (Xu et al. 2019; methods.md 2.3).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images.
      delta: (B, H, W, C) perturbation x' - x.
      source: int or (B,) true classes t0.
      target: int or (B,) target classes t (for an untargeted attack, the adversarial class,
        e.g. :func:`adversarial_class`).
      method: ``"exact"`` (logit differences) or ``"first_order"`` (gradient at x times delta).

    Returns:
      PromotionSuppression of (B,) arrays.
    """
    _check_method(method)
    _check_images(x, delta)
    t0, t = _classes(logits_fn, x, source, target)
    if method == "exact":
        z0, z1 = logits_fn(x), logits_fn(x + delta)
        return PromotionSuppression(_common.select(z1, t) - _common.select(z0, t),
                                    _common.select(z0, t0) - _common.select(z1, t0))
    gt, gs = _gradients(logits_fn, x, t0, t)
    flat = lambda v: v.reshape(v.shape[0], -1)  # noqa: E731
    return PromotionSuppression(jnp.sum(flat(delta * gt), -1), -jnp.sum(flat(delta * gs), -1))


def group_promotion_suppression(logits_fn: LogitsFn, x: Array, delta: Array, source, target, *,
                                group_size: int = 2, method: str = "exact",
                                chunk_size: int | None = 64) -> PromotionSuppression:
    """Promotion and suppression of each k x k group of ``delta`` (Xu et al. 2019; methods.md 2.3).

    The exact version evaluates the model on x + delta_G for every group G: Hg * Wg forward
    passes of the batch, ``chunk_size`` groups at a time (``lax.map`` with a batch size, so memory
    holds one chunk of stacked batches; None = all groups at once). The first-order version needs
    two input gradients and sums gradient x delta within each window.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images.
      delta: (B, H, W, C) perturbation.
      source: int or (B,) true classes t0.
      target: int or (B,) target classes t.
      group_size: window side k (static; 1 = single pixels, all channels of a pixel together; 2 is
        Str-attack's MNIST/CIFAR grid).
      method: ``"exact"`` or ``"first_order"``.
      chunk_size: groups per vectorised evaluation in the exact version.

    Returns:
      PromotionSuppression of (B, Hg, Wg) arrays, Hg = ceil(H / k), Wg = ceil(W / k).
    """
    _check_method(method)
    _check_images(x, delta)
    k = _check_group_size(group_size)
    t0, t = _classes(logits_fn, x, source, target)
    b, h, w, _ = x.shape
    hg, wg = -(-h // k), -(-w // k)
    if method == "first_order":
        gt, gs = _gradients(logits_fn, x, t0, t)
        return PromotionSuppression(group_sum(delta * gt, k), -group_sum(delta * gs, k))
    num_groups = hg * wg
    chunk = _common.check_chunk_size(chunk_size, num_groups)
    ids = jnp.asarray(group_grid(h, w, k))
    z0 = logits_fn(x)

    def one_group(g):
        z = logits_fn(x + delta * (ids == g)[None, :, :, None].astype(delta.dtype))
        return _common.select(z, t), _common.select(z, t0)

    zt, zs = jax.lax.map(one_group, jnp.arange(num_groups), batch_size=chunk)  # (G, B) each
    promo = (zt - _common.select(z0, t)[None]).T.reshape(b, hg, wg)
    supp = (_common.select(z0, t0)[None] - zs).T.reshape(b, hg, wg)
    return PromotionSuppression(promo, supp)


def promotion_ratio(promotion: Array, suppression: Array, *, min_effect: float = 0.0) -> Array:
    """r = P+ / (P+ + S+) elementwise (methods.md 2.3); NaN where P+ + S+ <= ``min_effect``."""
    p, s = jax.nn.relu(promotion), jax.nn.relu(suppression)
    total = p + s
    active = total > min_effect
    return jnp.where(active, p / jnp.where(active, total, 1.0), jnp.nan)


def _check_thresholds(low, high) -> None:
    if not (0.0 <= float(low) <= float(high) <= 1.0):
        raise ValueError(f"Need 0 <= low <= high <= 1 for the type thresholds; got low={low}, "
                         f"high={high}.")


def pse_type(promotion: Array, suppression: Array, *, low: float = 1 / 3, high: float = 2 / 3,
             min_effect: float = 0.0) -> Array:
    """Three-way PSE type elementwise, int32 (methods.md 2.3, thresholds [rec]).

    Codes: 0 suppression-dominated (r < low), 1 balanced (low <= r <= high), 2 promotion-dominated
    (r > high), -1 inactive (P+ + S+ <= ``min_effect``); names in ``PSE_TYPES``.
    """
    _check_thresholds(low, high)
    r = promotion_ratio(promotion, suppression, min_effect=min_effect)
    code = jnp.where(r < low, 0, jnp.where(r > high, 2, 1))
    return jnp.where(jnp.isnan(r), INACTIVE, code).astype(jnp.int32)


def type_distribution(types: Array, where: Array | None = None) -> tuple[Array, Array]:
    """(fractions (3,), active count) of the types 0, 1, 2 among active entries.

    ``types`` (B, ...) from :func:`pse_type`; ``where`` (B,) bool selects examples (e.g. the
    attack's successes). Fractions are NaN when no entry is active.
    """
    t = jnp.asarray(types)
    keep = t != INACTIVE
    if where is not None:
        keep = keep & jnp.reshape(where, where.shape + (1,) * (t.ndim - 1))
    counts = jnp.stack([jnp.sum(keep & (t == c)) for c in range(len(PSE_TYPES))])
    n = jnp.sum(keep)
    return counts / jnp.where(n > 0, n, 1) + jnp.where(n > 0, 0.0, jnp.nan), n


def adversarial_class(logits_adv: Array, source: Array) -> Array:
    """The highest-scoring class other than the source at x', (B,) int32: the target t of an
    untargeted attack."""
    k = logits_adv.shape[-1]
    masked = jnp.where(jax.nn.one_hot(source, k, dtype=jnp.bool_), -jnp.inf, logits_adv)
    return jnp.argmax(masked, axis=-1).astype(jnp.int32)


def perturbation_norms(delta: Array) -> dict[str, Array]:
    """Per-example l0 (entries != 0), l1, l2 and l-inf norms of delta, each (B,)."""
    f = delta.reshape(delta.shape[0], -1)
    return {"l0": jnp.sum(f != 0, -1).astype(f.dtype), "l1": jnp.sum(jnp.abs(f), -1),
            "l2": jnp.sqrt(jnp.sum(f * f, -1)), "linf": jnp.max(jnp.abs(f), -1)}


class PSEAnalysis(NamedTuple):
    """PSE quantities of one batch of perturbations (see :func:`pse_analysis`).

    Attributes:
      image: whole-image PromotionSuppression, exact, (B,) each.
      image_first_order: the same to first order, (B,) each.
      image_type: (B,) int32 type of the exact whole-image effect.
      groups: per-group PromotionSuppression, (B, Hg, Wg) each.
      group_type: (B, Hg, Wg) int32 type of each group.
      interpretability: IS, IS+ and IS- (B,) each
        (:class:`jaxadv.metrics.InterpretabilityScores`).
    """

    image: PromotionSuppression
    image_first_order: PromotionSuppression
    image_type: Array
    groups: PromotionSuppression
    group_type: Array
    interpretability: tuple


def pse_analysis(logits_fn: LogitsFn, x: Array, x_adv: Array, source, target, *,
                 group_size: int = 2, group_method: str = "exact", low: float = 1 / 3,
                 high: float = 2 / 3, min_effect: float = 0.0, percentile: float = 90.0,
                 chunk_size: int | None = 64) -> PSEAnalysis:
    """Whole-image and per-group PSE, types and IS / IS+ / IS- of ``x_adv - x`` (methods.md 2.3).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) clean images. x_adv: (B, H, W, C) adversarial examples.
      source: int or (B,) true classes t0. target: int or (B,) target classes t.
      group_size, group_method, chunk_size: as in :func:`group_promotion_suppression`.
      low, high, min_effect: type thresholds, as in :func:`pse_type`.
      percentile: IS threshold nu as a per-example percentile of the saliency maps
        (:func:`jaxadv.metrics.interpretability_scores`; [rec], the project's choice).

    Returns:
      PSEAnalysis.
    """
    delta = x_adv - x
    image = image_promotion_suppression(logits_fn, x, delta, source, target, method="exact")
    first = image_promotion_suppression(logits_fn, x, delta, source, target, method="first_order")
    groups = group_promotion_suppression(logits_fn, x, delta, source, target,
                                         group_size=group_size, method=group_method,
                                         chunk_size=chunk_size)
    kw = {"low": low, "high": high, "min_effect": min_effect}
    return PSEAnalysis(image, first, pse_type(*image, **kw), groups, pse_type(*groups, **kw),
                       interpretability_scores(logits_fn, x, delta, source, target,
                                               percentile=percentile))


# --- Image-level link: CAM (methods.md 2.4) -----------------------------------------------------

def _check_percent(top_percent) -> None:
    if not 0.0 < float(top_percent) <= 100.0:
        raise ValueError(f"top_percent must lie in (0, 100]; got {top_percent}.")


def top_percent_mask(maps: Array, *, top_percent: float = 20.0) -> Array:
    """Bool mask of the ``top_percent`` % largest entries of each map (B, ...): exactly
    round(q / 100 * n) entries (at least 1), ties broken by position."""
    _check_percent(top_percent)
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, int(round(float(top_percent) / 100.0 * flat.shape[1])))
    idx = jax.lax.top_k(flat, k)[1]
    mask = jnp.zeros(flat.shape, jnp.bool_).at[jnp.arange(flat.shape[0])[:, None], idx].set(True)
    return mask.reshape(maps.shape)


def cam_masks(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, classes, *,
              top_percent: float = 20.0, upsample_method: str = "bilinear",
              cam_fn=None) -> Array:
    """M_c: the top ``top_percent`` % of the CAM of ``classes`` at x, upsampled to the input
    (methods.md 2.4, [rec]: q = 20 is the project's default).

    Args:
      features_fn: images (B, H, W, C) -> feature map (B, h, w, k).
      head_fn: feature map -> logits (GAP-linear for an exact CAM).
      x: (B, H, W, C).
      classes: int or (B,) classes.
      top_percent: q.
      upsample_method: ``jax.image.resize`` method for the (h, w) -> (H, W) upsampling.
      cam_fn: optional feature map -> (B, h, w, K) (the model's own CAM).

    Returns:
      (B, H, W) bool.
    """
    maps = cam(features_fn, head_fn, x, classes, cam_fn=cam_fn)
    return top_percent_mask(upsample(maps, x.shape[1:3], method=upsample_method),
                            top_percent=top_percent)


def _share(values: Array, mask: Array) -> Array:
    """sum(values * mask) / sum(values) per example for values >= 0; 0 where the sum is 0."""
    v = values.reshape(values.shape[0], -1)
    tot = jnp.sum(v, -1)
    inside = jnp.sum(v * mask.reshape(v.shape).astype(v.dtype), -1)
    return jnp.where(tot > 0, inside / jnp.where(tot > 0, tot, 1.0), 0.0)


class CamOverlap(NamedTuple):
    """Overlap of a perturbation with the CAM regions of the true and target classes, each (B,).

    Attributes:
      energy_source: ||M_t0 delta||_2 / ||delta||_2.
      energy_target: ||M_t delta||_2 / ||delta||_2.
      energy_union: the same for M_t0 U M_t.
      promotion_in_target: share of the positive per-pixel promotion inside M_t.
      suppression_in_source: share of the positive per-pixel suppression inside M_t0.
      union_area: |M_t0 U M_t| / (H W): the chance level of ``energy_union`` squared (a uniformly
        spread perturbation). The chance level of ``promotion_in_target`` and
        ``suppression_in_source`` is the area of their own mask, ``top_percent`` / 100.
    """

    energy_source: Array
    energy_target: Array
    energy_union: Array
    promotion_in_target: Array
    suppression_in_source: Array
    union_area: Array


def cam_overlap(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, delta: Array, source, target,
                *, top_percent: float = 20.0, method: str = "first_order",
                upsample_method: str = "bilinear", cam_fn=None,
                chunk_size: int | None = 64) -> CamOverlap:
    """CAM overlap of a perturbation (methods.md 2.4, [rec]).

    The CAMs are those of the clean x; the per-pixel promotion and suppression are
    :func:`group_promotion_suppression` with single-pixel groups (``method``; the exact version
    costs H * W forward passes).

    Args:
      features_fn, head_fn, cam_fn, top_percent, upsample_method: as in :func:`cam_masks`.
      x: (B, H, W, C) clean images. delta: (B, H, W, C) perturbation.
      source: int or (B,) true classes t0. target: int or (B,) target classes t.
      method: per-pixel PSE method, ``"first_order"`` (default) or ``"exact"``.
      chunk_size: pixels per vectorised evaluation of the exact method.

    Returns:
      CamOverlap of (B,) arrays.
    """
    _check_images(x, delta)
    logits_fn = lambda z: head_fn(features_fn(z))  # noqa: E731
    t0, t = _classes(logits_fn, x, source, target)
    kw = {"top_percent": top_percent, "upsample_method": upsample_method, "cam_fn": cam_fn}
    m_src = cam_masks(features_fn, head_fn, x, t0, **kw)
    m_tgt = cam_masks(features_fn, head_fn, x, t, **kw)
    union = m_src | m_tgt
    pix = group_promotion_suppression(logits_fn, x, delta, t0, t, group_size=1, method=method,
                                      chunk_size=chunk_size)
    area = jnp.mean(union.reshape(union.shape[0], -1).astype(x.dtype), -1)
    return CamOverlap(energy_share(delta, m_src), energy_share(delta, m_tgt),
                      energy_share(delta, union), _share(jax.nn.relu(pix.promotion), m_tgt),
                      _share(jax.nn.relu(pix.suppression), m_src), area)


def random_mask_like(key: jax.Array, mask: Array) -> Array:
    """A control for a region mask: each example's mask (B, ...) with its entries randomly
    permuted, so it covers the same number of pixels at random positions."""
    flat = mask.reshape(mask.shape[0], -1)
    keys = jax.random.split(key, flat.shape[0])
    return jax.vmap(lambda kk, m: jax.random.permutation(kk, m))(keys, flat).reshape(mask.shape)


class CamGuidedResult(NamedTuple):
    """A CAM-confined attack and its unconfined reference (:func:`cam_guided_attack`).

    Attributes:
      mask: (B, H, W, 1) float, M_t0 U M_t.
      masked: AttackResult of the attack confined to ``mask``.
      unmasked: AttackResult of the same attack on the whole image.
    """

    mask: Array
    masked: AttackResult
    unmasked: AttackResult


def cam_guided_attack(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, y: Array,
                      key: jax.Array, *, targets: Array, eps, step_size, num_steps: int,
                      norm: str = "linf", top_percent: float = 20.0, loss_fn="ce",
                      random_start: bool = False, mask: Array | None = None,
                      upsample_method: str = "bilinear", cam_fn=None) -> CamGuidedResult:
    """CAM-guided refinement (methods.md 2.4, [rec]): a targeted PGD confined to M_t0 U M_t.

    Runs :func:`jaxadv.attacks.masked_pgd` twice with the same settings and key, once with delta
    confined to the union of the true and target classes' top-``top_percent`` % CAM regions (at
    the clean x) and once with an all-ones mask (plain PGD), so the two differ only in their
    support. Compare ``success`` and :func:`perturbation_norms` of ``x_adv - x``.

    Args:
      features_fn, head_fn, cam_fn, upsample_method, top_percent: as in :func:`cam_masks`.
      x: (B, H, W, C) clean images. y: (B,) true labels. key: typed PRNG key.
      targets: (B,) int target classes t.
      eps, step_size, num_steps, norm, loss_fn, random_start: of the PGD (``masked_pgd``).
      mask: optional (B, H, W) or (B, H, W, 1) region used instead of the CAM union (e.g.
        :func:`random_mask_like` of it, as a control).

    Returns:
      CamGuidedResult.
    """
    x = jnp.asarray(x)
    logits_fn = lambda z: head_fn(features_fn(z))  # noqa: E731
    if mask is None:
        kw = {"top_percent": top_percent, "upsample_method": upsample_method, "cam_fn": cam_fn}
        mask = (cam_masks(features_fn, head_fn, x, y, **kw)
                | cam_masks(features_fn, head_fn, x, targets, **kw))
    mask = jnp.asarray(mask).astype(x.dtype)
    if mask.ndim == 3:
        mask = mask[..., None]
    kw = {"eps": eps, "step_size": step_size, "num_steps": num_steps, "norm": norm,
          "loss_fn": loss_fn, "targets": targets, "random_start": random_start}
    masked = masked_pgd(logits_fn, x, y, key, mask=mask, **kw)
    unmasked = masked_pgd(logits_fn, x, y, key, mask=jnp.ones_like(mask), **kw)
    return CamGuidedResult(mask, masked, unmasked)


__all__ = [
    "INACTIVE", "PSE_TYPES", "CamGuidedResult", "CamOverlap", "PSEAnalysis",
    "PromotionSuppression", "adversarial_class", "cam_guided_attack", "cam_masks", "cam_overlap",
    "group_grid", "group_promotion_suppression", "group_sum", "image_promotion_suppression",
    "perturbation_norms", "promotion_ratio", "pse_analysis", "pse_type", "random_mask_like",
    "top_percent_mask", "type_distribution",
]
