"""Integrated Gradients with an explicit quadrature rule, baselines and a memory budget.

Sundararajan, Taly & Yan, "Axiomatic attribution for deep networks", ICML 2017:

    IG_i(x, c) = (x_i - b_i) * int_0^1 d f_c(b + a (x - b)) / dx_i  da
               ~ (x_i - b_i) * sum_j w_j  d f_c(b + a_j (x - b)) / dx_i

Implementations differ in the quadrature (a_j, w_j), so the rule is an argument:

| rule | a_j (n points) | w_j | used by |
|---|---|---|---|
| ``riemann_left`` | (j-1)/n, j=1..n | 1/n | |
| ``riemann_right`` | j/n | 1/n | Boopathy et al. (100 steps) and the IG-Norm path (5 steps) |
| ``riemann_middle`` | (j-1/2)/n | 1/n | |
| ``riemann_trapezoid`` | (j-1)/(n-1) | 1/n, halved at both ends | Captum (weights sum to 1 - 1/n) |
| ``trapezoid`` | (j-1)/(n-1) | 1/(n-1), halved at both ends | the textbook trapezoid rule |
| ``gausslegendre`` | (1 + t_j)/2 | u_j/2 (Gauss-Legendre nodes t, weights u) | Captum's default |

The ``riemann_*`` and ``gausslegendre`` rules are exactly Captum's ``approximation_methods``, so
jaxadv and Captum agree to rounding. Captum's ``riemann_trapezoid`` is kept as Captum has it for
parity: its weights sum to 1 - 1/n, so it underestimates IG by about 1/n; ``trapezoid`` is the
correct rule (weights sum to 1). PAIR ``saliency`` uses the left Riemann sum. Aliases: ``left``,
``right``, ``middle``, ``gauss_legendre``.

Memory: ``chunk_size`` path points are evaluated per model call (one (chunk_size * B)-image
batch), and the chunks are folded with ``lax.scan`` into a running sum, so peak memory is one
chunk's activations whatever ``num_steps`` is (Captum evaluates all n * B points at once by
default). ``chunk_size=None`` evaluates all points in one call. The default ``"auto"``
(:func:`jaxadv.attributions.auto_chunk_size`) takes about 16 images per call on CPU for models
on jaxadv's fast path (all at once for XLA's own convolutions), where a few points per call is
also the faster (IG, 50 points, one host device of a 2-core VM: PreAct
ResNet-18 at batch 16, 5.0 s at 1 or 2 points per call and 6.0 s all at once; SmallGAP at batch
128, 0.09 s at 1 point and 0.18 s all at once: ``python -m experiments.benchmarks.attributions
--models smallgap,preact_resnet18 --chunk_sweep 1,2,4,8,auto,all --out
results/attributions_chunks_1dev.json``), and all points at once on accelerators unless an
estimate of their memory passes half the device's.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.attributions import _common
from jaxadv.attributions.blur_ig import gaussian_blur
from jaxadv.types import Array, LogitsFn, PRNGKey

QUADRATURE_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
                    "trapezoid", "gausslegendre")
_ALIASES = {"left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle",
            "gauss_legendre": "gausslegendre",
            "gauss-legendre": "gausslegendre"}
BASELINES = ("zero", "blur", "uniform")


def quadrature(rule: str, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes a_j in [0, 1] and weights w_j (float64 numpy, shape (num_steps,)) of ``rule``.

    Raises:
      ValueError: unknown rule, or num_steps < 1 (< 2 for the trapezoid).
    """
    name = _ALIASES.get(rule, rule) if isinstance(rule, str) else rule
    if name not in QUADRATURE_RULES:
        raise ValueError(f"Unknown quadrature rule {rule!r}; choose one of {QUADRATURE_RULES} "
                         f"(or the aliases {sorted(_ALIASES)}).")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps must be a Python int (it fixes the shapes); got {num_steps!r}.")
    n = int(num_steps)
    needs_two = name in ("riemann_trapezoid", "trapezoid")
    if n < 1 or (needs_two and n < 2):
        raise ValueError(f"num_steps must be >= {2 if needs_two else 1} for rule {name!r}; got "
                         f"{num_steps}.")
    j = np.arange(n, dtype=np.float64)
    w = np.full(n, 1.0 / n)
    if name == "riemann_left":
        a = j / n
    elif name == "riemann_right":
        a = (j + 1) / n
    elif name == "riemann_middle":
        a = (j + 0.5) / n
    elif name in ("riemann_trapezoid", "trapezoid"):
        a = np.linspace(0.0, 1.0, n)
        if name == "trapezoid":
            w = np.full(n, 1.0 / (n - 1))
        w[0] /= 2
        w[-1] /= 2
    else:
        t, u = np.polynomial.legendre.leggauss(n)
        a, w = 0.5 * (1.0 + t), 0.5 * u
    return a, w


