"""The gradient attack family: FGSM/FGM, FGSM with random start, BIM, PGD, MI-FGSM, TRADES-KL PGD.

Everything is built on one engine, :func:`pgd_objective`, which runs projected gradient ascent on
any per-example objective ``objective_fn(x_adv) -> (B,)`` inside ``B_norm(x, eps) ∩ bounds``:

    x_0     = Proj(x + u),  u ~ uniform in the eps-ball (random start) or u = 0
    x_{t+1} = Proj(x_t + step_size * direction_t),  direction_t = step_rule(grad objective(x_t))

with the loop in ``lax.fori_loop``, restarts vmapped, and best-so-far tracking through
:func:`jaxadv.attacks.base.update_best` over every iterate x_0 .. x_T (so an input broken at any
step stays broken, and the clean input counts when there is no random start). ``eps`` and
``step_size`` may be Python floats, traced scalars or (B,) arrays: they are never static, so a
sweep over them compiles once. ``num_steps`` and ``num_restarts`` are static.

Classification attacks (:func:`pgd`, :func:`fgsm`, ...) build the objective from a loss:
``"ce"`` (cross-entropy), ``"cw"`` (Carlini-Wagner margin), ``"dlr"`` (Croce & Hein 2020),
``"kl"`` (the TRADES inner loss KL(p(x) || p(x')), Zhang et al. 2019), or a callable
``(logits, labels) -> (B,)``. Untargeted attacks maximise ``loss(logits, y)``; targeted attacks
(``targets`` = (B,) labels, ``"random"`` or ``"least_likely"``) maximise ``-loss(logits, t)``
(targeted DLR: ``dlr_targeted(logits, y, t)``) and succeed when the prediction equals ``t``.

References: Goodfellow et al. 2015 (FGSM); Kurakin et al. 2017 (BIM / I-FGSM); Madry et al. 2018
(PGD); Wong et al. 2020 (FGSM with random start); Dong et al. 2018 (MI-FGSM); Tramer & Boneh 2019
(sparse l1 descent); Zhang et al. 2019 (TRADES); Boopathy et al. 2020 (evaluation preset).
"""

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv import validation
from jaxadv.attacks import losses as losses_lib
from jaxadv.attacks import projections
from jaxadv.attacks.base import AttackResult, is_success, update_best, update_best_at_step
from jaxadv.attacks.step_rules import get_step_rule, l1_box_fill_rule
from jaxadv.attacks.sweep import best_over
from jaxadv.attacks.targets import check_targets_differ, resolve_targets
from jaxadv.types import Array, LogitsFn

KL_LOSSES = ("kl", "trades")


def _is_tracer(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def _check_range(name: str, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes}); got range "
                         f"[{labels.min()}, {labels.max()}].")


