"""The interpretability sneaking attack (ISA) of Boopathy et al. and the bound it runs into.

Boopathy et al., "Proper network interpretability helps adversarial robustness in classification",
ICML 2020 (methods.md 1.3-1.5; official code ``funcs.isa_cam`` / ``isa_ig``). ISA looks for a
targeted adversarial example x' that changes the interpretation as little as possible:

    minimise_delta  margin(x + delta) + gamma * D(x, x + delta)
    subject to      ||delta||_inf <= eps,  x + delta in [0, 1]^n,
    margin(x') = max(max_{j != t'} Z_j(x') - Z_t'(x'), -kappa)          (kappa = 0.1)

with D a discrepancy of methods.md 1.3 between class maps (CAM, CAM++, IG or the representation)
over one class (t), two classes (t, t': the "proper" measure) or all classes, in l1 or squared l2.

Algorithm (:func:`isa`), per image and vectorised over the batch:

1. eps_adv, the smallest radius at which the 10-step attack with gamma = 0 succeeds
   (:func:`jaxadv.attacks.min_eps.min_eps_bisection`, 10 rounds from eps = 0.05 in [0, 1]).
2. For each multiplier p: eps = p * eps_adv, and a bisection on gamma (from 5e-5 in [0, 1],
   10 rounds): success (margin < 0) sets gamma_min = gamma, gamma = min(2 gamma, mid); failure sets
   gamma_max = gamma, gamma = mid. The attack is rerun at gamma_min and its example kept.
   Every attack is ``num_steps`` steps from x (no random start) of
   x' <- Proj(x' - step_scale * eps * clip(grad_scale * grad loss, -1, 1)).
3. Report per image: the evaluation discrepancy (l1 or l2 divided by the clean map's range,
   methods.md 1.3), Kendall tau and Pearson rho between I(x, t) and I(x', t), against the actual
   radius ||x' - x||_inf, for the plain attack (gamma = 0 at eps_adv, the first point of the
   reference's curve: ``attacks.append(x_adv)`` before the multiplier loop) and for each
   multiplier; :func:`isa_curve` averages them and computes the normalised slope from the plain
   point on (``include_plain=False``: from the first multiplier, as jaxadv did before
   2026-12-07), and also the official code's own summary (:func:`isa_reference_summary`: per
   image over its successful points, per-image slopes summed and divided by the point count).

The loss's D over a set of class maps is their mean (1/2 of the sum for (t, t'), 1/K for all
classes, as the reference); for the representation (:func:`representation_maps`) it is the sum
over the feature map, ||A(x') - A(x)||_1 (the reference's ``rep_diff``), not a mean over
channels, which would weaken gamma k times (100x on SmallGAP) and leave the gamma search at its
cap. The report's rep measure is the per-channel l1 / range averaged over channels (methods.md
1.3).

Project choices (documented differences from the reference code): the target logit is masked out
of the margin exactly (the reference subtracts the batch's logit range); gradients are per example
(the reference differentiates the batch mean, i.e. a 1/B smaller gradient before the x1000 clip);
an attack succeeds when any iterate has a negative margin, and among successful iterates the one
with the smallest discrepancy is kept (the reference checks only the last iterate). The multiplier
sweep runs inside one compiled call (``lax.map`` over multipliers, memory of one multiplier).

Maps are given as ``ClassMapsFn``: ``maps_fn(x (B, ...), classes (B, C) int) -> (B, ..., C)``, the
maps of the C requested classes. :func:`cam_class_maps`, :func:`attribution_class_maps` and
:func:`representation_maps` build them.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv.attacks.apgd import check_int, per_example
from jaxadv.attacks.cw import margin_loss, prepare
from jaxadv.attacks.min_eps import (
    _check_positive,
    expanding_bisection,
    min_eps_bisection,
    scaled_clip_step,
)
from jaxadv.attributions import cam_plus_plus
from jaxadv.metrics.discrepancy import class_discrepancies, defined_mean, margin_lower_bound
from jaxadv.metrics.rank import kendall_tau, pearson
from jaxadv.types import Array, LogitsFn

ClassMapsFn = Callable[[Array, Array], Array]
CLASS_SETS = ("one", "two", "all")
ISA_NORMS = ("l1", "l2")


# ----------------------------------------------------------------------------- class maps


def cam_class_maps(features_fn: Callable[[Array], Array], cam_fn: Callable[[Array], Array]
                   ) -> ClassMapsFn:
    """CAM of the requested classes (methods.md 1.2): ``(x, classes (B, C)) -> (B, h, w, C)``.

    Args:
      features_fn: x -> last feature map A (B, h, w, k) (``ModelFns.features``).
      cam_fn: A -> CAMs of all classes (B, h, w, K) (``ModelFns.cam``).
    """

    def maps_fn(x, classes):
        cams = cam_fn(features_fn(x))
        return jnp.take_along_axis(cams, classes[:, None, None, :], axis=-1)

    return maps_fn


def attribution_class_maps(attribution_fn: Callable[[Array, Array], Array]) -> ClassMapsFn:
    """Class maps from a one-class attribution ``attribution_fn(x, target (B,)) -> (B, ...)``
    (IG, Grad-CAM, CAM++, ...), evaluated once per requested class: ``-> (B, ..., C)``.

    Example (Boopathy et al.'s evaluation IG: softplus network, 100-point right Riemann sum)::

        ig = lambda x, t: integrated_gradients(softplus_logits, x, t, rule="riemann_right",
                                               num_steps=100)
        maps_fn = attribution_class_maps(ig)
    """

    def maps_fn(x, classes):
        return jax.vmap(lambda c: attribution_fn(x, c), in_axes=1, out_axes=-1)(classes)

    return maps_fn


def cam_plus_plus_class_maps(features_fn: Callable[[Array], Array],
                             head_fn: Callable[[Array], Array]) -> ClassMapsFn:
    """Boopathy et al.'s CAM++ (sum_k ReLU(W_kc) A_k, GAP-linear heads) of the requested classes."""
    return attribution_class_maps(lambda x, t: cam_plus_plus(features_fn, head_fn, x, t))


def representation_maps(features_fn: Callable[[Array], Array]) -> ClassMapsFn:
    """The ``rep`` measure: the feature map A(x) (B, h, w, k) whatever the classes, its channels in
    the place of the class axis. :func:`isa`'s loss sums over them (``||A(x') - A(x)||_1`` for l1,
    the reference's ``rep_diff``: the returned function's ``loss_reduction`` is ``"sum"``); the
    report averages the per-channel l1 / range over channels (methods.md 1.3)."""

    def maps_fn(x, classes):
        del classes
        return features_fn(x)

    maps_fn.loss_reduction = "sum"
    return maps_fn


def select_classes(classes: str, labels: Array, targets: Array, num_classes: int) -> Array:
    """(B, C) class indices of a class set: one (t), two (t, t') or all (0..K-1)."""
    if classes == "one":
        return labels[:, None]
    if classes == "two":
        return jnp.stack([labels, targets], axis=1)
    if classes == "all":
        return jnp.broadcast_to(jnp.arange(num_classes), (labels.shape[0], num_classes))
    raise ValueError(f"Unknown class set {classes!r}; choose one of {CLASS_SETS}.")


def set_discrepancy(maps_clean: Array, maps_adv: Array, *, norm: str = "l1",
                    normalize: bool = False, reduction: str = "mean") -> Array:
    """Mean over the C maps (B, ..., C) of the per-map discrepancy -> (B,): with the maps of
    (t,), (t, t') or all classes this is the 1-, 2- or all-class discrepancy of methods.md 1.3.
    Normalised, maps constant on x that moved are left out of the mean
    (:func:`jaxadv.metrics.discrepancy.defined_mean`).
    ``reduction="sum"``: their sum instead (the ISA loss on the representation).
    """
    d = class_discrepancies(maps_clean, maps_adv, norm=norm, normalize=normalize)
    if reduction == "sum":
        return jnp.sum(d, axis=-1)
    if reduction != "mean":
        raise ValueError(f"Unknown reduction {reduction!r}; choose 'mean' or 'sum'.")
    return defined_mean(d) if normalize else jnp.mean(d, axis=-1)


# ----------------------------------------------------------------------------- the attack


class ISAResult(NamedTuple):
    """Per-image results of :func:`isa` (P multipliers, B images).

    Attributes:
      eps_adv: (B,) minimal radius of the gamma = 0 attack (inf where none was found).
      targets: (B,) target classes t'.
      valid: (B,) the image counts: the minimal-eps search succeeded and the clean logits rank t
        above t' (methods.md 1.5 step 3).
      multipliers: (P,).
      eps: (P, B) actual radius ||x' - x||_inf of the kept example.
      gamma: (P, B) the gamma of the kept example.
      success: (P, B) the kept example is classified as t' (margin < 0).
      discrepancy: (P, B) evaluation discrepancy (normalised by the clean map's range).
      kendall: (P, B) Kendall tau-b between I(x, t) and I(x', t).
      pearson: (P, B) Pearson rho between I(x, t) and I(x', t).
      x_adv: (P, B, ...) the kept examples (x where the attack failed).
      plain_eps, plain_success, plain_discrepancy, plain_kendall, plain_pearson: (B,) the same
        for the plain attack (gamma = 0 at eps_adv; the first point of the reference's curve);
        None in results made without it.
    """

    eps_adv: Array
    targets: Array
    valid: Array
    multipliers: Array
    eps: Array
    gamma: Array
    success: Array
    discrepancy: Array
    kendall: Array
    pearson: Array
    x_adv: Array
    plain_eps: Array | None = None
    plain_success: Array | None = None
    plain_discrepancy: Array | None = None
    plain_kendall: Array | None = None
    plain_pearson: Array | None = None


def isa(logits_fn: LogitsFn, maps_fn: ClassMapsFn, x: Array, y: Array, key: jax.Array, *,
        multipliers=(1.0, 1.2, 1.4, 1.6, 1.8, 2.0), targets="random", classes: str = "two",
        norm: str = "l1", kappa=0.1, num_steps: int = 10, step_scale=0.2, grad_scale=1000.0,
        eps_rounds: int = 10, eps_init=0.05, gamma_rounds: int = 10, gamma_init=5e-5,
        gamma_bounds: tuple[float, float] = (0.0, 1.0),
        bounds: tuple[float, float] = (0.0, 1.0), loss_reduction: str | None = None
        ) -> ISAResult:
    """The interpretability sneaking attack over an eps-multiplier sweep (module docstring).

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      maps_fn: ``(x, classes (B, C)) -> (B, ..., C)`` (see :func:`cam_class_maps`); must be
        differentiable in x (use a softplus network for IG).
      x: (B, ...) clean images in ``bounds``.
      y: (B,) int labels t.
      key: typed PRNG key (random targets).
      multipliers: (P,) eps multipliers p; eps = p * eps_adv. The paper's list is not published;
        1.0-2.0 is the project's default (methods.md 1.5).
      targets: (B,) int target classes t', or ``"random"`` (t' != t, the paper's choice) or
        ``"least_likely"``.
      classes: class set of D in the loss and the report: ``"one"``, ``"two"`` or ``"all"``.
      norm: ``"l1"`` (loss l1, report normalised l1) or ``"l2"`` (loss squared l2, report
        normalised l2).
      kappa: margin clip. num_steps: steps per attack (static). step_scale, grad_scale: the step
        rule above.
      eps_rounds, eps_init: the minimal-eps bisection (step 1).
      gamma_rounds, gamma_init, gamma_bounds: the gamma bisection (step 2); gamma_init within
        gamma_bounds (0 gives the plain attack at every multiplier).
      bounds: (low, high) box.
      loss_reduction: how the loss combines the discrepancies of the map set: ``"mean"`` (the
        1-, 2- and all-class measures) or ``"sum"``; None: ``maps_fn.loss_reduction`` if set
        (``"sum"`` for :func:`representation_maps`), else ``"mean"``.

    Returns:
      :class:`ISAResult`.

    Raises:
      ValueError: unknown class set or norm, bad counts, non-positive multipliers or scales,
        labels or targets out of range.
    """
    if classes not in CLASS_SETS:
        raise ValueError(f"Unknown class set {classes!r}; choose one of {CLASS_SETS}.")
    if norm not in ISA_NORMS:
        raise ValueError(f"Unknown norm {norm!r}; choose one of {ISA_NORMS}.")
    check_int("num_steps", num_steps, 1)
    check_int("gamma_rounds", gamma_rounds, 1)
    mult = np.asarray(multipliers, np.float32).reshape(-1)
    if mult.size == 0 or np.any(~(mult > 0)):
        raise ValueError(f"multipliers must be a non-empty list of positive numbers; got "
                         f"{multipliers}.")
    _check_positive("step_scale", step_scale)
    _check_positive("grad_scale", grad_scale)
    if not 0.0 <= gamma_bounds[0] < gamma_bounds[1]:
        raise ValueError(f"gamma_bounds must be (low, high) with 0 <= low < high; got "
                         f"{gamma_bounds}.")
    if not gamma_bounds[0] <= gamma_init <= gamma_bounds[1]:
        raise ValueError(f"gamma_init must lie in gamma_bounds {gamma_bounds}; got {gamma_init} "
                         "(a negative gamma would reward the discrepancy the attack hides).")
    if loss_reduction is None:
        loss_reduction = getattr(maps_fn, "loss_reduction", "mean")
    if loss_reduction not in ("mean", "sum"):
        raise ValueError(f"Unknown loss_reduction {loss_reduction!r}; choose 'mean' or 'sum'.")
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    logits = logits_fn(x)
    cls = select_classes(classes, y, t, logits.shape[-1])
    loss_norm = "l1" if norm == "l1" else "l2sq"
    b, dt = x.shape[0], x.dtype

    first = min_eps_bisection(logits_fn, x, y, key, targets=t, kappa=kappa, eps_init=eps_init,
                              num_rounds=eps_rounds, num_steps=num_steps,
                              step_scale=step_scale, grad_scale=grad_scale, bounds=bounds)
    eps_adv = -first.loss
    found = first.success
    rank_ok = (jnp.take_along_axis(logits, y[:, None], -1)
               > jnp.take_along_axis(logits, t[:, None], -1))[:, 0]
    clean_maps = lax.stop_gradient(maps_fn(x, cls))

    def losses(z, gamma):
        logits_z = logits_fn(z)
        m = margin_loss(logits_z, y, t, kappa)
        d = set_discrepancy(clean_maps, maps_fn(z, cls), norm=loss_norm,
                            reduction=loss_reduction)
        # Success on the unclipped margin: the kappa-clipped one never goes below 0 at kappa = 0.
        return jnp.sum(m + gamma * d), (margin_loss(logits_z, y, t, jnp.inf), d)

    grad_fn = jax.grad(losses, has_aux=True)

    def attack(eps, gamma):
        """``num_steps`` steps at radii eps (B,) and weights gamma (B,): (success, example)."""
        e = per_example(eps, x)

        def keep(z, m, d, best):
            ok, best_d, best_z = best
            better = (m < 0) & (d < best_d)
            return ok | (m < 0), jnp.where(better, d, best_d), jnp.where(
                per_example(better, x), z, best_z)

        def body(_, carry):
            z, best = carry
            g, (m, d) = grad_fn(z, gamma)
            best = keep(z, m, d, best)
            return scaled_clip_step(z, g, x, e, step_scale=step_scale, grad_scale=grad_scale,
                                    bounds=bounds), best

        init = (jnp.zeros((b,), jnp.bool_), jnp.full((b,), jnp.inf, dt), x)
        z, best = lax.fori_loop(0, num_steps, body, (x, init))
        _, (m, d) = losses(z, gamma)
        ok, _, best_z = keep(z, m, d, best)
        return ok, best_z

    def sweep_one(p):
        eps = jnp.where(found, p * eps_adv, 0.0)

        def round_(_, carry):
            gamma, g_min, g_max = carry
            ok, _ = attack(eps, gamma)
            return expanding_bisection(gamma, ok, g_min, g_max)

        full = lambda v: jnp.full((b,), v, dt)  # noqa: E731
        _, g_min, _ = lax.fori_loop(0, gamma_rounds, round_,
                                    (full(gamma_init), full(gamma_bounds[0]),
                                     full(gamma_bounds[1])))
        ok, z = attack(eps, g_min)
        ok = ok & found
        z = jnp.where(per_example(ok, x), z, x)
        return z, g_min, ok

    x_adv, gamma, success = lax.map(sweep_one, jnp.asarray(mult, dt))
    report = jax.vmap(lambda z: _report(maps_fn, x, z, y, cls, clean_maps, norm))(x_adv)
    radius = jnp.max(jnp.abs(x_adv - x).reshape(mult.size, b, -1), axis=-1)
    # The plain attack at eps_adv (gamma = 0): the reference's first point.
    plain_ok, plain_z = attack(jnp.where(found, eps_adv, 0.0), jnp.zeros((b,), dt))
    plain_ok = plain_ok & found
    plain_z = jnp.where(per_example(plain_ok, x), plain_z, x)
    plain = _report(maps_fn, x, plain_z, y, cls, clean_maps, norm)
    return ISAResult(eps_adv=jnp.where(found, eps_adv, jnp.inf), targets=t,
                     valid=found & rank_ok, multipliers=jnp.asarray(mult), eps=radius,
                     gamma=gamma, success=success, discrepancy=report[0], kendall=report[1],
                     pearson=report[2], x_adv=x_adv,
                     plain_eps=jnp.max(jnp.abs(plain_z - x).reshape(b, -1), axis=-1),
                     plain_success=plain_ok, plain_discrepancy=plain[0], plain_kendall=plain[1],
                     plain_pearson=plain[2])


def _report(maps_fn, x, x_adv, y, cls, clean_maps, norm):
    """(discrepancy, Kendall tau, Pearson rho) (B,) of one set of examples. The rank statistics
    compare the true-class maps ``maps_fn(., t)`` flattened (the whole feature map for rep)."""
    disc = set_discrepancy(clean_maps, maps_fn(x_adv, cls), norm=norm, normalize=True)
    b = x.shape[0]
    clean_t = maps_fn(x, y[:, None]).reshape(b, -1)
    adv_t = maps_fn(x_adv, y[:, None]).reshape(b, -1)
    return disc, kendall_tau(clean_t, adv_t), pearson(clean_t, adv_t)


# ----------------------------------------------------------------------------- summaries


class ISACurve(NamedTuple):
    """Discrepancy against radius, averaged over the images that count (numpy, host side).

    Attributes:
      multipliers, eps, discrepancy, kendall, pearson: means per point over the ``num_images``
        images that are valid and succeeded at every point; the discrepancy of each image is
        first made non-increasing along the points (methods.md 1.5 step 3). With the plain
        point (``includes_plain``) the first of the P + 1 points is the plain attack (gamma = 0
        at eps_adv, multiplier 1.0), else the P multipliers.
      num_images: how many images the means are over.
      includes_plain: whether the first point is the plain attack.
      normalized_slope: NS = [(D_0 - D_last) / D_0] / [(eps_last - eps_0) / eps_0].
      mean_adjacent_slope: the same ratio for each adjacent pair of multipliers, averaged.
      eps_vs_log_d_slope: least-squares slope of eps regressed on log D.
      reference_mean_discrepancy, reference_normalized_slope: the summary the official code
        prints (the end of ``funcs.isa_cam`` / ``isa_ig``; :func:`isa_reference_summary`), over
        each image's own successful points rather than over the images that succeed everywhere.
    """

    multipliers: np.ndarray
    eps: np.ndarray
    discrepancy: np.ndarray
    kendall: np.ndarray
    pearson: np.ndarray
    num_images: int
    normalized_slope: float
    mean_adjacent_slope: float
    eps_vs_log_d_slope: float
    includes_plain: bool = False
    reference_mean_discrepancy: float = float("nan")
    reference_normalized_slope: float = float("nan")


def isa_reference_summary(discrepancy: np.ndarray, eps: np.ndarray, counted: np.ndarray
                          ) -> tuple[float, float]:
    """(mean discrepancy, NS) as the official ISA code summarises its curves (numpy, host side).

    ``discrepancy``, ``eps``: (P, B) per point and image, in the curve's order; ``counted``: (P, B)
    bool, the points that count (valid image, successful attack); points with an undefined (NaN)
    discrepancy are skipped too, as the reference's ``d >= 0`` test skips them. For each image, over
    its counted points only: the discrepancy made non-increasing (a running minimum), and, where its
    first and last values differ, NS_i = [(D_0 - D_last) / D_0] / [(eps_last - eps_0) / eps_0] with
    the actual radii of its first and last counted points. Images whose discrepancy does not change
    (one point, or a flat curve) are left out. Returns (the sum of the counted images' discrepancies
    / n, sum_i NS_i / n), where n is the number of *points* of those images: the reference divides
    the sum of per-image slopes by the number of points, not of images, so its NS is about 1 /
    (points per image) of a mean slope (kept here, since the official run prints it;
    :attr:`ISACurve.normalized_slope` is the slope of the mean curve). NaN where no image counts.
    Its success test differs from jaxadv's (the target logit above the true one, not the top class),
    so only ``counted`` decides here.
    """
    disc, radius = np.asarray(discrepancy, np.float64), np.asarray(eps, np.float64)
    counted = np.asarray(counted, bool)
    if not (disc.shape == radius.shape == counted.shape and disc.ndim == 2):
        raise ValueError(f"discrepancy, eps and counted must share one (P, B) shape; got "
                         f"{disc.shape}, {radius.shape} and {counted.shape}.")
    counted = counted & ~np.isnan(disc)
    total_d = total_ns = 0.0
    points = 0
    for i in range(disc.shape[1]):
        rows = np.flatnonzero(counted[:, i])
        if rows.size == 0:
            continue
        d = np.minimum.accumulate(disc[rows, i])
        e0, e1 = radius[rows[0], i], radius[rows[-1], i]
        if d[0] == d[-1]:
            continue
        total_d += float(d.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            total_ns += float(((d[0] - d[-1]) * e0) / ((e1 - e0) * d[0]))
        points += rows.size
    if points == 0:
        return float("nan"), float("nan")
    return total_d / points, total_ns / points


def _relative_slope(d0, d1, e0, e1):
    de = (e1 - e0) / e0 if e0 > 0 else np.nan
    return ((d0 - d1) / d0) / de if d0 > 0 and de else np.nan


def isa_curve(result: ISAResult, *, include_plain: bool = True) -> ISACurve:
    """Summarises an :class:`ISAResult` into mean curves and slopes (:class:`ISACurve`).

    ``include_plain``: start the curve (and NS's D_0, eps_0) at the plain attack, as the
    reference does (module docstring), where the result has it; False: at the first multiplier.
    """
    r = jax.tree_util.tree_map(np.asarray, result._replace(x_adv=np.zeros(())))
    order = np.argsort(r.multipliers, kind="stable")
    mult, eps_pts, disc_pts = r.multipliers[order], r.eps[order], r.discrepancy[order]
    kendall_pts, pearson_pts, success = r.kendall[order], r.pearson[order], r.success[order]
    plain = include_plain and r.plain_eps is not None
    if plain:
        first = lambda a, v: np.concatenate([np.asarray(v)[None], a])  # noqa: E731
        mult = first(mult, np.ones((), mult.dtype))
        eps_pts, disc_pts = first(eps_pts, r.plain_eps), first(disc_pts, r.plain_discrepancy)
        kendall_pts = first(kendall_pts, r.plain_kendall)
        pearson_pts = first(pearson_pts, r.plain_pearson)
        success = first(success, r.plain_success)
    keep = r.valid & np.all(success, axis=0)
    ref_d, ref_ns = isa_reference_summary(disc_pts, eps_pts, r.valid[None, :] & success)
    disc = np.minimum.accumulate(disc_pts[:, keep], axis=0)
    mean = lambda a: a.mean(axis=1) if keep.any() else np.full(len(mult), np.nan)  # noqa: E731
    eps, d = mean(eps_pts[:, keep]), mean(disc)
    pairs = [_relative_slope(d[i], d[i + 1], eps[i], eps[i + 1]) for i in range(len(d) - 1)]
    logd = np.log(np.maximum(d, 1e-30))
    ok = np.isfinite(logd) & np.isfinite(eps)
    reg = (np.polyfit(logd[ok], eps[ok], 1)[0]
           if ok.sum() >= 2 and np.ptp(logd[ok]) > 0 else np.nan)
    return ISACurve(
        multipliers=mult, eps=eps, discrepancy=d,
        kendall=mean(kendall_pts[:, keep]), pearson=mean(pearson_pts[:, keep]),
        num_images=int(keep.sum()),
        normalized_slope=float(_relative_slope(d[0], d[-1], eps[0], eps[-1])),
        mean_adjacent_slope=float(np.nanmean(pairs)) if pairs and np.isfinite(pairs).any()
        else float("nan"),
        eps_vs_log_d_slope=float(reg), includes_plain=plain,
        reference_mean_discrepancy=ref_d, reference_normalized_slope=ref_ns)


class MarginDiscrepancy(NamedTuple):
    """The pair of methods.md 1.4 per image (all (B,)).

    Attributes:
      bound: (f_t(x) - f_t'(x)) / 2 on the clean logits.
      discrepancy: two-class l1 discrepancy (||dI_t||_1 + ||dI_t'||_1) / 2, divided by the map
        size for CAM (``completeness="mean"``) or not for IG (``"sum"``).
      success: x' is classified as t' (f_t'(x') >= max_j f_j(x')).
    """

    bound: Array
    discrepancy: Array
    success: Array


def margin_discrepancy(logits_fn: LogitsFn, maps_fn: ClassMapsFn, x: Array, x_adv: Array,
                       y: Array, targets: Array, *, completeness: str = "mean"
                       ) -> MarginDiscrepancy:
    """Margin against discrepancy (methods.md 1.4): for a GAP-CAM network (mean CAM = logit) or
    IG with a zero baseline (sum IG = logit - logit at 0), every successful targeted x' has
    ``discrepancy >= bound``; the attack's points lie above the diagonal.

    Args:
      logits_fn: images -> logits (B, K).
      maps_fn: class maps (:func:`cam_class_maps` or IG through :func:`attribution_class_maps`).
      x, x_adv: (B, ...) clean and perturbed images.
      y, targets: (B,) true and target classes.
      completeness: ``"mean"`` (CAM: divide by the map size h w) or ``"sum"`` (IG).

    Returns:
      :class:`MarginDiscrepancy`.
    """
    if completeness not in ("mean", "sum"):
        raise ValueError(f"completeness must be 'mean' (CAM) or 'sum' (IG); got {completeness!r}.")
    y, targets = jnp.asarray(y), jnp.asarray(targets)
    cls = jnp.stack([y, targets], axis=1)
    clean, adv = maps_fn(x, cls), maps_fn(x_adv, cls)
    d = set_discrepancy(clean, adv, norm="l1")
    if completeness == "mean":
        d = d / np.prod(clean.shape[1:-1])
    logits_adv = logits_fn(x_adv)
    success = jnp.argmax(logits_adv, -1) == targets
    return MarginDiscrepancy(margin_lower_bound(logits_fn(x), y, targets), d, success)


__all__ = ["ISACurve", "ISAResult", "MarginDiscrepancy", "attribution_class_maps",
           "cam_class_maps", "cam_plus_plus_class_maps", "isa", "isa_curve", "margin_discrepancy",
           "representation_maps", "select_classes", "set_discrepancy"]
