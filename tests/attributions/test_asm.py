"""Adversarial saliency map and its promotion/suppression split: closed forms on a linear model."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import adversarial_saliency_map, promotion_suppression_maps
from tests.attributions.helpers import linear_model, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_jsma_map_on_linear_model():
    logits_fn, w, _ = linear_model(shape=(5, 5, 1), num_classes=4)
    x = uniform_images(2, (5, 5, 1))
    w = np.asarray(w)
    a = w[:, 2]
    b = w.sum(1) - a
    inc = np.where((a > 0) & (b < 0), a * np.abs(b), 0.0).reshape(5, 5, 1)
    dec = np.where((a < 0) & (b > 0), np.abs(a) * b, 0.0).reshape(5, 5, 1)
    np.testing.assert_allclose(adversarial_saliency_map(logits_fn, x, 2)[0], inc, rtol=1e-5)
    np.testing.assert_allclose(adversarial_saliency_map(logits_fn, x, 2, direction="decrease")[1],
                               dec, rtol=1e-5)
    np.testing.assert_allclose(adversarial_saliency_map(logits_fn, x, 2, direction="both")[0],
                               np.maximum(inc, dec), rtol=1e-5)
    assert inc.any() and dec.any()


def test_promotion_suppression_split():
    logits_fn, w, _ = linear_model(shape=(5, 5, 1), num_classes=4)
    x = uniform_images(2, (5, 5, 1))
    promo, supp = promotion_suppression_maps(logits_fn, x, jnp.array([0, 1]), jnp.array([3, 2]))
    w = np.asarray(w)
    np.testing.assert_allclose(promo[1], np.maximum(w[:, 2], 0).reshape(5, 5, 1), rtol=1e-5)
    np.testing.assert_allclose(supp[0], np.maximum(-w[:, 0], 0).reshape(5, 5, 1), rtol=1e-5)


def test_errors():
    logits_fn, _, _ = linear_model(shape=(5, 5, 1), num_classes=4)
    x = uniform_images(1, (5, 5, 1))
    with pytest.raises(ValueError, match="direction"):
        adversarial_saliency_map(logits_fn, x, 0, direction="up")
    with pytest.raises(ValueError, match="source"):
        promotion_suppression_maps(logits_fn, x, 7, 0)
