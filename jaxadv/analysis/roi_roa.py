"""Region of Importance (RoI) vs Region of Attack (RoA): segregation, isolation, neutralisation.

Chattopadhyay, Yip, Tan & Chattopadhyay, "Spatially Correlated Patterns in Adversarial Images"
(arXiv 2011.10794; methods.md section 3). A model relies on a Region of Importance of the input; an
attacker changes a Region of Attack. The paper segregates the two, isolates the regions that matter
for classification, for vulnerability or for both, and *neutralises* the part that is vulnerable but
unimportant (RoA minus RoI) as a post-hoc defence. Its abstract gives no saliency method, threshold
or fill, so every definition below is the project's buildable choice of methods.md 3.2 [rec], with
its parameters exposed:

1. Importance map s_I(x) (:func:`importance_map`): Grad-CAM on the last feature map (default),
   vanilla gradient, gradient x input, integrated gradients, CAM or occlusion (all from
   :mod:`jaxadv.attributions`); summed over channels, upsampled to H x W, normalised to [0, 1].
2. Attack map s_A = sum_c |delta| (:func:`attack_map`), optionally averaged over several attacks or
   restarts, smoothed (Gaussian or box, sigma ~ 1-2 px) and averaged per k x k block.
3. Segregation (:func:`segregate`): RoI = the top p_I fraction of pixels by s_I, RoA = the top p_A
   by s_A (defaults 0.2), or thresholds s > tau.
4. Isolation (:func:`isolate`): RoI & RoA, RoI \\ RoA, RoA \\ RoI and the rest.
5. Neutralisation (:func:`neutralize`): x~' = x' (1 - M) + v M with M = RoA \\ RoI and v one of
   0, the dataset mean, a blur of x' or uniform noise. Post hoc the RoA has to be estimated without
   the clean x: the oracle uses the true delta (:func:`oracle_attack_map`, an upper bound), the
   proxy re-attacks the input (:func:`proxy_attack_map`), the prior is a data-wide mean map
   (:func:`prior_attack_map`).
6. Metrics (:func:`overlap_metrics`, :func:`neutralization_outcome`): IoU(RoI, RoA),
   |RoI & RoA| / |RoA|, the share of ||delta||_2^2 inside the RoI; accuracy on clean, attacked,
   neutralised and neutralised clean inputs, and the recovery rate. :func:`neutralization_sweep`
   runs a grid of p_I x p_A x fills in one compiled call (fractions are traced values).

Shapes: images x (B, H, W, C) in ``bounds``; per-pixel maps and masks (B, H, W). Every function is
pure, batched (examples never interact) and jit-able; hyperparameters are keyword-only.
"""

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv import attributions, validation
from jaxadv.attacks.base import AttackResult
from jaxadv.types import Array, LogitsFn, PRNGKey

IMPORTANCE_METHODS = ("grad_cam", "cam", "saliency", "gradient_x_input", "integrated_gradients",
                      "occlusion")
SIGN_RULES = ("abs", "positive", "raw")
# Per-method default of ``sign`` (project's choice): gradient-type maps are signed, and a pixel
# matters whichever way it pushes the logit; Grad-CAM is already ReLU'd; CAM and occlusion keep
# their sign (a negative occlusion drop means the patch hurts the class) and min-max maps it.
_DEFAULT_SIGN = {"grad_cam": "raw", "cam": "raw", "saliency": "abs", "gradient_x_input": "abs",
                 "integrated_gradients": "abs", "occlusion": "raw"}
SMOOTHING = ("gaussian", "box")
FILLS = ("zero", "mean", "blur", "noise")

AttackFn = Callable[[LogitsFn, Array, Array, PRNGKey], AttackResult]


# --------------------------------------------------------------------------- argument checks

def _concrete(v) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _check_fraction(name: str, p) -> None:
    if p is None or not _concrete(p):
        return
    a = np.asarray(p, np.float64)
    if a.size == 0 or not np.all((a > 0.0) & (a <= 1.0)):
        raise ValueError(f"{name} must lie in (0, 1] (the share of pixels selected); got {p}. "
                         f"Pass a fraction such as {name}=0.2, or select by value with a threshold "
                         "(tau_importance / tau_attack).")


def _check_maps(a: Array, name: str) -> None:
    if getattr(a, "ndim", 0) != 3:
        raise ValueError(f"{name} must be a batch of per-pixel maps (B, H, W); got shape "
                         f"{getattr(a, 'shape', None)}. Reduce channels first (importance_map and "
                         "attack_map return (B, H, W)).")


