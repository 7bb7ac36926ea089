"""Post-processing: channel reduction, percentile clipping (numpy), normalisation, upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import absolute, clip_percentile, normalize, reduce_channels, upsample
from tests.attributions.helpers import uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_reduce_channels():
    a = uniform_images(2, (4, 4, 3)) - 0.5
    n = np.asarray(a)
    for method, ref in [("sum", n.sum(-1)), ("mean", n.mean(-1)),
                        ("abs_sum", np.abs(n).sum(-1)), ("max_abs", np.abs(n).max(-1)),
                        ("l2", np.sqrt((n**2).sum(-1)))]:
        np.testing.assert_allclose(reduce_channels(a, method=method), ref, rtol=1e-6)
    np.testing.assert_array_equal(absolute(a), np.abs(n))


def test_l2_reductions_have_finite_gradients_at_zero():
    """Maps inside a loss: the l2 channel reduction at an all-zero pixel (a ReLU-dead region) and
    the l2 normalisation of an all-zero map have gradient 0 there, not NaN."""
    a = (uniform_images(2, (4, 4, 3)) - 0.5).at[0, 1, 2].set(0.0)
    g = jax.grad(lambda v: jnp.sum(reduce_channels(v, method="l2")))(a)
    np.testing.assert_array_equal(g[0, 1, 2], 0.0)
    n = np.asarray(a, np.float64)
    want = n / np.maximum(np.sqrt((n ** 2).sum(-1, keepdims=True)), 1e-300)
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
    g = jax.grad(lambda v: jnp.sum(normalize(v, method="l2")))(jnp.zeros((1, 3, 3)))
    assert np.all(np.isfinite(g))


def test_clip_percentile_matches_numpy():
    a = uniform_images(3, (5, 5))
    out = np.asarray(clip_percentile(a, lower=5.0, upper=90.0))
    for i in range(3):
        lo, hi = np.percentile(np.asarray(a[i]), [5.0, 90.0])
        np.testing.assert_allclose(out[i], np.clip(np.asarray(a[i]), lo, hi), rtol=1e-6)


def test_normalize():
    a = uniform_images(2, (4, 4, 1)) - 0.3
    assert np.allclose(np.abs(normalize(a)).reshape(2, -1).max(1), 1.0)
    mm = np.asarray(normalize(a, method="min_max")).reshape(2, -1)
    assert np.allclose(mm.min(1), 0) and np.allclose(mm.max(1), 1)
    assert np.allclose(np.abs(normalize(a, method="sum_abs")).reshape(2, -1).sum(1), 1)
    assert np.allclose(np.sqrt((np.asarray(normalize(a, method="l2")) ** 2).reshape(2, -1)
                               .sum(1)), 1)
    np.testing.assert_array_equal(normalize(jnp.zeros((1, 3, 3))), np.zeros((1, 3, 3)))


def test_upsample():
    cam = jnp.full((2, 7, 7), 3.0)
    up = upsample(cam, (28, 28))
    assert up.shape == (2, 28, 28) and np.allclose(up, 3.0)
    assert upsample(jnp.ones((1, 4, 4, 2)), (8, 8), method="nearest").shape == (1, 8, 8, 2)


def test_errors():
    with pytest.raises(ValueError, match="reduction"):
        reduce_channels(jnp.ones((1, 2, 2, 3)), method="median")
    with pytest.raises(ValueError, match="lower"):
        clip_percentile(jnp.ones((1, 4)), lower=50.0, upper=10.0)
    with pytest.raises(ValueError, match="normalisation"):
        normalize(jnp.ones((1, 4)), method="zscore")
    with pytest.raises(ValueError, match="upsampling"):
        upsample(jnp.ones((1, 2, 2)), (4, 4), method="area")