def _per_example(v, x: Array) -> Array:
    v = jnp.asarray(v, x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def pgd_objective(objective_fn: Callable, x: Array, key: jax.Array, *, eps, step_size,
                  num_steps: int, norm: str = "linf", bounds: tuple[float, float] = (0.0, 1.0),
                  random_start: bool | str = True, num_restarts: int = 1,
                  step_rule="steepest", l1_sparsity: float = 0.99, momentum_decay: float = 1.0,
                  has_aux: bool = False, unroll: bool | None = None,
                  x_init: Array | None = None, track_start: bool = True) -> AttackResult:
    """Projected gradient ascent on a custom per-example objective (the engine of every attack).

    Args:
      objective_fn: ``x_adv (B, ...) -> (B,)`` to maximise, or with ``has_aux`` a pair
        ``(objective (B,), success (B,) bool)``. Examples must not interact (each example's
        objective may depend only on its own input), so one backward pass gives every gradient.
      x: (B, ...) clean inputs inside ``bounds``.
      key: typed PRNG key (random start; restart r uses ``jax.random.split(key, R)[r]`` when R > 1).
      eps: radius of the ``norm`` ball; scalar or (B,); traced values welcome.
      step_size: scale of each step; scalar or (B,); traced values welcome.
      num_steps: T >= 0 (static).
      norm: 'linf', 'l2' or 'l1'.
      bounds: (low, high) box, e.g. (0, 1) for images.
      random_start: where each run starts: True or 'ball' a uniform point of the eps-ball,
        'radial' a uniform direction at a radius uniform in [0, eps] (torchattacks' l2 start;
        see :func:`jaxadv.attacks.projections.random_start`), both clipped to the box; False x.
      num_restarts: R >= 1 independent runs (vmapped); the best per example is returned.
      step_rule: see :mod:`jaxadv.attacks.step_rules` ("steepest", "sign", "normalized",
        "sparse_l1", "momentum", a StepRule, or an optax GradientTransformation).
      l1_sparsity: q of the sparse l1 direction (Tramer & Boneh 2019; 0.99 keeps the top 1%).
      momentum_decay: mu of the "momentum" rule.
      has_aux: whether ``objective_fn`` also returns per-example success.
      unroll: unroll the step loop (True) or keep it a ``lax.fori_loop`` (False). None (default)
        keeps the loop unless ``num_steps <= UNROLL_MAX_STEPS`` on CPU (0 unless the environment
        variable JAXADV_UNROLL_MAX_STEPS says otherwise). jaxadv's models run a loop step as fast
        as an unrolled one on CPU (``jaxadv.models.fastpath``; SmallGAP, 100 images: 26.9 vs
        27.0 ms, ``python -m experiments.benchmarks.loop_speed --second_order --out
        results/loop_speed.json``) and compile in half the time in a loop (0.90 vs 1.66 s); a
        model whose convolutions are XLA's own runs loop bodies about 2.5x slower on CPU (68.6
        vs 26.9 ms), where unrolling pays at a compile time that grows with the step count.
        Results agree up to floating-point rounding (a sign step can flip where a gradient
        coordinate is near zero).
      x_init: optional (B, ...) start, used instead of ``random_start`` (projected into the
        eps-ball and the box first): a warm start, or another library's random start for a
        paired comparison. Only with ``num_restarts=1``.
      track_start: whether the start itself competes for the best iterate (True, the default:
        best-so-far over x_0 ... x_T). False leaves it out (the iterates after the first step
        only), so that a one-step attack returns its stepped point as FGSM is defined, even where
        the step lowered the objective (:func:`fgsm` without random start).

    Returns:
      AttackResult: ``x_adv`` (B, ...) the best iterate per example (successful first, then the
      highest objective), ``success`` (B,) true if any iterate succeeded (all False without
      ``has_aux``), ``loss`` (B,) the objective at ``x_adv``.

    Raises:
      ValueError: negative eps or step_size, bad counts, unknown norm or step rule, restarts
        without a random start, or an objective of the wrong shape.
    """
    projections.check_norm(norm)
    validation.check_nonnegative("eps", eps)
    validation.check_nonnegative("step_size", step_size)
    validation.check_int("num_steps", num_steps, 0)
    validation.check_int("num_restarts", num_restarts, 1)
    start = projections.check_random_start(random_start)
    if num_restarts > 1 and start is None:
        raise ValueError(f"num_restarts={num_restarts} without random_start: every restart would "
                         "be identical; set random_start=True or num_restarts=1.")
    if bounds[0] >= bounds[1]:
        raise ValueError(f"bounds must be (low, high) with low < high; got {bounds}.")
    projections.check_in_bounds(x, bounds)
    x = jnp.asarray(x)
    projections.check_eps_shape(eps, x)
    if x_init is not None:
        projections.check_x_init(x_init, x, num_restarts)
    b = x.shape[0]
    rule = get_step_rule(step_rule, norm, l1_sparsity=l1_sparsity, bounds=bounds,
                         momentum_decay=momentum_decay)
    step = _per_example(step_size, x)

    evaluate = summed_objective(objective_fn, b, x.dtype, has_aux=has_aux)

    value_and_grad = jax.value_and_grad(evaluate, has_aux=True)

    def feasible(x_adv):
        return projections.project_to_feasible(x_adv, x, eps, norm, bounds)

    def run(run_key):
        if x_init is not None:
            x0 = feasible(jnp.asarray(x_init, x.dtype))
        elif start is not None:
            x0 = feasible(x + projections.random_start(run_key, x, eps, norm,
                                                       distribution=start))
        else:
            x0 = projections.clip_to_bounds(x, bounds)  # x itself: checked to lie in bounds
        best0 = AttackResult(x0, jnp.zeros((b,), jnp.bool_), jnp.full((b,), -jnp.inf, x.dtype))

        def body(i, carry):
            x_t, state, best = carry
            (_, (obj, succ)), g = value_and_grad(x_t)
            best = update_best_at_step(best, i, x_t, succ, obj, track_start=track_start)
            g = jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g))
            direction, state = rule.update(g, state, x_t)
            return feasible(x_t + step * direction.astype(x.dtype)), state, best

        carry = (x0, rule.init(x0), best0)
        if num_steps:
            carry = lax.fori_loop(0, num_steps, body, carry,
                                  unroll=True if resolve_unroll(unroll, num_steps) else 1)
        x_last, _, best = carry
        _, (obj, succ) = evaluate(x_last)
        return update_best(best, x_last, succ, obj)

    if num_restarts == 1:
        return run(key)
    return best_over(jax.vmap(run)(jax.random.split(key, num_restarts)))