def _check_same(a: Array, b: Array, na: str, nb: str, fix: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{na} has shape {tuple(a.shape)} but {nb} has shape {tuple(b.shape)}; "
                         f"they must match: {fix}.")


def _check_images(x: Array, name: str = "x") -> None:
    if getattr(x, "ndim", 0) != 4:
        raise ValueError(f"{name} must be images (B, H, W, C); got shape "
                         f"{getattr(x, 'shape', None)}. Add a channel axis for grey images "
                         "(x[..., None]).")


def _check_mask_for(x: Array, mask: Array, name: str = "mask") -> None:
    if tuple(mask.shape) != tuple(x.shape[:3]):
        raise ValueError(f"{name} must be (B, H, W) = {tuple(x.shape[:3])} to match the images "
                         f"{tuple(x.shape)}; got {tuple(mask.shape)}. Build it from maps of the same "
                         "batch (segregate / isolate return (B, H, W)).")


# --------------------------------------------------------------------------- 1. importance

def importance_map(logits_fn: LogitsFn, x: Array, target, *, method: str = "grad_cam",
                   features_fn=None, head_fn=None, sign: str | None = None,
                   normalization: str | None = "min_max", upsample_method: str = "bilinear",
                   ig_num_steps: int = 32, ig_chunk_size: int | str | None = "auto",
                   occlusion_window=4, occlusion_strides=1, occlusion_fill=0.0) -> Array:
    """Importance map s_I(x) of the target class, per pixel, in [0, 1] (methods.md 3.2 item 1).

    Chattopadhyay et al. (2020) give no saliency method; this is the project's choice [rec]:
    the attribution ``method`` of :mod:`jaxadv.attributions`, then ``sign`` (|a|, ReLU(a) or a as
    is, per element), a sum over channels (input-shaped maps) or an upsampling of the (h, w) map
    to (H, W) (CAM-type maps), then per-example ``normalization``.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) inputs.
      target: int or (B,) class whose evidence is mapped (the label, or the prediction post hoc).
      method: one of ``IMPORTANCE_METHODS``; ``grad_cam`` (default) and ``cam`` need
        ``features_fn`` (x -> A (B, h, w, k), the last feature map) and ``head_fn`` (A -> logits).
      features_fn: see ``method``.
      head_fn: see ``method``.
      sign: ``abs``, ``positive`` or ``raw``; None = the method's default (``abs`` for the gradient
        maps, ``raw`` for Grad-CAM (already ReLU'd), CAM and occlusion).
      normalization: per-example ``min_max`` (default, to [0, 1]), ``max_abs`` or None (any method
        of :func:`jaxadv.attributions.normalize`). Segregation by top-p does not depend on it.
      upsample_method: for CAM-type maps (``jax.image.resize`` method).
      ig_num_steps: integrated-gradients steps (zero baseline, right Riemann sum as methods.md 1.2).
      ig_chunk_size: IG path points per model call (``"auto"``, the default of
        :func:`jaxadv.attributions.integrated_gradients`; None = all at once).
      occlusion_window: occlusion patch size k (int or pair).
      occlusion_strides: occlusion stride (<= window).
      occlusion_fill: value the occluding patch takes.

    Returns:
      (B, H, W) importance per pixel.

    Raises:
      ValueError: unknown method or sign, missing features_fn/head_fn, non-image x.
    """
    _check_images(x)
    if method not in IMPORTANCE_METHODS:
        raise ValueError(f"Unknown importance method {method!r}; choose one of "
                         f"{IMPORTANCE_METHODS}.")
    sign = _DEFAULT_SIGN[method] if sign is None else sign
    if sign not in SIGN_RULES:
        raise ValueError(f"Unknown sign rule {sign!r}; choose one of {SIGN_RULES}.")
    if method in ("grad_cam", "cam"):
        if features_fn is None or head_fn is None:
            raise ValueError(f"method={method!r} needs features_fn and head_fn (the model's last "
                             "feature map and head, e.g. jaxadv.models.model_fns(model, variables)"
                             ".features / .head); or choose method='saliency'.")
        fn = attributions.grad_cam if method == "grad_cam" else attributions.cam
        m = fn(features_fn, head_fn, x, target)
        m = _apply_sign(m, sign)
        m = attributions.upsample(m, x.shape[1:3], method=upsample_method)
    else:
        if method == "saliency":
            a = attributions.saliency(logits_fn, x, target)
        elif method == "gradient_x_input":
            a = attributions.gradient_x_input(logits_fn, x, target)
        elif method == "integrated_gradients":
            a = attributions.integrated_gradients(logits_fn, x, target, num_steps=ig_num_steps,
                                                  rule="riemann_right", chunk_size=ig_chunk_size)
        else:
            a = attributions.occlusion(logits_fn, x, target, window=occlusion_window,
                                       strides=occlusion_strides, fill=occlusion_fill)
        m = attributions.reduce_channels(_apply_sign(a, sign), method="sum")
    return m if normalization is None else attributions.normalize(m, method=normalization)


