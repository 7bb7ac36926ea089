"""Guided IG: exact on a linear model (any path), completeness, adaptivity, errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import guided_integrated_gradients, integrated_gradients
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_linear_model_gives_weight_times_difference():
    logits_fn, w, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    b = uniform_images(2, (4, 4, 2), seed=4)
    out = guided_integrated_gradients(logits_fn, x, 2, baseline=b, num_steps=10)
    np.testing.assert_allclose(out, np.asarray(w)[:, 2].reshape(4, 4, 2) * np.asarray(x - b),
                               rtol=1e-4, atol=1e-6)


def test_completeness_and_an_adaptive_path():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    t = np.array([3, 9])
    gap = (np.asarray(f.logits(x))[np.arange(2), t]
           - np.asarray(f.logits(jnp.zeros_like(x)))[np.arange(2), t])
    errs = []
    for n in (8, 64):
        out = guided_integrated_gradients(f.logits, x, t, num_steps=n)
        errs.append(np.max(np.abs(np.asarray(out).sum((1, 2, 3)) - gap) / np.abs(gap)))
    assert errs[1] < errs[0] and errs[1] < 2e-2, errs
    ig = integrated_gradients(f.logits, x, t, num_steps=64)
    assert not np.allclose(out, ig, rtol=1e-2)  # the path is not the straight line


@pytest.mark.parametrize("kwargs, match", [({"fraction": 0.0}, "fraction"),
                                           ({"max_dist": 2.0}, "max_dist"),
                                           ({"num_steps": 0}, "num_steps")])
def test_bad_arguments_raise(kwargs, match):
    logits_fn, _, _ = linear_model()
    with pytest.raises(ValueError, match=match):
        guided_integrated_gradients(logits_fn, uniform_images(1, (4, 4, 2)), 0, **kwargs)
