"""Gaussian blur (against scipy) and Blur IG (closed form on a linear model, completeness)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxadv.attributions import blur_integrated_gradients, gaussian_blur
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("sigma", [0.7, 1.5, 6.0])
def test_blur_equals_scipy_reflect(sigma):
    x = uniform_images(2, (9, 11, 2))
    ref = ndimage.gaussian_filter(np.asarray(x, np.float64), (0, sigma, sigma, 0), mode="reflect")
    np.testing.assert_allclose(gaussian_blur(x, sigma), ref, rtol=1e-5, atol=1e-6)


def test_zero_sigma_is_identity_and_traced_sigma_needs_radius():
    x = uniform_images(1, (5, 5, 1))
    np.testing.assert_allclose(gaussian_blur(x, jnp.asarray(0.0), radius=3), x, atol=1e-7)
    with pytest.raises(ValueError, match="radius"):
        gaussian_blur(x, 1.0, radius=-1)


def test_blur_ig_of_linear_model_is_closed_form():
    logits_fn, w, _ = linear_model(shape=(6, 6, 1))
    x = uniform_images(2, (6, 6, 1))
    out = blur_integrated_gradients(logits_fn, x, 1, max_sigma=3.0, num_steps=5)
    expected = np.asarray(w)[:, 1].reshape(6, 6, 1) * np.asarray(
        x - gaussian_blur(x, 3.0, radius=12))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


def test_completeness_error_shrinks():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    t = np.array([1, 2])
    gap = (np.asarray(f.logits(x))[np.arange(2), t]
           - np.asarray(f.logits(gaussian_blur(x, 4.0, radius=16)))[np.arange(2), t])
    errs = []
    for n in (2, 8, 32):
        out = blur_integrated_gradients(f.logits, x, t, max_sigma=4.0, num_steps=n, chunk_size=9)
        errs.append(np.max(np.abs(np.asarray(out).sum((1, 2, 3)) - gap) / np.abs(gap)))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3, errs


def test_bad_arguments_raise():
    logits_fn, _, _ = linear_model(shape=(6, 6, 1))
    x = uniform_images(1, (6, 6, 1))
    with pytest.raises(ValueError, match="num_steps"):
        blur_integrated_gradients(logits_fn, x, 0, num_steps=0)
    with pytest.raises(ValueError, match="max_sigma"):
        blur_integrated_gradients(logits_fn, x, 0, max_sigma=0.0)
