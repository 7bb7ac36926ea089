"""Hidden units under attack: adversarial sensitivity, unit masking, and network dissection.

The network-level analysis of Xu et al. 2019, "Interpreting adversarial examples by activation
promotion and suppression" (arXiv 1904.02057; methods.md 2.5, [rec]: the spec's implementable
reading, the project's choices exposed as arguments). Units are the channels of a feature map
A = features_fn(x) (B, h, w, k), the last one for the GAP-head models of :mod:`jaxadv.models`.

* Sensitivity: s_u = E_x |mean_hw A_u(x') - mean_hw A_u(x)|, split by sign into its promoted part
  E_x max(dA_u, 0) and suppressed part E_x max(-dA_u, 0) (s_u is their sum); a unit is "promoted"
  when the promoted part is the larger.
* Masking (the defence of methods.md 2.1/2.5): zero the top-m most sensitive units at inference,
  ``logits = head(features(x) * keep)``, and measure clean and robust accuracy as m grows, against
  the adversarial examples of the unmasked model (transfer) and, optionally, against an attack
  re-run on each masked model (adaptive).
* Network dissection (Bau et al., CVPR 2017): for each unit, the threshold T_u is the top
  ``top_fraction`` (0.5%) quantile of its activations over the probe set; the activation map is
  upsampled to the input and binarised at T_u (M_u = A_u^up > T_u); for each concept c with
  binary masks L_c,

      IoU_{u,c} = sum_x |M_u(x) & L_c(x)| / sum_x |M_u(x) | L_c(x)|

  (intersections and unions summed over the probe set), and a unit is interpretable when
  max_c IoU_{u,c} > 0.04. Any (image, mask) dataset can serve as the probe set (Broden is not
  available offline).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import validation
from jaxadv.attributions.postprocess import upsample
from jaxadv.metrics.rank import pearson, spearman
from jaxadv.types import Array, FeaturesFn, HeadFn, LogitsFn

AttackFn = Callable[[LogitsFn, Array, Array, jax.Array], object]


def _check_feature_map(a: Array) -> None:
    if np.ndim(a) != 4:
        raise ValueError(f"features_fn must return a (B, h, w, k) feature map; got shape "
                         f"{np.shape(a)}.")


def unit_activations(features_fn: FeaturesFn, x: Array) -> Array:
    """Spatial means of each unit, mean_hw A_u(x): (B, H, W, C) -> (B, k)."""
    a = features_fn(x)
    _check_feature_map(a)
    return jnp.mean(a, axis=(1, 2))


class UnitSensitivity(NamedTuple):
    """Per-unit adversarial sensitivity (methods.md 2.5), each (k,).

    Attributes:
      sensitivity: s_u = E |dA_u| (= promoted + suppressed).
      promoted: E max(dA_u, 0).
      suppressed: E max(-dA_u, 0).
      mean_change: E dA_u.
    """

    sensitivity: Array
    promoted: Array
    suppressed: Array
    mean_change: Array


def activation_change(features_fn: FeaturesFn, x: Array, x_adv: Array) -> Array:
    """dA_u = mean_hw A_u(x') - mean_hw A_u(x), (B, k)."""
    return unit_activations(features_fn, x_adv) - unit_activations(features_fn, x)


def unit_sensitivity(features_fn: FeaturesFn, x: Array, x_adv: Array, *,
                     where: Array | None = None) -> UnitSensitivity:
    """Adversarial sensitivity of each unit of ``features_fn``'s map (Xu et al. 2019, [rec]).

    Args:
      features_fn: images (B, H, W, C) -> feature map (B, h, w, k).
      x: (B, H, W, C) clean images. x_adv: (B, H, W, C) their adversarial examples.
      where: optional (B,) bool: average over these examples only (e.g. the attack's successes).

    Returns:
      UnitSensitivity of (k,) arrays (NaN if ``where`` selects nothing).
    """
    if np.shape(x) != np.shape(x_adv):
        raise ValueError(f"x_adv must be shaped like x {np.shape(x)}; got {np.shape(x_adv)}.")
    d = activation_change(features_fn, x, x_adv)
    w = jnp.ones(d.shape[:1], d.dtype) if where is None else jnp.asarray(where).astype(d.dtype)
    n = jnp.sum(w)
    mean = lambda v: jnp.sum(v * w[:, None], 0) / n  # noqa: E731
    promoted, suppressed = mean(jax.nn.relu(d)), mean(jax.nn.relu(-d))
    return UnitSensitivity(promoted + suppressed, promoted, suppressed, mean(d))


def top_unit_masks(sensitivity: Array, num_masked) -> Array:
    """Keep-masks zeroing the m most sensitive units, for each m in ``num_masked``.

    Args:
      sensitivity: (k,) s_u (NaN counts as least sensitive).
      num_masked: an int m or a sequence of M ints, each in [0, k].

    Returns:
      (k,) float mask for an int, (M, k) for a sequence: 0 on the m units of largest s_u
      (ties by index), 1 elsewhere.
    """
    s = jnp.asarray(sensitivity)
    k = s.shape[-1]
    ms = np.atleast_1d(np.asarray(num_masked))
    for m in ms.tolist():
        validation.check_int("num_masked", m, 0)
        if m > k:
            raise ValueError(f"num_masked must be <= the number of units {k}; got {m}.")
    rank = jnp.argsort(jnp.argsort(-jnp.nan_to_num(s, nan=-jnp.inf), stable=True), stable=True)
    masks = (rank[None, :] >= jnp.asarray(ms)[:, None]).astype(s.dtype)
    return masks[0] if np.ndim(num_masked) == 0 else masks


def masked_units_logits_fn(features_fn: FeaturesFn, head_fn: HeadFn, keep: Array) -> LogitsFn:
    """``x -> head(features(x) * keep)``: the model with the units where ``keep`` is 0 zeroed.

    ``keep`` (k,) may be traced (one compilation serves every mask).
    """

    def logits_fn(x):
        a = features_fn(x)
        _check_feature_map(a)
        return head_fn(a * jnp.asarray(keep, a.dtype))

    return logits_fn


class MaskingCurve(NamedTuple):
    """Accuracy of the unit-masked models, one entry per mask, each (M,).

    Attributes:
      clean: accuracy on x.
      transfer: accuracy on the given adversarial examples (crafted on the unmasked model).
      adaptive: accuracy under the attack re-run on each masked model (NaN without ``attack_fn``).
    """

    clean: Array
    transfer: Array
    adaptive: Array


def unit_masking_curve(features_fn: FeaturesFn, head_fn: HeadFn, x: Array, y: Array,
                       x_adv: Array, key: jax.Array, *, keep_masks: Array,
                       attack_fn: AttackFn | None = None) -> MaskingCurve:
    """Clean and robust accuracy as the most sensitive units are masked (methods.md 2.5).

    Args:
      features_fn, head_fn: the model, split at the unit layer.
      x: (B, H, W, C) clean images. y: (B,) labels.
      x_adv: (B, H, W, C) adversarial examples of the unmasked model (transfer evaluation).
      key: typed PRNG key for ``attack_fn`` (the same key for every mask).
      keep_masks: (M, k) from :func:`top_unit_masks`.
      attack_fn: optional ``attack_fn(logits_fn, x, y, key) -> AttackResult`` (e.g.
        ``jaxadv.attacks.get_attack("pgd", eps=0.1, ...)``), re-run against each masked model.

    Returns:
      MaskingCurve of (M,) arrays (masks are evaluated with ``lax.map``, one at a time).
    """
    keep_masks = jnp.asarray(keep_masks)
    if keep_masks.ndim != 2:
        raise ValueError(f"keep_masks must be (M, k); got shape {keep_masks.shape}.")

    def one(keep):
        logits_fn = masked_units_logits_fn(features_fn, head_fn, keep)
        acc = lambda z: jnp.mean((jnp.argmax(logits_fn(z), -1) == y).astype(x.dtype))  # noqa: E731
        if attack_fn is None:
            adaptive = jnp.asarray(jnp.nan, x.dtype)
        else:
            adaptive = acc(attack_fn(logits_fn, x, y, key).x_adv)
        return acc(x), acc(x_adv), adaptive

    return MaskingCurve(*jax.lax.map(one, keep_masks))


# --- Network dissection (Bau et al. 2017) --------------------------------------------------------

def unit_thresholds(activations: Array, *, top_fraction: float = 0.005) -> Array:
    """T_u: the (1 - top_fraction) quantile of each unit's activations over every position of
    every probe image, (N, h, w, k) -> (k,) (Bau et al. 2017: top 0.5%)."""
    _check_feature_map(activations)
    if not 0.0 < float(top_fraction) < 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1); got {top_fraction}.")
    flat = activations.reshape(-1, activations.shape[-1])
    return jnp.quantile(flat, 1.0 - float(top_fraction), axis=0)