def _apply_sign(a: Array, sign: str) -> Array:
    if sign == "abs":
        return jnp.abs(a)
    if sign == "positive":
        return jax.nn.relu(a)
    return a


# --------------------------------------------------------------------------- 2. attack map

def box_filter(maps: Array, *, size: int = 3) -> Array:
    """Mean over the size x size window around each pixel, the window cut at the border (the mean
    is over the pixels inside the image). maps (B, H, W) -> (B, H, W); ``size`` odd."""
    _check_maps(maps, "maps")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1 or size % 2 == 0:
        raise ValueError(f"box size must be an odd int >= 1 (a window centred on the pixel); got "
                         f"{size!r}.")
    r = size // 2

    def band(n):
        i = np.arange(n)
        m = (np.abs(i[:, None] - i[None, :]) <= r).astype(np.float64)
        return jnp.asarray(m / m.sum(1, keepdims=True), maps.dtype)

    return jnp.einsum("ih,bhw,jw->bij", band(maps.shape[1]), maps, band(maps.shape[2]))


def block_average(maps: Array, *, block_size: int) -> Array:
    """Block version of a map: every pixel gets the mean of its k x k cell (methods.md 3.2 item 2).

    Cells tile the image from the top-left; where H or W is not a multiple of k, the last cells
    are smaller and averaged over their own pixels. maps (B, H, W) -> (B, H, W), piecewise constant.
    """
    _check_maps(maps, "maps")
    if (isinstance(block_size, bool) or not isinstance(block_size, int | np.integer)
            or block_size < 1):
        raise ValueError(f"block_size must be an int >= 1; got {block_size!r}.")
    k = int(block_size)
    b, h, w = maps.shape
    nh, nw = -(-h // k), -(-w // k)
    pad = ((0, 0), (0, nh * k - h), (0, nw * k - w))
    sums = jnp.pad(maps, pad).reshape(b, nh, k, nw, k).sum((2, 4))
    counts = np.pad(np.ones((h, w)), pad[1:]).reshape(nh, k, nw, k).sum((1, 3))
    means = sums / jnp.asarray(counts, maps.dtype)
    return jnp.repeat(jnp.repeat(means, k, axis=1), k, axis=2)[:, :h, :w]


def attack_map(delta: Array, *, smoothing: str | None = None, sigma=1.0,
               radius: int | None = None, box_size: int = 3, block_size: int | None = None,
               normalize_each: bool = True, normalization: str | None = "max_abs") -> Array:
    """Attack map s_A = sum_c |delta| (methods.md 3.2 item 2), optionally pooled and smoothed.

    Project's choices [rec]: several perturbations (attacks or restarts) stacked on a leading axis
    are averaged after each is divided by its per-image maximum (``normalize_each``), so an l-inf
    attack of size 0.3 and a small l2 attack weigh the same; smoothing (a Gaussian of std
    ``sigma`` px with reflecting borders, or a box mean) brings out spatial co-location and breaks
    the ties of l-inf perturbations (|delta| = eps on most pixels); ``block_size`` then averages
    per k x k cell.

    Args:
      delta: x' - x, (B, H, W, C), or (S, B, H, W, C) for S attacks / restarts.
      smoothing: None, ``gaussian`` or ``box``.
      sigma: Gaussian std in pixels (may be traced when ``radius`` is given).
      radius: Gaussian half-width (static); default int(4 sigma + 0.5).
      box_size: odd box width.
      block_size: k for the block version (None = per pixel).
      normalize_each: divide each stacked map by its maximum before averaging.
      normalization: per-example normalisation of the result (``max_abs``: to [0, 1]; None keeps
        the units of |delta|).

    Returns:
      (B, H, W) attack map.
    """
    if getattr(delta, "ndim", 0) not in (4, 5):
        raise ValueError(f"delta must be (B, H, W, C) or (S, B, H, W, C) perturbations x' - x; got "
                         f"shape {getattr(delta, 'shape', None)}.")
    s = jnp.sum(jnp.abs(delta), axis=-1)
    if s.ndim == 4:
        if normalize_each:
            s = s / jnp.maximum(jnp.max(s, axis=(2, 3), keepdims=True), 1e-12)
        s = jnp.mean(s, axis=0)
    if smoothing == "gaussian":
        s = attributions.gaussian_blur(s[..., None], sigma, radius=radius)[..., 0]
    elif smoothing == "box":
        s = box_filter(s, size=box_size)
    elif smoothing is not None:
        raise ValueError(f"Unknown smoothing {smoothing!r}; choose None or one of {SMOOTHING}.")
    if block_size is not None:
        s = block_average(s, block_size=block_size)
    return s if normalization is None else attributions.normalize(s, method=normalization)


def oracle_attack_map(x: Array, x_adv: Array, **attack_map_kwargs) -> Array:
    """Oracle RoA scores from the true perturbation x' - x (an upper bound: it needs the clean x).
    x, x_adv (B, H, W, C) -> (B, H, W); keywords go to :func:`attack_map`."""
    _check_images(x)
    _check_same(x, x_adv, "x", "x_adv", "pass the clean images and their adversarial examples")
    return attack_map(x_adv - x, **attack_map_kwargs)


def proxy_attack_map(attack_fn: AttackFn, logits_fn: LogitsFn, x_in: Array, key: PRNGKey, *,
                     num_restarts: int = 1, **attack_map_kwargs) -> Array:
    """Proxy RoA scores for an input of unknown origin: re-attack it and take |A(x_in) - x_in|.

    Post hoc the clean image is unknown, so the input x_in (adversarial or clean) is attacked
    away from its own prediction argmax f(x_in); where the first attack moved pixels, a second
    one tends to move the same ones (methods.md 3.2 item 5b). With ``num_restarts`` > 1 the
    restarts (keys split from ``key``) are averaged as in :func:`attack_map`.

    Args:
      attack_fn: ``(logits_fn, x, y, key) -> AttackResult`` with its hyperparameters bound (e.g.
        ``jaxadv.attacks.get_attack("pgd", eps=0.3, step_size=0.01, num_steps=40)``).
      logits_fn: images -> logits.
      x_in: (B, H, W, C) the inputs to defend.
      key: typed PRNG key.
      num_restarts: attacks averaged (static, >= 1).
      **attack_map_kwargs: smoothing etc. of :func:`attack_map`.

    Returns:
      (B, H, W).
    """
    _check_images(x_in, "x_in")
    num_restarts = validation.check_int("num_restarts", num_restarts, 1)
    y_hat = jnp.argmax(logits_fn(x_in), axis=-1)
    if num_restarts == 1:
        delta = attack_fn(logits_fn, x_in, y_hat, key).x_adv - x_in
    else:
        keys = jax.random.split(key, num_restarts)
        delta = jax.lax.map(lambda k: attack_fn(logits_fn, x_in, y_hat, k).x_adv - x_in, keys)
    return attack_map(delta, **attack_map_kwargs)


def prior_attack_map(attack_maps: Array, *, weights: Array | None = None) -> Array:
    """Data-wide RoA prior: the (weighted) mean of per-image attack maps (methods.md 3.2 item 5c).

    Args:
      attack_maps: (N, H, W) maps of :func:`attack_map` over a data set (held out from the
        evaluation images), normalised per image.
      weights: optional (N,) non-negative weights (e.g. 1 for successful attacks, 0 otherwise).

    Returns:
      (H, W); broadcast it to (B, H, W) to segregate a batch with one shared RoA.
    """
    _check_maps(attack_maps, "attack_maps")
    if weights is None:
        return jnp.mean(attack_maps, axis=0)
    w = jnp.asarray(weights, attack_maps.dtype)
    if w.shape != attack_maps.shape[:1]:
        raise ValueError(f"weights must have shape ({attack_maps.shape[0]},); got {w.shape}.")
    return jnp.tensordot(w, attack_maps, axes=1) / jnp.maximum(jnp.sum(w), 1e-12)


# --------------------------------------------------------------------------- 3-4. regions

def top_fraction_mask(scores: Array, fraction, *, key: PRNGKey | None = None) -> Array:
    """(B, ...) bool mask of the top ``fraction`` of each example's entries.

    Exactly k = clip(round(fraction * N), 1, N) entries are selected per example (N entries per
    example), whatever the ties. Equal scores are ranked by position (row-major, earlier first)
    without ``key``, in a random order drawn from ``key`` with it. Maps with many ties need the
    key: the |delta| of an l-inf sign attack is eps on most pixels, so the top 20% by position are
    the top rows of the image, not a region of the attack. ``fraction`` in (0, 1] may be traced
    (no recompilation in a sweep).
    """
    if getattr(scores, "ndim", 0) < 2:
        raise ValueError(f"scores must be a batch (B, ...); got shape {getattr(scores, 'shape', None)}.")
    _check_fraction("fraction", fraction)
    flat = scores.reshape(scores.shape[0], -1)
    n = flat.shape[1]
    k = jnp.clip(jnp.round(jnp.asarray(fraction, jnp.float32) * n), 1, n).astype(jnp.int32)
    if key is None:
        order = jnp.argsort(-flat, axis=-1, stable=True)
    else:  # by score, ties by a uniform draw (lexsort: the last key is the primary one)
        order = jnp.lexsort((jax.random.uniform(key, flat.shape), -flat), axis=-1)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return (ranks < k).reshape(scores.shape)


def random_region_like(mask: Array, key: PRNGKey) -> Array:
    """A control region: per example, as many pixels as ``mask`` holds, drawn uniformly at random.

    Neutralising it instead of RoA \\ RoI tells how much of the recovery comes from blocking
    *those* pixels rather than any pixels of the same area. mask (B, ...) -> (B, ...) bool.
    """
    if getattr(mask, "ndim", 0) < 2:
        raise ValueError(f"mask must be a batch (B, ...); got shape {getattr(mask, 'shape', None)}.")
    flat = mask.reshape(mask.shape[0], -1)
    count = jnp.sum(flat.astype(jnp.int32), axis=-1, keepdims=True)
    order = jnp.argsort(jax.random.uniform(key, flat.shape), axis=-1)
    ranks = jnp.argsort(order, axis=-1)
    return (ranks < count).reshape(mask.shape)


class Regions(NamedTuple):
    """RoI and RoA masks, (B, H, W) bool each."""

    roi: Array
    roa: Array


def segregate(importance: Array, attack: Array, *, p_importance=0.2, p_attack=0.2,
              tau_importance=None, tau_attack=None, key: PRNGKey | None = None) -> Regions:
    """Segregation (methods.md 3.2 item 3): RoI = top p_I of s_I, RoA = top p_A of s_A.

    A threshold ``tau_*`` (RoI = s_I > tau_I) replaces the fraction where given. Defaults p_I =
    p_A = 0.2 are the project's choice [rec]; fractions and thresholds may be traced.

    Args:
      importance: (B, H, W) s_I.
      attack: (B, H, W) s_A (broadcast a prior (H, W) map to (B, H, W) first).
      p_importance: fraction in (0, 1].
      p_attack: fraction in (0, 1].
      tau_importance: optional threshold for the RoI.
      tau_attack: optional threshold for the RoA.
      key: optional PRNG key that breaks ties among equal scores at random
        (:func:`top_fraction_mask`; without it, by position).

    Returns:
      Regions(roi, roa), (B, H, W) bool each.
    """
    _check_maps(importance, "importance")
    _check_maps(attack, "attack")
    _check_same(importance, attack, "importance", "attack",
                "compute both maps on the same batch at the input resolution (importance_map "
                "upsamples CAMs to (H, W); broadcast a prior map with jnp.broadcast_to)")
    k_roi, k_roa = (None, None) if key is None else jax.random.split(key)
    roi = (importance > tau_importance if tau_importance is not None
           else top_fraction_mask(importance, p_importance, key=k_roi))
    roa = (attack > tau_attack if tau_attack is not None
           else top_fraction_mask(attack, p_attack, key=k_roa))
    return Regions(roi, roa)


class Isolation(NamedTuple):
    """The four disjoint regions of methods.md 3.2 item 4, (B, H, W) bool each; they partition the
    image."""

    both: Array             # RoI & RoA: critical for classification and attack
    importance_only: Array  # RoI \ RoA
    attack_only: Array      # RoA \ RoI: vulnerable but unimportant (what neutralisation blocks)
    rest: Array


def isolate(roi: Array, roa: Array) -> Isolation:
    """Four-way isolation of (B, H, W) RoI and RoA masks (bool or {0, 1})."""
    _check_same(roi, roa, "roi", "roa", "segregate both regions on the same batch")
    roi, roa = roi.astype(bool), roa.astype(bool)
    return Isolation(roi & roa, roi & ~roa, roa & ~roi, ~roi & ~roa)


def isolation_labels(roi: Array, roa: Array) -> Array:
    """(B, H, W) int32 codes for figures: 0 rest, 1 RoI only, 2 RoA only, 3 both."""
    _check_same(roi, roa, "roi", "roa", "segregate both regions on the same batch")
    return roi.astype(jnp.int32) + 2 * roa.astype(jnp.int32)


# --------------------------------------------------------------------------- 5. neutralisation

def fill_value(x: Array, fill: str = "zero", *, key: PRNGKey | None = None, mean=None,
               blur_sigma=1.5, bounds: tuple[float, float] = (0.0, 1.0)) -> Array:
    """The fill v that replaces the neutralised pixels of x (methods.md 3.2 item 5), shaped like x.

    Args:
      x: (B, H, W, C) the input being neutralised (x' for attacked inputs).
      fill: ``zero``; ``mean`` (the data set mean ``mean``: a scalar, (C,) per channel or
        (H, W, C) per pixel); ``blur`` (x blurred by a Gaussian of std ``blur_sigma`` px, so the
        blocked pixels take their neighbourhood's value); ``noise`` (uniform in ``bounds``, drawn
        with ``key``).
      key: typed key, required by ``noise``.
      mean: required by ``mean``.
      blur_sigma: std of the ``blur`` fill in pixels (static).
      bounds: range of the ``noise`` fill.

    Returns:
      (B, H, W, C).
    """
    _check_images(x)
    if fill == "zero":
        return jnp.zeros_like(x)
    if fill == "mean":
        if mean is None:
            raise ValueError("fill='mean' needs mean= (the data set's mean: a scalar, a per-channel "
                             "(C,) or a per-pixel (H, W, C) array, e.g. train_images.mean((0, 1, 2))).")
        m = jnp.asarray(mean, x.dtype)
        try:
            return jnp.broadcast_to(m, x.shape)
        except ValueError:
            raise ValueError(f"mean of shape {m.shape} does not broadcast to the images "
                             f"{x.shape}; pass a scalar, (C,) or (H, W, C).") from None
    if fill == "blur":
        return attributions.gaussian_blur(x, blur_sigma)
    if fill == "noise":
        if key is None:
            raise ValueError("fill='noise' needs key= (e.g. jax.random.key(0)): the noise is drawn "
                             "from an explicit PRNG key.")
        return jax.random.uniform(key, x.shape, x.dtype, bounds[0], bounds[1])
    raise ValueError(f"Unknown fill {fill!r}; choose one of {FILLS}.")


def fill_values(x: Array, fills: Sequence[str] = FILLS, **kwargs) -> Array:
    """:func:`fill_value` for each name in ``fills``, stacked: (F, B, H, W, C)."""
    if isinstance(fills, str) or len(fills) == 0:
        raise ValueError(f"fills must be a non-empty sequence of names from {FILLS}; got {fills!r}.")
    return jnp.stack([fill_value(x, f, **kwargs) for f in fills])


def neutralize(x: Array, mask: Array, fill="zero", **fill_kwargs) -> Array:
    """Neutralisation x~ = x (1 - M) + v M (methods.md 3.2 item 5; Chattopadhyay et al. 2020).

    Args:
      x: (B, H, W, C) input (x' for attacked inputs).
      mask: (B, H, W) M, bool or in [0, 1]; usually ``isolate(roi, roa).attack_only``.
      fill: a name of ``FILLS`` (see :func:`fill_value`, which gets ``fill_kwargs``), a scalar, or
        an array shaped like x.

    Returns:
      (B, H, W, C).
    """
    _check_images(x)
    _check_mask_for(x, mask)
    if isinstance(fill, str):
        v = fill_value(x, fill, **fill_kwargs)
    else:
        v = jnp.asarray(fill, x.dtype)
        if v.ndim not in (0, 4) or (v.ndim == 4 and v.shape != x.shape):
            raise ValueError(f"fill must be a name in {FILLS}, a scalar or an array shaped like x "
                             f"{tuple(x.shape)}; got shape {v.shape}.")
    m = mask.astype(x.dtype)[..., None]
    return x * (1.0 - m) + v * m


# --------------------------------------------------------------------------- 6. metrics

class OverlapMetrics(NamedTuple):
    """Per-example RoI/RoA agreement, (B,) each (methods.md 3.2 item 6).

    Attributes:
      iou: |RoI & RoA| / |RoI | RoA| (0 where both are empty).
      overlap: |RoI & RoA| / |RoA| (0 where the RoA is empty).
      energy_share: sum over the RoI of delta^2 / ||delta||_2^2 (0 where delta = 0).
    """

    iou: Array
    overlap: Array
    energy_share: Array


def overlap_metrics(roi: Array, roa: Array, delta: Array) -> OverlapMetrics:
    """IoU and overlap of (B, H, W) RoI/RoA masks, and the share of ||delta||^2 inside the RoI,
    delta (B, H, W, C). For reference, random regions of fractions p_I, p_A give
    E[overlap] = p_I and IoU ~ p_I p_A / (p_I + p_A - p_I p_A)."""
    _check_same(roi, roa, "roi", "roa", "segregate both regions on the same batch")
    _check_images(delta, "delta")
    _check_mask_for(delta, roi, "roi")
    roi, roa = roi.astype(bool), roa.astype(bool)
    ax = (1, 2)
    inter = jnp.sum(roi & roa, axis=ax).astype(delta.dtype)
    union = jnp.sum(roi | roa, axis=ax).astype(delta.dtype)
    size_a = jnp.sum(roa, axis=ax).astype(delta.dtype)
    e = jnp.sum(delta * delta, axis=-1)
    total = jnp.sum(e, axis=ax)
    inside = jnp.sum(jnp.where(roi, e, 0.0), axis=ax)

    def ratio(a, b):
        return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)

    return OverlapMetrics(ratio(inter, union), ratio(inter, size_a), ratio(inside, total))