def make_baseline(x: Array, baseline="zero", *, key: PRNGKey | None = None,
                  blur_sigma: float = 5.0, bounds: tuple[float, float] = (0.0, 1.0)) -> Array:
    """The IG baseline for x, shaped like x.

    Args:
      x: (B, H, W, C) inputs.
      baseline: ``"zero"``; ``"blur"`` (x blurred by a Gaussian of std ``blur_sigma`` pixels,
        Sturmfels et al. 2020); ``"uniform"`` (uniform noise in ``bounds``, needs ``key``); a float
        (constant image); or an array shaped like x or like one example x[0] (shared by the batch).
      key: typed key for the uniform baseline.
      blur_sigma: std of the blur, in pixels.
      bounds: range of the uniform baseline.

    Raises:
      ValueError: unknown name, missing key, or a baseline array of the wrong shape.
    """
    if isinstance(baseline, str):
        if baseline == "zero":
            return jnp.zeros_like(x)
        if baseline == "blur":
            if not (_common.is_concrete(blur_sigma) and np.isfinite(blur_sigma)
                    and blur_sigma >= 0):
                raise ValueError(f"baseline='blur' needs a static, finite blur_sigma >= 0 (the "
                                 f"blur's std in pixels); got {blur_sigma!r}.")
            return gaussian_blur(x, blur_sigma, radius=int(4.0 * blur_sigma + 0.5))
        if baseline == "uniform":
            if key is None:
                raise ValueError("baseline='uniform' needs a key (jax.random.key(...)).")
            return jax.random.uniform(key, x.shape, x.dtype, bounds[0], bounds[1])
        raise ValueError(f"Unknown baseline {baseline!r}; choose one of {BASELINES}, a float or "
                         "an array shaped like x.")
    return _common.constant_or_array(baseline, x, "baseline")


def _path_sum(stack_grad_fn, start, end, *, num_steps, rule, chunk_size, unroll=False):
    """(end - start) * sum_j w_j g(start + a_j (end - start)), where ``stack_grad_fn`` maps a stack
    of path points (c, B, ...) to their gradients (c, B, ...)."""
    _common.check_batch(end, "end")
    if start.shape != end.shape:
        raise ValueError(f"start and end must have the same shape; got {start.shape} and "
                         f"{end.shape}.")
    alphas, weights = quadrature(rule, num_steps)
    diff = end - start
    ones = (1,) * end.ndim

    def point_fn(a):
        return stack_grad_fn(start[None] + jnp.reshape(a, (-1,) + ones) * diff[None])

    chunk = _common.resolve_chunk_size(chunk_size, len(alphas), batch=end.shape[0],
                                       one_point=lambda: point_fn(jnp.ones((1,), end.dtype)))
    return diff * _common.chunked_weighted_sum(point_fn, alphas, weights, chunk, end,
                                               unroll=unroll)


def path_integrated_gradients(value_fn: Callable[[Array], Array], start: Array, end: Array, *,
                              num_steps: int = 50, rule: str = "gausslegendre",
                              chunk_size: int | str | None = "auto") -> Array:
    """(end - start) * sum_j w_j grad value_fn(start + a_j (end - start)): IG along a straight path.

    Args:
      value_fn: z (B, ...) -> per-example values (B,) (a target logit, a per-example loss, ...).
        It is called on one path point of the whole batch at a time (``vmap`` over the points of
        a chunk), so it may close over per-example data such as labels.
      start, end: (B, ...) path ends (baseline and input for IG; x and x' for IG-Norm).
      num_steps, rule: the quadrature (see the module table).
      chunk_size: path points per model call (memory budget); None = all at once; ``"auto"``
        (default): the rule of ``jaxadv.attributions.auto_chunk_size`` (module docstring).

    Returns:
      Attributions shaped like ``end``. Their sum over non-batch axes approximates
      value_fn(end) - value_fn(start) (completeness).
    """
    _common.check_images(start, "start")
    _common.check_images(end, "end")
    _check_per_example(value_fn, end, "value_fn")
    grad_fn = jax.grad(lambda z: jnp.sum(value_fn(z)))
    return _path_sum(jax.vmap(grad_fn), start, end, num_steps=num_steps, rule=rule,
                     chunk_size=chunk_size)


