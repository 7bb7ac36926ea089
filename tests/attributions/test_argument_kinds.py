"""Kinds of arguments a researcher passes besides the usual float batch: integer images and empty
batches are refused with errors that say what to do; NumPy and 0-d numbers work wherever a number
is documented; traced hyperparameters work under jit / vmap; nonsensical values are refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv.attributions as A
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images
from tests.attributions.test_nonfinite_inputs import _linear_calls

pytestmark = pytest.mark.usefixtures("strict_promotion")

KEY = jax.random.key(0)
CALLS = sorted(_linear_calls())


@pytest.mark.parametrize("name", CALLS)
def test_integer_images_are_refused_with_the_conversion(name):
    x = (np.asarray(uniform_images(4, (4, 4, 2))) * 255).astype(np.uint8)
    with pytest.raises(ValueError,
                       match=r"(x|start) has dtype uint8.*(x|start).astype\(jnp.float32\) / 255"):
        _linear_calls()[name](jnp.asarray(x))


@pytest.mark.parametrize("name", CALLS)
def test_an_empty_batch_is_refused_clearly(name):
    """E.g. "explain the misclassified examples" when there are none."""
    with pytest.raises(ValueError, match=r"empty batch.*skip the call"):
        _linear_calls()[name](jnp.zeros((0, 4, 4, 2)))


def test_postprocessing_refuses_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        A.normalize(jnp.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="empty batch"):
        A.clip_percentile(jnp.zeros((0, 4, 4)))


@pytest.mark.parametrize("number", [0.5, np.float32(0.5), np.float64(0.5), jnp.asarray(0.5)])
def test_a_number_baseline_or_fill_may_be_any_scalar(number):
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    t = jnp.array([0, 1])
    np.testing.assert_allclose(
        A.integrated_gradients(logits_fn, x, t, baseline=number, num_steps=4),
        A.integrated_gradients(logits_fn, x, t, baseline=jnp.full_like(x, 0.5), num_steps=4),
        rtol=1e-6)
    np.testing.assert_allclose(A.occlusion(logits_fn, x, t, window=2, strides=2, fill=number),
                               A.occlusion(logits_fn, x, t, window=2, strides=2,
                                           fill=jnp.full_like(x, 0.5)), rtol=1e-6)


def test_integer_image_baselines_and_fills_are_refused():
    """An 8-bit image given as a baseline or fill would be cast unscaled ([0, 255] beside x in
    [0, 1]); a number keeps its meaning (0 fills with 0 whatever its type)."""
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    t = jnp.array([0, 1])
    pixels = (np.asarray(x[0]) * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"baseline has dtype uint8.*/ 255"):
        A.integrated_gradients(logits_fn, x, t, baseline=pixels, num_steps=4)
    with pytest.raises(ValueError, match=r"fill has dtype uint8.*/ 255"):
        A.occlusion(logits_fn, x, t, window=2, strides=2, fill=pixels)
    np.testing.assert_allclose(A.integrated_gradients(logits_fn, x, t, baseline=0, num_steps=4),
                               A.integrated_gradients(logits_fn, x, t, num_steps=4), rtol=1e-6)


def test_a_traced_number_baseline_works_under_jit():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    t = jnp.array([0, 1])
    got = jax.jit(lambda v: A.integrated_gradients(logits_fn, x, t, baseline=v.mean(),
                                                   num_steps=4))(x)
    np.testing.assert_allclose(
        got, A.integrated_gradients(logits_fn, x, t, baseline=float(x.mean()), num_steps=4),
        rtol=1e-5)
    with pytest.raises(ValueError, match="fill contains NaN.*the occluded pixels. value must"):
        A.occlusion(logits_fn, x, t, window=2, strides=2, fill=np.nan)
    with pytest.raises(ValueError, match=r"baseline must be a number or shaped like x"):
        A.integrated_gradients(logits_fn, x, t, baseline=jnp.zeros((3, 3)), num_steps=4)


def test_occlusion_accepts_auto_chunks_and_numpy_window():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    ref = A.occlusion(logits_fn, x, 1, window=2, strides=2)
    np.testing.assert_allclose(A.occlusion(logits_fn, x, 1, window=np.int64(2),
                                           strides=np.int32(2), chunk_size="auto"), ref, rtol=1e-6)


def test_upsample_needs_two_positive_sizes():
    cam = jnp.ones((2, 3, 3))
    for bad in ((-9, 7), (0, 7), 7, (7,), (7.0, 7)):
        with pytest.raises(ValueError, match=r"size must be \(H, W\), two positive ints"):
            A.upsample(cam, bad)
    assert A.upsample(cam, (np.int64(6), 6)).shape == (2, 6, 6)


def test_gradient_shap_stdev_may_be_traced_and_must_be_nonnegative():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    refs = uniform_images(3, (4, 4, 2), seed=5)

    def shap(s):
        return A.gradient_shap(logits_fn, x, 1, KEY, references=refs, num_samples=3, stdev=s)

    np.testing.assert_allclose(jax.jit(shap)(0.1), shap(0.1), rtol=1e-5, atol=1e-7)
    assert jax.vmap(shap)(jnp.array([0.0, 0.1])).shape == (2,) + x.shape
    with pytest.raises(ValueError, match="stdev must be finite and >= 0"):
        shap(-0.1)
    bad_refs = refs.at[1].set(jnp.nan)
    with pytest.raises(ValueError, match=r"references contains NaN.*examples \[1\]"):
        A.expected_gradients(logits_fn, x, 1, KEY, references=bad_refs, num_samples=3)


def test_smooth_grad_refuses_bad_noise_and_stdev():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    with pytest.raises(ValueError, match="stdev must be finite and >= 0"):
        A.smooth_grad(logits_fn, x, 1, KEY, num_samples=2, stdev=-0.1)
    noise = jnp.zeros((2,) + x.shape).at[0, 1].set(jnp.inf)
    with pytest.raises(ValueError, match=r"noise contains NaN or infinite values.*examples \[0\]"):
        A.smooth_grad(logits_fn, x, 1, None, noise=noise)


def test_guided_ig_needs_at_least_one_inner_round():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(1, (12, 12, 1))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_inner must be an int >= 1"):
            A.guided_integrated_gradients(f.logits, x, 1, num_steps=2, num_inner=bad)