class NeutralizationOutcome(NamedTuple):
    """Per-example correctness, (B,) bool each (or (..., B) from a sweep).

    Attributes:
      clean_correct: f(x) = y.
      adv_correct: f(x') = y.
      neutralized_correct: f(x~') = y.
      neutralized_clean_correct: f(x~) = y, the clean input neutralised the same way (the
        defence's cost on clean data).
    """

    clean_correct: Array
    adv_correct: Array
    neutralized_correct: Array
    neutralized_clean_correct: Array


def neutralization_outcome(logits_fn: LogitsFn, x: Array, y: Array, x_adv: Array,
                           x_neutralized: Array, x_clean_neutralized: Array
                           ) -> NeutralizationOutcome:
    """Correctness of the model on x, x', x~' and x~ (all (B, H, W, C)); y (B,) labels."""
    _check_images(x)
    for name, v in (("x_adv", x_adv), ("x_neutralized", x_neutralized),
                    ("x_clean_neutralized", x_clean_neutralized)):
        _check_same(x, v, "x", name, "every input must be the same batch of images")
    if tuple(jnp.shape(y)) != tuple(x.shape[:1]):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x; got {jnp.shape(y)}.")
    preds = jnp.argmax(logits_fn(jnp.concatenate([x, x_adv, x_neutralized, x_clean_neutralized])),
                       axis=-1).reshape(4, -1)
    ok = preds == y[None]
    return NeutralizationOutcome(ok[0], ok[1], ok[2], ok[3])


