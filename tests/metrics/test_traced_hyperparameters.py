"""Float hyper-parameters as jit / vmap arguments: the maps and metrics whose ranges are checked
on concrete values accept traced ones (a sweep over them compiles once) and give the eager result;
concrete bad values still raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import attributions as A
from jaxadv import metrics as M
from tests.attributions.helpers import tiny_smallgap, uniform_images

X = uniform_images(3, (12, 12, 1))
T = jnp.array([1, 4, 7])
KEY = jax.random.key(5)


def _calls():
    _, _, f = tiny_smallgap("softplus")
    sal = lambda z, t: A.saliency(f.logits, z, t)  # noqa: E731
    s = A.saliency(f.logits, X, T)
    return {
        "blur_ig.max_sigma": (1.0, lambda v: A.blur_integrated_gradients(
            f.logits, X, T, max_sigma=v, radius=2, num_steps=2)),
        "guided_ig.fraction": (0.25, lambda v: A.guided_integrated_gradients(
            f.logits, X, T, num_steps=2, fraction=v)),
        "guided_ig.max_dist": (0.02, lambda v: A.guided_integrated_gradients(
            f.logits, X, T, num_steps=2, max_dist=v)),
        "clip_percentile.upper": (90.0, lambda v: A.clip_percentile(s, upper=v)),
        "clip_percentile.lower": (5.0, lambda v: A.clip_percentile(s, lower=v)),
        "saliency_mask.percentile": (90.0, lambda v: M.saliency_mask(s, percentile=v)),
        "interpretability_score.percentile": (80.0, lambda v: M.interpretability_score(
            s, s, percentile=v)),
        "max_sensitivity.radius": (0.05, lambda v: M.max_sensitivity(
            sal, X, T, KEY, radius=v, num_samples=2)),
        "avg_sensitivity.radius": (0.05, lambda v: M.avg_sensitivity(
            sal, X, T, KEY, radius=v, num_samples=2)),
        "local_lipschitz_estimate.stdev": (0.05, lambda v: M.local_lipschitz_estimate(
            sal, X, T, KEY, stdev=v, num_samples=2)),
        "worst_case_sensitivity.radius": (0.05, lambda v: M.worst_case_sensitivity(
            sal, X, T, KEY, radius=v, num_steps=1)),
        "worst_case_sensitivity.step_size": (0.01, lambda v: M.worst_case_sensitivity(
            sal, X, T, KEY, radius=0.05, step_size=v, num_steps=1)),
    }


CALLS = _calls()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_traced_value_gives_the_eager_result(name):
    value, fn = CALLS[name]
    eager = np.asarray(fn(value))
    traced = np.asarray(jax.jit(fn)(jnp.asarray(value)))
    np.testing.assert_allclose(traced, eager, rtol=1e-5, atol=1e-7)
    swept = jax.vmap(fn)(jnp.asarray([value, value]))
    np.testing.assert_allclose(np.asarray(swept)[1], eager, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,bad,match", [
    ("guided_ig.fraction", 0.0, r"fraction must be finite and in \(0, 1\]"),
    ("clip_percentile.upper", 101.0, r"upper must be finite and in \[0, 100\]"),
    ("max_sensitivity.radius", -0.1, "radius must be finite and > 0"),
    ("saliency_mask.percentile", float("nan"), "percentile must be finite")])
def test_concrete_bad_values_still_raise(name, bad, match):
    with pytest.raises(ValueError, match=match):
        CALLS[name][1](bad)


def test_blur_ig_needs_a_static_radius_with_a_traced_max_sigma():
    _, _, f = tiny_smallgap("softplus")
    with pytest.raises(ValueError, match="pass radius="):
        jax.jit(lambda v: A.blur_integrated_gradients(f.logits, X, T, max_sigma=v,
                                                      num_steps=2))(1.0)