class Dissection(NamedTuple):
    """Network dissection of k units against C concepts.

    Attributes:
      iou: (k, C) IoU_{u,c} summed over the probe set.
      thresholds: (k,) T_u.
      max_iou: (k,) max_c IoU_{u,c}.
      best_concept: (k,) argmax_c IoU_{u,c}.
      interpretable: (k,) bool, max IoU > the IoU threshold.
    """

    iou: Array
    thresholds: Array
    max_iou: Array
    best_concept: Array
    interpretable: Array


def dissect(activations: Array, concept_masks: Array, *, top_fraction: float = 0.005,
            thresholds: Array | None = None, iou_threshold: float = 0.04,
            upsample_method: str = "bilinear", chunk_size: int | None = None) -> Dissection:
    """Network dissection from precomputed activations (Bau et al. 2017; methods.md 2.5).

    Args:
      activations: (N, h, w, k) feature maps of the N probe images.
      concept_masks: (N, H, W, C) bool (or {0, 1}) masks L_c of C concepts on each probe image.
      top_fraction: T_u is the (1 - top_fraction) quantile of unit u's activations (0.005).
      thresholds: optional (k,) T_u to use instead (e.g. from a larger probe set).
      iou_threshold: a unit is interpretable when its max IoU exceeds this (0.04).
      upsample_method: ``jax.image.resize`` method for (h, w) -> (H, W) (Bau et al.: bilinear).
      chunk_size: probe images per step of the IoU accumulation (None: all at once).

    Returns:
      Dissection.
    """
    _check_feature_map(activations)
    if np.ndim(concept_masks) != 4 or np.shape(concept_masks)[0] != np.shape(activations)[0]:
        raise ValueError(f"concept_masks must be (N, H, W, C) with N = {np.shape(activations)[0]} "
                         f"probe images; got shape {np.shape(concept_masks)}.")
    if thresholds is None:
        thresholds = unit_thresholds(activations, top_fraction=top_fraction)
    thresholds = jnp.asarray(thresholds, activations.dtype)
    n = activations.shape[0]
    size = concept_masks.shape[1:3]
    chunk = n if chunk_size is None else validation.check_int("chunk_size", chunk_size, 1)
    chunk = min(chunk, n)
    pad = -n % chunk
    acts = jnp.pad(activations, ((0, pad), (0, 0), (0, 0), (0, 0)))
    # padded images: masks and activations below every threshold, so they add nothing
    acts = acts.at[n:].set(-jnp.inf) if pad else acts
    labels = jnp.pad(jnp.asarray(concept_masks).astype(jnp.float32),  # counts in float32
                     ((0, pad), (0, 0), (0, 0), (0, 0)))
    k, c = activations.shape[-1], labels.shape[-1]

    def body(carry, batch):
        inter, m_area, l_area = carry
        a, lab = batch
        up = upsample(jnp.where(jnp.isfinite(a), a, 0.0), size, method=upsample_method)
        m = ((up > thresholds) & jnp.isfinite(a[:, :1, :1, :])).astype(jnp.float32)
        inter = inter + jnp.einsum("nhwk,nhwc->kc", m, lab)
        return (inter, m_area + jnp.sum(m, (0, 1, 2)), l_area + jnp.sum(lab, (0, 1, 2))), None

    init = (jnp.zeros((k, c), jnp.float32), jnp.zeros((k,), jnp.float32),
            jnp.zeros((c,), jnp.float32))
    xs = (acts.reshape((-1, chunk) + acts.shape[1:]), labels.reshape((-1, chunk) + labels.shape[1:]))
    inter, m_area, l_area = jax.lax.scan(body, init, xs)[0]
    union = m_area[:, None] + l_area[None, :] - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    max_iou = jnp.max(iou, -1)
    return Dissection(iou, thresholds, max_iou, jnp.argmax(iou, -1).astype(jnp.int32),
                      max_iou > iou_threshold)