def summed_objective(objective_fn: Callable, batch_size: int, dtype, *, has_aux: bool
                     ) -> Callable:
    """``z -> (sum of objectives, (objectives (B,), success (B,)))`` for ``jax.value_and_grad``:
    checks that ``objective_fn`` gives one value per example; without ``has_aux`` success is all
    False. Shared by the PGD engines (:func:`pgd_objective`, masked PGD)."""

    def evaluate(z):
        out = objective_fn(z)
        obj, succ = out if has_aux else (out, jnp.zeros((batch_size,), jnp.bool_))
        if obj.shape != (batch_size,):
            raise ValueError(f"objective_fn must return one value per example, shape "
                             f"({batch_size},); got {obj.shape}.")
        obj = obj.astype(dtype)
        return jnp.sum(obj), (obj, succ.astype(jnp.bool_))

    return evaluate


# Step loops up to this many steps are unrolled on CPU when ``unroll=None``: none by default (see
# ``pgd``'s ``unroll``); the environment variable JAXADV_UNROLL_MAX_STEPS, read at import, sets it.
UNROLL_MAX_STEPS = int(os.environ.get("JAXADV_UNROLL_MAX_STEPS", "0"))


def resolve_unroll(unroll: bool | None, num_steps: int) -> bool:
    """Whether a step loop of ``num_steps`` is unrolled for the ``unroll`` argument of an attack
    (None: on CPU up to ``UNROLL_MAX_STEPS`` steps, see :func:`pgd`)."""
    if unroll is None:
        return jax.default_backend() == "cpu" and num_steps <= UNROLL_MAX_STEPS
    return bool(unroll)


def _num_classes(logits_fn: LogitsFn, x: Array) -> int:
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"logits_fn must map x {x.shape} to logits ({x.shape[0]}, K); got "
                         f"{out.shape}.")
    return out.shape[-1]


def classification_objective(logits_fn: LogitsFn, x: Array, y: Array, *, loss_fn="ce",
                             targets=None, key: jax.Array | None = None
                             ) -> tuple[Callable, Array | None]:
    """The objective of a classification attack, ``x_adv -> (objective (B,), success (B,))``.

    Validates the inputs where they are concrete (labels and targets in range, shapes).

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs.
      y: (B,) int labels.
      loss_fn: 'ce', 'cw', 'dlr', 'kl' (TRADES: KL(p(x) || p(x_adv)), untargeted only) or a
        callable ``(logits, labels) -> (B,)``.
      targets: None (untargeted), (B,) int target labels, 'random' or 'least_likely'.
      key: needed for ``targets='random'``.

    Returns:
      ``(objective_fn, targets)``: the objective (success = misclassified, or classified as the
      target) and the resolved (B,) targets (None when untargeted).
    """
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels must be integers; got dtype {y.dtype}.")
    projections.check_attack_inputs(x, y)
    num_classes = _num_classes(logits_fn, x)
    if not _is_tracer(y):
        _check_range("labels", np.asarray(y), num_classes)
    if isinstance(targets, str) and targets == "random" and key is None:
        raise ValueError("targets='random' needs a key.")
    t = resolve_targets(targets, key=None if key is None else jax.random.fold_in(key, 1), y=y,
                        logits_clean_fn=lambda: logits_fn(x))
    if t is not None and not _is_tracer(t):
        _check_range("targets", np.asarray(t), num_classes)
        check_targets_differ(targets, y)

    if isinstance(loss_fn, str) and loss_fn in KL_LOSSES:
        if t is not None:
            raise ValueError("The TRADES KL loss is untargeted; pass targets=None.")
        logits_clean = lax.stop_gradient(logits_fn(x))

        def kl_objective(x_adv):
            logits = logits_fn(x_adv)
            return (losses_lib.kl_divergence(logits, logits_clean),
                    # The KL attack ranks iterates by divergence alone: it is a training-time inner
                    # maximisation, not a misclassification attack (success is reported below).
                    jnp.zeros(y.shape, jnp.bool_))

        return kl_objective, None

    is_dlr = isinstance(loss_fn, str) and loss_fn == "dlr"
    loss = losses_lib.get_loss(loss_fn)

    def objective(x_adv):
        logits = logits_fn(x_adv)
        if t is None:
            obj = loss(logits, y)
        elif is_dlr:
            obj = losses_lib.dlr_targeted(logits, y, t)
        else:
            obj = -loss(logits, t)
        return obj, is_success(logits, y, t)

    return objective, t