def summarize_outcome(outcome: NeutralizationOutcome) -> dict[str, Array]:
    """Rates over the last (batch) axis of an outcome (any leading sweep axes are kept).

    ``recovery_rate`` is the share of attacked images (clean correct, attack successful) whose
    prediction returns to y after neutralisation; NaN where no image was attacked.
    """
    attacked = outcome.clean_correct & ~outcome.adv_correct
    attacked = jnp.broadcast_to(attacked, outcome.neutralized_correct.shape)
    num = jnp.sum(attacked, axis=-1)
    rec = jnp.sum(attacked & outcome.neutralized_correct, axis=-1)
    return {
        "clean_accuracy": jnp.mean(outcome.clean_correct, axis=-1),
        "attacked_accuracy": jnp.mean(outcome.adv_correct, axis=-1),
        "neutralized_accuracy": jnp.mean(outcome.neutralized_correct, axis=-1),
        "neutralized_clean_accuracy": jnp.mean(outcome.neutralized_clean_correct, axis=-1),
        "recovery_rate": jnp.where(num > 0, rec / jnp.maximum(num, 1), jnp.nan),
        "num_attacked": num,
    }


class SweepOutcome(NamedTuple):
    """Result of :func:`neutralization_sweep`.

    Attributes:
      outcome: NeutralizationOutcome; clean_correct and adv_correct (B,), the neutralised ones
        (P, Q, F, B) over p_importance x p_attack x fills.
      mask_fraction: (P, Q, B) share of pixels neutralised in x'.
      clean_mask_fraction: (P, Q, B) share neutralised in x.
    """

    outcome: NeutralizationOutcome
    mask_fraction: Array
    clean_mask_fraction: Array


