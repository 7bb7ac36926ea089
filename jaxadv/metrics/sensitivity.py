"""Explanation robustness: max-/avg-sensitivity and the local Lipschitz estimate, by random
perturbations (as Quantus computes them) and in a worst-case version found by projected gradient
ascent on the change of the map.

Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS 2019 (max-sensitivity);
Bhatt et al., IJCAI 2020 (avg-sensitivity); Alvarez-Melis & Jaakkola 2018 (local Lipschitz
estimate). ``explain_fn(x, target) -> map`` is any attribution with its options closed over, e.g.
``lambda x, t: saliency(logits_fn, x, t)``. With a = explain_fn(x, t), a_s = explain_fn(x + d_s, t):

| metric | perturbation d_s | per-sample value | reduction |
|---|---|---|---|
| :func:`max_sensitivity` | U[-radius, radius] per entry | ||a - a_s||_2 / ||a||_2 | max over s |
| :func:`avg_sensitivity` | U[-radius, radius] per entry | ||a - a_s||_2 / ||a||_2 | mean over s |
| :func:`local_lipschitz_estimate` | N(0, stdev^2) | ||a - a_s||_2 / (||d_s||_2 + 1e-10) | max |

This is Quantus 0.6.0's computation with its defaults (``MaxSensitivity`` / ``AvgSensitivity``:
``batch_uniform_noise`` with ``lower_bound=0.2``, ``difference`` similarity and ``fro_norm`` for
numerator and denominator, ``nr_samples=200``, no normalisation or abs; ``LocalLipschitzEstimate``:
``batch_gaussian_noise`` with std 0.1, ``lipschitz_constant`` with Euclidean distances, and
``normalise=True``), read in
``quantus/metrics/robustness/{max,avg}_sensitivity.py`` (``evaluate_batch``),
``local_lipschitz_estimate.py`` and ``quantus/functions/{perturb,similarity,norm}_func.py``. Inputs
are not clipped to the data range (Quantus does not clip either). ``perturbations=`` passes the
samples (S, *x.shape) explicitly, to reproduce another library's draw.

``normalize=True`` divides every map by its max |value| before comparing (Quantus's ``normalise``
with ``normalise_by_max``; on by default only for ``LocalLipschitzEstimate``, as in Quantus). jaxadv
normalises each example by its own maximum; Quantus's ``normalise_by_max`` takes one maximum over
the whole batch (all axes), so its normalised scores depend on the batch and agree with jaxadv's
only for batches of one.

Worst case (no peer library has it): :func:`worst_case_sensitivity` maximises the same per-sample
value over the l-inf ball of radius ``radius`` by signed-gradient ascent from a uniform random
start, keeping the best iterate. It needs second derivatives of the model (use a softplus network:
the input gradient of a ReLU network is piecewise constant). The worst case of avg-sensitivity is the
supremum itself, i.e. the worst-case max-sensitivity.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxadv import numerics, validation
from jaxadv.attributions import _common
from jaxadv.types import Array, PRNGKey

ExplainFn = Callable[[Array, Array], Array]
MEASURES = ("sensitivity", "lipschitz")


def _flat_norm(v: Array) -> Array:
    # Finite gradient where the map does not move (the worst case ascends through this).
    return numerics.l2_norm(v.reshape(v.shape[0], -1), axis=-1)


def _max_abs_normalize(a: Array) -> Array:
    m = jnp.max(jnp.abs(a.reshape(a.shape[0], -1)), axis=-1)
    m = jnp.where(m > 0, m, 1.0)  # an all-zero map stays zero (as Quantus)
    return a / _common.per_example(m, a)


def _value(measure, a0, a, delta, normalize=False):
    if normalize:
        a0, a = _max_abs_normalize(a0), _max_abs_normalize(a)
    diff = _flat_norm(a - a0)
    if measure == "sensitivity":
        return diff / _flat_norm(a0)
    return diff / (_flat_norm(delta) + 1e-10)


def _sampled(explain_fn, x, target, key, *, measure, sample_fn, num_samples, perturbations,
             chunk_size, normalize):
    _common.check_images(x)
    a0 = explain_fn(x, target)
    if perturbations is not None:
        items = jnp.asarray(perturbations, x.dtype)
        if items.shape[1:] != x.shape:
            raise ValueError(f"perturbations must have shape (S, *x.shape) = (S, {x.shape}); got "
                             f"{items.shape}.")
        make = lambda d: d  # noqa: E731
    else:
        if key is None:
            raise ValueError("a key (jax.random.key(...)) or explicit perturbations is needed.")
        validation.check_int("num_samples", num_samples, 1)
        items = jax.random.split(key, num_samples)
        make = sample_fn

    def one(item):
        d = make(item)
        return _value(measure, a0, explain_fn(x + d, target), d, normalize)

    chunk = _common.check_chunk_size(chunk_size, items.shape[0])
    if chunk >= items.shape[0]:  # one call, no loop
        return jax.vmap(one)(items)  # (S, B)
    return jax.lax.map(one, items, batch_size=chunk)


def _check_positive(v, name):
    validation.check_range(name, v, 0.0, low_open=True)


def max_sensitivity(explain_fn: ExplainFn, x: Array, target, key: PRNGKey | None, *,
                    radius: float = 0.2, num_samples: int = 200,
                    perturbations: Array | None = None, chunk_size: int | None = None,
                    normalize: bool = False) -> Array:
    """Max-sensitivity (B,): max_s ||a - a_s||_2 / ||a||_2, d_s ~ U[-radius, radius] (module
    table). ``perturbations`` (S, *x.shape) overrides key/radius/num_samples; ``chunk_size``
    samples are evaluated per call; ``normalize`` max-abs normalises the maps first."""
    _check_positive(radius, "radius")
    vals = _sampled(explain_fn, x, target, key, measure="sensitivity", num_samples=num_samples,
                    sample_fn=lambda k: jax.random.uniform(k, x.shape, x.dtype, -radius, radius),
                    perturbations=perturbations, chunk_size=chunk_size, normalize=normalize)
    return jnp.max(vals, axis=0)


def avg_sensitivity(explain_fn: ExplainFn, x: Array, target, key: PRNGKey | None, *,
                    radius: float = 0.2, num_samples: int = 200,
                    perturbations: Array | None = None, chunk_size: int | None = None,
                    normalize: bool = False) -> Array:
    """Avg-sensitivity (B,): mean_s ||a - a_s||_2 / ||a||_2 (arguments as max_sensitivity)."""
    _check_positive(radius, "radius")
    vals = _sampled(explain_fn, x, target, key, measure="sensitivity", num_samples=num_samples,
                    sample_fn=lambda k: jax.random.uniform(k, x.shape, x.dtype, -radius, radius),
                    perturbations=perturbations, chunk_size=chunk_size, normalize=normalize)
    return jnp.mean(vals, axis=0)


def local_lipschitz_estimate(explain_fn: ExplainFn, x: Array, target, key: PRNGKey | None, *,
                             stdev: float = 0.1, num_samples: int = 200,
                             perturbations: Array | None = None,
                             chunk_size: int | None = None, normalize: bool = True) -> Array:
    """Local Lipschitz estimate (B,): max_s ||a - a_s||_2 / (||d_s||_2 + 1e-10),
    d_s ~ N(0, stdev^2), on max-abs normalised maps by default (as Quantus)."""
    _check_positive(stdev, "stdev")
    vals = _sampled(explain_fn, x, target, key, measure="lipschitz", num_samples=num_samples,
                    sample_fn=lambda k: stdev * jax.random.normal(k, x.shape, x.dtype),
                    perturbations=perturbations, chunk_size=chunk_size, normalize=normalize)
    return jnp.max(vals, axis=0)


def worst_case_sensitivity(explain_fn: ExplainFn, x: Array, target, key: PRNGKey, *,
                           radius: float = 0.2, num_steps: int = 10,
                           step_size: float | None = None, measure: str = "sensitivity",
                           normalize: bool | None = None, return_delta: bool = False):
    """Worst-case max-sensitivity (``measure="sensitivity"``) or local Lipschitz constant
    (``measure="lipschitz"``) over ||d||_inf <= radius, by signed-gradient ascent.

    Args:
      explain_fn: (x, target) -> map; must be differentiable in x (double backprop).
      x: (B, ...).
      target: int or (B,) classes.
      key: typed key for the uniform random start.
      radius: l-inf radius (the support of max-sensitivity's uniform noise).
      num_steps: ascent steps.
      step_size: default 2.5 radius / num_steps.
      measure: "sensitivity" or "lipschitz".
      normalize: max-abs normalise the maps before comparing; default (None) as the sampled
        estimate of the same measure: False for "sensitivity" (:func:`max_sensitivity`), True
        for "lipschitz" (:func:`local_lipschitz_estimate`), so the worst case bounds it.
      return_delta: also return the maximising perturbation.

    Returns:
      (B,) the best value found (>= the value at the random start), or (value, delta).
    """
    _common.check_images(x)
    _check_positive(radius, "radius")
    if measure not in MEASURES:
        raise ValueError(f"Unknown measure {measure!r}; choose one of {MEASURES}.")
    num_steps = validation.check_int("num_steps", num_steps, 0)
    if step_size is not None:
        _check_positive(step_size, "step_size")
    if key is None:
        raise ValueError("worst_case_sensitivity needs a key (jax.random.key(...)) for its "
                         "random start.")
    if normalize is None:
        normalize = measure == "lipschitz"
    alpha = 2.5 * radius / max(num_steps, 1) if step_size is None else step_size
    a0 = explain_fn(x, target)

    def value(d):
        return _value(measure, a0, explain_fn(x + d, target), d, normalize)

    grad_fn = jax.grad(lambda d: jnp.sum(value(d)))
    d0 = jax.random.uniform(key, x.shape, x.dtype, -radius, radius)
    v0 = value(d0)

    def body(_, carry):
        d, best_v, best_d = carry
        d = jnp.clip(d + alpha * jnp.sign(grad_fn(d)), -radius, radius)
        v = value(d)
        better = v > best_v
        best_d = jnp.where(_common.per_example(better, x), d, best_d)
        return d, jnp.where(better, v, best_v), best_d

    _, best_v, best_d = jax.lax.fori_loop(0, num_steps, body, (d0, v0, d0))
    return (best_v, best_d) if return_delta else best_v