def pgd(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps, step_size,
        num_steps: int, norm: str = "linf", loss_fn="ce", targets=None,
        random_start: bool | str = True, num_restarts: int = 1, step_rule="steepest",
        bounds: tuple[float, float] = (0.0, 1.0), l1_sparsity: float = 0.99,
        momentum_decay: float = 1.0, unroll: bool | None = None,
        x_init: Array | None = None, track_start: bool = True) -> AttackResult:
    """Projected gradient descent (Madry et al. 2018) on a classifier, l-inf / l2 / l1.

    Steps follow the norm's steepest-ascent direction by default (sign for l-inf, normalised
    gradient for l2, sparse l1 descent of Tramer & Boneh 2019 for l1), with a uniform random start
    in the eps-ball and best-so-far tracking; see :func:`pgd_objective`.

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K); eval mode, normalisation inside.
      x: (B, H, W, C) clean images in ``bounds``.
      y: (B,) int labels in [0, K).
      key: typed PRNG key.
      eps: ball radius (scalar or (B,), traceable).
      step_size: step scale (scalar or (B,), traceable).
      num_steps: number of steps T (static).
      norm: 'linf', 'l2' or 'l1'.
      loss_fn: 'ce', 'cw', 'dlr', 'kl' (TRADES inner loss) or ``(logits, labels) -> (B,)``.
      targets: None, (B,) target labels, 'random' or 'least_likely'.
      random_start: True or 'ball' (uniform in the eps-ball), 'radial' (radius uniform in
        [0, eps]) or False (start at x); see :func:`pgd_objective`.
      num_restarts: R (vmapped; needs random_start).
      step_rule: 'steepest', 'sign', 'normalized', 'sparse_l1', 'momentum', or an optax
        GradientTransformation (use a unit learning rate; ``step_size`` scales its updates).
      bounds: (low, high) box.
      l1_sparsity: q of the sparse l1 direction.
      momentum_decay: mu of the 'momentum' rule.
      unroll: unroll the step loop (see :func:`pgd_objective`; None: on CPU up to 50 steps).
      x_init: optional (B, H, W, C) start instead of ``random_start`` (see :func:`pgd_objective`).
      track_start: whether the start competes for the best iterate (see :func:`pgd_objective`).

    Returns:
      AttackResult with ``x_adv`` (B, H, W, C), ``success`` (B,), ``loss`` (B,).

    Raises:
      ValueError: eps < 0, unknown norm, labels or targets out of range, shape mismatch, ...
    """
    x = jnp.asarray(x)
    projections.check_norm(norm)
    validation.check_nonnegative("eps", eps)
    objective, t = classification_objective(logits_fn, x, y, loss_fn=loss_fn, targets=targets,
                                            key=key)
    result = pgd_objective(objective, x, key, eps=eps, step_size=step_size, num_steps=num_steps,
                           norm=norm, bounds=bounds, random_start=random_start,
                           num_restarts=num_restarts, step_rule=step_rule,
                           l1_sparsity=l1_sparsity, momentum_decay=momentum_decay, has_aux=True,
                           unroll=unroll, x_init=x_init, track_start=track_start)
    if isinstance(loss_fn, str) and loss_fn in KL_LOSSES:
        result = result._replace(success=is_success(logits_fn(result.x_adv), jnp.asarray(y)))
    return result


def fgsm(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps, norm: str = "linf",
         loss_fn="ce", targets=None, bounds: tuple[float, float] = (0.0, 1.0),
         random_start: bool = False, step_size=None, l1_sparsity: float = 1.0) -> AttackResult:
    """One-step fast gradient method (Goodfellow et al. 2015), l-inf (FGSM), l2 or l1 (FGM).

    Without random start, ``x_adv = clip(x + eps * d)`` with ``d`` the steepest-ascent direction
    of the loss gradient ``g`` at x: ``sign(g)`` (l-inf); ``g / ||g||_2`` (l2); for l1 with
    ``l1_sparsity=1`` (the default), the exact l1 steepest ascent inside the box, a maximiser of
    ``g . delta`` over the l1 ball and the box: the budget goes to the largest ``|g_i|``, and
    where that coordinate reaches its bound first, the rest to the next ones in order
    (:func:`jaxadv.attacks.step_rules.l1_box_fill_direction`); ``l1_sparsity < 1`` spreads it
    over the top ``(1-q)`` share of coordinates (Tramer & Boneh 2019), skipping coordinates
    stuck on a bound. On a linear model these are the closed-form maximisers of the linearised
    loss.

    With ``random_start=True`` this is "FGSM with random start" of fast adversarial training
    (Wong et al. 2020): start uniformly in the eps-box, step ``step_size`` (default 1.25 eps),
    project. Best-so-far tracking covers the start and the stepped point.

    Args: as :func:`pgd`; ``step_size`` defaults to eps (1.25 eps with random start).

    Returns:
      AttackResult (x_adv (B, ...), success (B,), loss (B,)).
    """
    if step_size is None:
        step_size = 1.25 * jnp.asarray(eps) if random_start else eps
    step_rule = "steepest"
    if norm == "l1" and l1_sparsity == 1:
        step_rule = l1_box_fill_rule(budget=step_size, bounds=bounds)
    # Without random start the stepped point is the result (FGSM's definition), even where the
    # step lowered the loss; with it, the start competes too (Wong et al.'s best-so-far).
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=1, norm=norm,
               loss_fn=loss_fn, targets=targets, random_start=random_start, bounds=bounds,
               l1_sparsity=l1_sparsity, step_rule=step_rule, track_start=bool(random_start))