def neutralization_sweep(logits_fn: LogitsFn, x: Array, y: Array, x_adv: Array, *,
                         importance_adv: Array, attack_adv: Array, importance_clean: Array,
                         attack_clean: Array, p_importance, p_attack, fills_adv: Array,
                         fills_clean: Array, key: PRNGKey | None = None) -> SweepOutcome:
    """Neutralise RoA \\ RoI over a grid of p_I x p_A x fill values in one compiled program.

    For every (p_I, p_A, fill) the attacked input x' is segregated with its maps (importance_adv,
    attack_adv), its RoA \\ RoI replaced by the fill, and classified; the clean input x is treated
    the same way with its own maps (importance_clean, attack_clean), which measures what the
    defence costs on clean data. Which maps to pass is the experiment's choice: the oracle RoA uses
    x' - x for both, the proxy re-attacks each input, the prior is one broadcast map.

    Args:
      logits_fn: images -> logits.
      x: (B, H, W, C) clean images; y: (B,) labels; x_adv: (B, H, W, C) attacked images.
      importance_adv: (B, H, W) s_I of x' (keyword-only like the rest).
      attack_adv: (B, H, W) s_A for x'.
      importance_clean: (B, H, W) s_I of x.
      attack_clean: (B, H, W) s_A for x.
      p_importance: (P,) fractions (traced values are fine).
      p_attack: (Q,) fractions.
      fills_adv: (F, B, H, W, C) fill values for x' (:func:`fill_values`).
      fills_clean: (F, B, H, W, C) fill values for x.
      key: optional PRNG key that breaks ties among equal scores at random (:func:`segregate`;
        maps with many ties, such as the |delta| of an l-inf sign attack, need it). The same key
        serves every fraction, so each image's regions grow by one random order of its ties
        (a larger p takes every pixel of a smaller one), and :func:`segregate` with this key
        gives the regions of any one (p_I, p_A). Without it ties go by position.

    Returns:
      SweepOutcome (summarise with :func:`summarize_outcome`).
    """
    _check_images(x)
    _check_same(x, x_adv, "x", "x_adv", "pass the clean images and their adversarial examples")
    for name, m in (("importance_adv", importance_adv), ("attack_adv", attack_adv),
                    ("importance_clean", importance_clean), ("attack_clean", attack_clean)):
        _check_maps(m, name)
        _check_mask_for(x, m, name)
    for name, f in (("fills_adv", fills_adv), ("fills_clean", fills_clean)):
        if f.ndim != 5 or tuple(f.shape[1:]) != tuple(x.shape):
            raise ValueError(f"{name} must be (F, B, H, W, C) with (B, H, W, C) = {tuple(x.shape)}; "
                             f"got {tuple(f.shape)}. Build it with fill_values(x, fills, ...).")
    if fills_adv.shape[0] != fills_clean.shape[0]:
        raise ValueError(f"fills_adv and fills_clean must hold the same fills; got "
                         f"{fills_adv.shape[0]} and {fills_clean.shape[0]}.")
    p_i = jnp.atleast_1d(jnp.asarray(p_importance, jnp.float32))
    p_a = jnp.atleast_1d(jnp.asarray(p_attack, jnp.float32))
    _check_fraction("p_importance", p_importance)
    _check_fraction("p_attack", p_attack)
    if p_i.ndim != 1 or p_a.ndim != 1:
        raise ValueError("p_importance and p_attack must be scalars or 1-d arrays of fractions.")

    def correct(inp):
        return jnp.argmax(logits_fn(inp), axis=-1) == y

    def one(pi, pa, imp, att, inp, fills):
        regions = segregate(imp, att, p_importance=pi, p_attack=pa, key=key)
        m = isolate(regions.roi, regions.roa).attack_only
        ok = jax.lax.map(lambda v: correct(neutralize(inp, m, v)), fills)  # (F, B)
        return ok, jnp.mean(m, axis=(1, 2))

    def grid(imp, att, inp, fills):
        over_pa = jax.vmap(lambda pi, pa: one(pi, pa, imp, att, inp, fills), in_axes=(None, 0))
        return jax.lax.map(lambda pi: over_pa(pi, p_a), p_i)

    ok_adv, frac_adv = grid(importance_adv, attack_adv, x_adv, fills_adv)
    ok_clean, frac_clean = grid(importance_clean, attack_clean, x, fills_clean)
    outcome = NeutralizationOutcome(correct(x), correct(x_adv), ok_adv, ok_clean)
    return SweepOutcome(outcome, frac_adv, frac_clean)
