"""Interpretability score IS = ||B * delta||_2 / ||delta||_2 and IS+ / IS- (methods.md 2.3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import adversarial_saliency_map, promotion_suppression_maps
from jaxadv.metrics.interpretability_score import (
    energy_share,
    interpretability_score,
    interpretability_scores,
    saliency_mask,
)
from tests.attributions.helpers import fast_compile, linear_model, uniform_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_energy_share_closed_forms():
    delta = jnp.array([[3.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(energy_share(delta, jnp.array([[True, False, True, True]])), 0.6)
    np.testing.assert_allclose(energy_share(delta, jnp.array([[1.0, 1.0, 0.0, 0.0]])), 1.0)
    np.testing.assert_allclose(energy_share(jnp.zeros((1, 4)), jnp.ones((1, 4))), 0.0)
    img = uniform_images(2, (3, 3, 2)) - 0.5
    pix = jnp.zeros((2, 3, 3), bool).at[:, 1, 1].set(True)
    expected = np.sqrt((np.asarray(img)[:, 1, 1] ** 2).sum(-1) / (np.asarray(img) ** 2).sum(
        (1, 2, 3)))
    np.testing.assert_allclose(energy_share(img, pix), expected, rtol=1e-5)


def test_saliency_mask_percentile():
    s = jnp.arange(20.0).reshape(1, 20)
    m = saliency_mask(s, percentile=90.0)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(m)[0]), [18, 19])
    np.testing.assert_array_equal(saliency_mask(s, threshold=16.5)[0], np.arange(20) > 16.5)


def test_scores_against_numpy_on_linear_model():
    logits_fn, _, _ = linear_model(shape=(5, 5, 1), num_classes=4)
    x = uniform_images(2, (5, 5, 1))
    delta = 0.1 * jax.random.normal(jax.random.key(3), x.shape)
    src, tgt = jnp.array([0, 1]), jnp.array([2, 3])
    out = interpretability_scores(logits_fn, x, delta, src, tgt, percentile=80.0)

    def numpy_is(s):
        s, d = np.asarray(s).reshape(2, -1), np.asarray(delta).reshape(2, -1)
        nu = np.percentile(s, 80.0, axis=1, keepdims=True)
        return np.linalg.norm((s > nu) * d, axis=1) / np.linalg.norm(d, axis=1)

    asm = adversarial_saliency_map(logits_fn, x, tgt)
    promo, supp = promotion_suppression_maps(logits_fn, x, src, tgt)
    np.testing.assert_allclose(out.score, numpy_is(asm), rtol=1e-5)
    np.testing.assert_allclose(out.promotion, numpy_is(promo), rtol=1e-5)
    np.testing.assert_allclose(out.suppression, numpy_is(supp), rtol=1e-5)
    for v in out:
        assert np.all((np.asarray(v) >= 0) & (np.asarray(v) <= 1))
    # A perturbation confined to the salient set scores 1.
    inside = delta * saliency_mask(asm, percentile=80.0).astype(delta.dtype)
    np.testing.assert_allclose(interpretability_score(inside, asm, percentile=80.0), 1.0,
                               rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="percentile"):
        saliency_mask(jnp.ones((1, 4)), percentile=120.0)
    with pytest.raises(ValueError, match="mask"):
        energy_share(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="saliency_map"):
        interpretability_score(jnp.ones((1, 4)), jnp.ones((1, 5)))


def test_gradients_are_finite_for_zero_perturbations_and_empty_masks():
    """sqrt at 0 in both norms: the gradient is 0 there, not NaN (e.g. a sparse attack that puts
    nothing on the salient pixels, or its start at delta = 0)."""
    d = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    s_map = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    for delta, mask in ((jnp.zeros_like(d), jnp.ones(d.shape, bool)),
                        (d, jnp.zeros(d.shape, bool))):
        g = jax.grad(lambda v: jnp.sum(energy_share(v, mask)))(delta)  # noqa: B023
        np.testing.assert_array_equal(g, 0.0)
    g = jax.grad(lambda v: jnp.sum(interpretability_score(v, s_map)))(jnp.zeros_like(d))
    np.testing.assert_array_equal(g, 0.0)


def test_nan_inputs_are_errors():
    s_map = np.ones((2, 4, 4, 3), np.float32)
    s_map[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"saliency_map contains NaN.*examples \[1\]"):
        interpretability_score(jnp.ones((2, 4, 4, 3)), s_map)
    with pytest.raises(ValueError, match="delta contains NaN"):
        energy_share(jnp.asarray(s_map), jnp.ones((2, 4, 4), bool))
