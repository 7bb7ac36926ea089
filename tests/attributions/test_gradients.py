"""Saliency and gradient x input: closed forms on a linear model, batching, jit, argument errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import gradient_x_input, saliency
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_saliency_of_linear_model_is_its_weight_row():
    logits_fn, w, _ = linear_model(shape=(4, 4, 2), num_classes=3)
    x = uniform_images(3, (4, 4, 2))
    t = jnp.array([0, 2, 1])
    s = saliency(logits_fn, x, t)
    expected = np.stack([np.asarray(w)[:, c].reshape(4, 4, 2) for c in [0, 2, 1]])
    np.testing.assert_allclose(s, expected, rtol=1e-6)
    np.testing.assert_allclose(saliency(logits_fn, x, t, absolute=True), np.abs(expected),
                               rtol=1e-6)
    np.testing.assert_allclose(gradient_x_input(logits_fn, x, t), np.asarray(x) * expected,
                               rtol=1e-6)


def test_int_target_broadcasts():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    np.testing.assert_array_equal(saliency(logits_fn, x, 1),
                                  saliency(logits_fn, x, jnp.array([1, 1])))


def test_batched_equals_per_example_and_jit_equals_eager():
    _, _, f = tiny_smallgap()
    x = uniform_images(4, (12, 12, 1))
    t = jnp.array([0, 1, 2, 3])
    full = saliency(f.logits, x, t)
    single = jnp.concatenate([saliency(f.logits, x[i:i + 1], t[i:i + 1]) for i in range(4)])
    np.testing.assert_allclose(full, single, rtol=1e-5, atol=1e-7)
    jitted = jax.jit(lambda x, t: gradient_x_input(f.logits, x, t))
    np.testing.assert_allclose(jitted(x, t), gradient_x_input(f.logits, x, t), rtol=1e-5,
                               atol=1e-7)
    vm = jax.vmap(lambda xi, ti: saliency(f.logits, xi[None], ti[None])[0])(x, t)
    np.testing.assert_allclose(vm, full, rtol=1e-5, atol=1e-7)


def test_no_retrace_on_new_data():
    logits_fn, _, _ = linear_model()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(x, t):
        return saliency(logits_fn, x, t)

    for seed in range(3):
        fn(uniform_images(2, (4, 4, 2), seed=seed), jnp.array([seed % 3, 0]))


@pytest.mark.parametrize("target, match", [
    (3, r"\[0, 3\)"),
    (-1, r"\[0, 3\)"),
    (np.array([0, 1, 2]), "shape"),
    (np.array([[0], [1]]), "shape"),
    (0.5, "integer"),
])
def test_bad_targets_raise(target, match):
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    with pytest.raises(ValueError, match=match):
        saliency(logits_fn, x, target)


def test_unbatched_input_raises():
    logits_fn, _, _ = linear_model()
    with pytest.raises(ValueError, match="batch"):
        saliency(logits_fn, jnp.zeros((3,)), 0)