def _check_per_example(fn: Callable[[Array], Array], z: Array, name: str) -> None:
    """``fn`` must map the batch z (B, ...) to one value per example (B,): the gradient of their
    sum is then each example's own. A mean over the batch would scale every map by 1/B."""
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(z.shape, z.dtype))
    if out.shape != z.shape[:1]:
        raise ValueError(f"{name} must return one value per example, shape ({z.shape[0]},); got "
                         f"shape {out.shape}. Return the per-example values, not their mean or "
                         f"sum (a mean would divide every map by the batch size).")


def integrated_gradients(logits_fn: LogitsFn, x: Array, target, *, baseline="zero",
                         num_steps: int = 50, rule: str = "gausslegendre",
                         chunk_size: int | str | None = "auto", key: PRNGKey | None = None,
                         blur_sigma: float = 5.0, unroll: bool = False) -> Array:
    """Integrated Gradients of the target logit (Sundararajan et al. 2017).

    Defaults follow Captum (50 Gauss-Legendre points, zero baseline). Boopathy et al.'s evaluation
    IG is ``rule="riemann_right", num_steps=100`` on a softplus copy of the network (methods.md 1.2).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K).
      x: (B, H, W, C) inputs.
      target: int or (B,) class indices.
      baseline: see :func:`make_baseline` (``"zero"``, ``"blur"``, ``"uniform"``, float, array).
      num_steps, rule: quadrature (module table); ``rule`` in ``QUADRATURE_RULES`` or an alias.
      chunk_size: path points per model call; bounds memory (module docstring); ``"auto"``
        (default), an int, or None for all at once.
      key: for ``baseline="uniform"``.
      blur_sigma: for ``baseline="blur"``.
      unroll: unroll the loop over chunks: faster on CPU, but memory is then no longer bounded
        by one chunk (XLA may overlap chunks).

    Returns:
      (B, H, W, C); sum over (H, W, C) ~ f_target(x) - f_target(baseline).
    """
    t = _common.prepare(logits_fn, x, target)
    b = make_baseline(x, baseline, key=key, blur_sigma=blur_sigma)
    _common.check_finite(b, "the path's start (baseline)")  # x: checked by prepare
    return _path_sum(lambda z: _common.stacked_grad(logits_fn, t, z), b, x, num_steps=num_steps,
                     rule=rule, chunk_size=chunk_size, unroll=unroll)


def _cross_entropy(logits: Array, labels: Array) -> Array:
    return -_common.select(jax.nn.log_softmax(logits, axis=-1), labels)


def path_ig(logits_fn: LogitsFn, x: Array, x_end: Array, labels, *,
            loss_fn: Callable[[Array, Array], Array] | None = None, num_steps: int = 5,
            rule: str = "riemann_right", chunk_size: int | str | None = "auto") -> Array:
    """IG of a per-example loss along the straight path x -> x_end (methods.md 1.6).

    IG_L(x -> x') = (x' - x) * (1/m) sum_{k=1..m} grad_z L(f(z), y) at z = x + (k/m)(x' - x):
    Chen et al.'s IG-Norm attribution as Boopathy et al. compute it (right Riemann sum, m = 5, the
    clean image as baseline, on the ReLU network).

    Args:
      logits_fn: images -> logits (B, K).
      x: (B, H, W, C) clean inputs (the path start).
      x_end: (B, H, W, C) perturbed inputs (the path end).
      labels: int or (B,) labels.
      loss_fn: per-example ``(logits, labels) -> (B,)``; default softmax cross-entropy.
      num_steps, rule, chunk_size: as in :func:`path_integrated_gradients`.

    Returns:
      Shaped like x; sums to ~ L(x_end) - L(x).
    """
    y = _common.prepare(logits_fn, x, labels)
    if x_end.shape != x.shape:
        raise ValueError(f"x_end must be shaped like x {x.shape}; got {x_end.shape}.")
    _common.check_finite(x_end, "x_end")  # x: checked by prepare
    loss = _cross_entropy if loss_fn is None else loss_fn
    _check_per_example(lambda v: loss(logits_fn(v), y), x, "loss_fn")

    grad_fn = jax.grad(lambda v: jnp.sum(loss(logits_fn(v), y)))
    return _path_sum(jax.vmap(grad_fn), x, x_end, num_steps=num_steps, rule=rule,
                     chunk_size=chunk_size)