def dissection_iou(features_fn: FeaturesFn, images: Array, concept_masks: Array, *,
                   top_fraction: float = 0.005, thresholds: Array | None = None,
                   iou_threshold: float = 0.04, upsample_method: str = "bilinear",
                   chunk_size: int | None = None) -> Dissection:
    """Network dissection of ``features_fn``'s units over an (image, mask) probe set.

    Args:
      features_fn: images (N, H, W, C) -> feature maps (N, h, w, k).
      images: (N, H, W, C) probe images.
      concept_masks: (N, H, W, C') bool masks of C' concepts.
      top_fraction, thresholds, iou_threshold, upsample_method, chunk_size: as in :func:`dissect`.

    Returns:
      Dissection.
    """
    return dissect(features_fn(images), concept_masks, top_fraction=top_fraction,
                   thresholds=thresholds, iou_threshold=iou_threshold,
                   upsample_method=upsample_method, chunk_size=chunk_size)


def sensitivity_iou_correlation(sensitivity: Array, max_iou: Array) -> dict[str, Array]:
    """Pearson and Spearman correlation between s_u and max IoU_u over the units (scalars); NaN
    where a sensitivity is undefined (no example selected, :func:`unit_sensitivity`)."""
    s, m = jnp.asarray(sensitivity)[None], jnp.asarray(max_iou)[None]
    undefined = ~(jnp.all(jnp.isfinite(s)) & jnp.all(jnp.isfinite(m)))
    s0, m0 = jnp.nan_to_num(s), jnp.nan_to_num(m)  # the rank functions refuse NaN; masked below
    return {"pearson": jnp.where(undefined, jnp.nan, pearson(s0, m0)[0]),
            "spearman": jnp.where(undefined, jnp.nan, spearman(s0, m0)[0])}


