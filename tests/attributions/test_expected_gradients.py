"""Expected Gradients / GradientSHAP: closed forms on a linear model, chunking, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import expected_gradients, gradient_shap
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_single_reference_on_linear_model_is_ig():
    logits_fn, w, _ = linear_model()
    x = uniform_images(3, (4, 4, 2))
    ref = uniform_images(1, (4, 4, 2), seed=3)
    eg = expected_gradients(logits_fn, x, 1, jax.random.key(0), references=ref, num_samples=6)
    np.testing.assert_allclose(eg, np.asarray(w)[:, 1].reshape(4, 4, 2) * np.asarray(x - ref),
                               rtol=1e-5, atol=1e-6)


def test_completeness_in_expectation_on_linear_model():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    refs = uniform_images(4, (4, 4, 2), seed=3)
    eg = expected_gradients(logits_fn, x, 0, jax.random.key(1), references=refs,
                            num_samples=4000, chunk_size=500)
    expected = logits_fn(x)[:, 0] - logits_fn(refs)[:, 0].mean()
    np.testing.assert_allclose(np.asarray(eg).sum((1, 2, 3)), expected, atol=0.15)


def test_gradient_shap_adds_input_noise():
    logits_fn, w, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    ref = jnp.zeros((1, 4, 4, 2))
    a = gradient_shap(logits_fn, x, 2, jax.random.key(0), references=ref, num_samples=3,
                      stdev=0.3)
    b = expected_gradients(logits_fn, x, 2, jax.random.key(0), references=ref, num_samples=3)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, np.asarray(w)[:, 2].reshape(4, 4, 2) * np.asarray(x),
                               rtol=1e-5, atol=1e-6)


def test_chunking_does_not_change_the_draw():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    refs = uniform_images(3, (12, 12, 1), seed=2)
    key = jax.random.key(5)
    ref = expected_gradients(f.logits, x, 1, key, references=refs, num_samples=5)
    for chunk in (1, 2):
        np.testing.assert_allclose(expected_gradients(f.logits, x, 1, key, references=refs,
                                                      num_samples=5, chunk_size=chunk),
                                   ref, rtol=2e-5, atol=1e-7)


def test_bad_references_raise():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    with pytest.raises(ValueError, match="references"):
        expected_gradients(logits_fn, x, 0, jax.random.key(0), references=jnp.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="num_samples"):
        expected_gradients(logits_fn, x, 0, jax.random.key(0), references=x, num_samples=0)
    # uint8 references would be cast unscaled, baselines in [0, 255] for x in [0, 1]
    with pytest.raises(ValueError, match=r"references has dtype uint8.*/ 255"):
        expected_gradients(logits_fn, x, 0, jax.random.key(0),
                           references=(np.asarray(x) * 255).astype(np.uint8))
