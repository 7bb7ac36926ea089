"""Gaussian blur (against scipy) and Blur IG (closed form on a linear model, completeness)."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxadv.attributions import blur_integrated_gradients, gaussian_blur
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("mode", ["reflect", "constant"])
@pytest.mark.parametrize("sigma", [0.7, 1.5, 6.0])
def test_blur_equals_scipy(sigma, mode):
    x = uniform_images(2, (9, 11, 2))
    ref = ndimage.gaussian_filter(np.asarray(x, np.float64), (0, sigma, sigma, 0), mode=mode)
    np.testing.assert_allclose(gaussian_blur(x, sigma, mode=mode), ref, rtol=1e-5, atol=1e-6)
    if mode == "reflect":  # the default (IG's blurred baseline)
        np.testing.assert_allclose(gaussian_blur(x, sigma), ref, rtol=1e-5, atol=1e-6)


def test_blur_ig_starts_where_pair_does():
    """Blur IG's path starts at PAIR's / the paper code's blur, zero padding
    (``ndimage.gaussian_filter(image, [sigma, sigma, 0], mode="constant")``): on a bright image
    at sigma 50 that is near black, not the flat mean image that reflecting gives."""
    logits_fn, w, _ = linear_model(shape=(6, 6, 1))
    x = 0.5 + 0.5 * uniform_images(1, (6, 6, 1))
    out = blur_integrated_gradients(logits_fn, x, 1, max_sigma=50.0, num_steps=4)
    start = ndimage.gaussian_filter(np.asarray(x[0], np.float64), (50, 50, 0), mode="constant")
    want = np.asarray(w)[:, 1].reshape(6, 6, 1) * (np.asarray(x[0]) - start)
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-6)
    assert start.max() < 0.2 * float(x.mean())


def test_zero_sigma_is_identity_and_traced_sigma_needs_radius():
    x = uniform_images(1, (5, 5, 1))
    np.testing.assert_allclose(gaussian_blur(x, jnp.asarray(0.0), radius=3), x, atol=1e-7)
    with pytest.raises(ValueError, match="radius"):
        gaussian_blur(x, 1.0, radius=-1)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_blur_ig_of_linear_model_is_closed_form(mode):
    logits_fn, w, _ = linear_model(shape=(6, 6, 1))
    x = uniform_images(2, (6, 6, 1))
    out = blur_integrated_gradients(logits_fn, x, 1, max_sigma=3.0, num_steps=5, mode=mode)
    expected = np.asarray(w)[:, 1].reshape(6, 6, 1) * np.asarray(
        x - gaussian_blur(x, 3.0, radius=12, mode=mode))
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_completeness_error_shrinks():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    t = np.array([1, 2])
    gap = (np.asarray(f.logits(x))[np.arange(2), t]  # the default path starts at a zero-padded blur
           - np.asarray(f.logits(gaussian_blur(x, 4.0, radius=16, mode="constant")))[np.arange(2), t])
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
    with pytest.raises(ValueError, match="blur mode"):
        blur_integrated_gradients(logits_fn, x, 0, mode="wrap")