def fgsm_rs(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps, step_size=None,
            norm: str = "linf", loss_fn="ce", targets=None,
            bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """FGSM with random start (Wong et al. 2020, "Fast is better than free"): uniform start in
    the eps-ball, one step of ``step_size`` (default 1.25 eps), projection. See :func:`fgsm`."""
    return fgsm(logits_fn, x, y, key, eps=eps, norm=norm, loss_fn=loss_fn, targets=targets,
                bounds=bounds, random_start=True, step_size=step_size)


def bim(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps, num_steps: int = 10,
        step_size=None, norm: str = "linf", loss_fn="ce", targets=None,
        bounds: tuple[float, float] = (0.0, 1.0), l1_sparsity: float = 0.99) -> AttackResult:
    """BIM / I-FGSM (Kurakin et al. 2017): PGD from x (no random start), ``step_size`` default
    ``eps / num_steps`` (methods.md 2.2). Returns AttackResult (x_adv (B, ...), success, loss)."""
    validation.check_int("num_steps", num_steps, 1)
    if step_size is None:
        step_size = jnp.asarray(eps) / num_steps
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
               loss_fn=loss_fn, targets=targets, random_start=False, bounds=bounds,
               l1_sparsity=l1_sparsity)


def mi_fgsm(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps,
            num_steps: int = 10, step_size=None, decay: float = 1.0, norm: str = "linf",
            loss_fn="ce", targets=None, bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """MI-FGSM (Dong et al. 2018): ``m <- decay m + g / ||g||_1``; ``x <- Proj(x + alpha sign(m))``
    (normalised m for l2), from x, ``alpha = eps / num_steps`` by default.

    Returns AttackResult (x_adv (B, ...), success (B,), loss (B,))."""
    validation.check_int("num_steps", num_steps, 1)
    if step_size is None:
        step_size = jnp.asarray(eps) / num_steps
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
               loss_fn=loss_fn, targets=targets, random_start=False, bounds=bounds,
               step_rule="momentum", momentum_decay=decay)


def trades_kl_pgd(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps, step_size,
                  num_steps: int, norm: str = "linf", random_start: bool = True,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """The TRADES inner maximisation (Zhang et al. 2019): PGD on KL(p(x) || p(x_adv)) with the
    clean distribution held fixed, from a uniform random start (methods.md 1.6; TRADES' own code
    starts at x + 0.001 N(0, 1); the KL has zero gradient at x_adv = x, so some start is needed).

    Iterates are ranked by KL alone; ``success`` reports misclassification of the returned
    ``x_adv``. Returns AttackResult (x_adv (B, ...), success (B,), loss = KL (B,))."""
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
               loss_fn="kl", random_start=random_start, bounds=bounds)


def pgd_boopathy_eval(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, eps,
                      num_steps: int = 200, step_size=0.01,
                      bounds: tuple[float, float] = (0.0, 1.0), unroll: bool | None = None
                      ) -> AttackResult:
    """Boopathy et al. (2020)'s evaluation PGD (methods.md 1.8): untargeted l-inf PGD on CE, **no
    random start**, absolute step 0.01 for every dataset, ``num_steps`` in {1, 10, 100, 200}.

    Returns AttackResult (x_adv (B, ...), success (B,), loss (B,))."""
    return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, num_steps=num_steps,
               norm="linf", loss_fn="ce", random_start=False, bounds=bounds, unroll=unroll)


__all__ = ["bim", "classification_objective", "fgsm", "fgsm_rs", "mi_fgsm", "pgd",
           "pgd_boopathy_eval", "pgd_objective", "trades_kl_pgd"]