class ConceptAlignment(NamedTuple):
    """Mean standardised activation change of (unit, example) pairs, by how the unit's concept
    class relates to the example's classes (scalars; NaN where no pair qualifies).

    Attributes:
      source: pairs whose unit concept is the example's true class (suppression predicts < 0).
      target: pairs whose unit concept is the example's target class (promotion predicts > 0).
      other: the remaining pairs.
    """

    source: Array
    target: Array
    other: Array


def concept_alignment(delta_activations: Array, unit_class: Array, source: Array, target: Array,
                      *, scale: Array | None = None, where: Array | None = None
                      ) -> ConceptAlignment:
    """Do attacks suppress true-class units and promote target-class units? (methods.md 2.5)

    Args:
      delta_activations: (B, k) dA from :func:`activation_change`.
      unit_class: (k,) int class each unit's best concept stands for (-1: none, e.g. not
        interpretable or a class-free concept).
      source: (B,) true classes. target: (B,) target classes.
      scale: optional (k,) per-unit scale dividing dA (e.g. the std of mean_hw A_u on clean data).
      where: optional (B,) bool examples to use.

    Returns:
      ConceptAlignment.
    """
    d = jnp.asarray(delta_activations)
    if scale is not None:
        s = jnp.asarray(scale, d.dtype)
        d = d / jnp.where(s > 0, s, 1.0)
    uc = jnp.asarray(unit_class)[None, :]
    valid = (uc >= 0) & (jnp.ones(d.shape[:1], jnp.bool_) if where is None
                         else jnp.asarray(where))[:, None]
    is_src = valid & (uc == jnp.asarray(source)[:, None])
    is_tgt = valid & (uc == jnp.asarray(target)[:, None])
    is_other = valid & ~is_src & ~is_tgt

    def mean(sel):
        n = jnp.sum(sel)
        return jnp.where(n > 0, jnp.sum(jnp.where(sel, d, 0.0)) / jnp.maximum(n, 1), jnp.nan)

    return ConceptAlignment(mean(is_src), mean(is_tgt), mean(is_other))


__all__ = [
    "ConceptAlignment", "Dissection", "MaskingCurve", "UnitSensitivity", "activation_change",
    "concept_alignment", "dissect", "dissection_iou", "masked_units_logits_fn", "top_unit_masks",
    "sensitivity_iou_correlation", "unit_activations", "unit_masking_curve", "unit_sensitivity",
    "unit_thresholds",
]
