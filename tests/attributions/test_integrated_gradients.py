"""Integrated Gradients: quadrature rules, completeness, baselines, chunking, path IG, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import (
    QUADRATURE_RULES,
    gaussian_blur,
    integrated_gradients,
    make_baseline,
    path_ig,
    path_integrated_gradients,
    quadrature,
)
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images, x64

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("rule", QUADRATURE_RULES)
def test_quadrature_nodes_and_weights(rule):
    a, w = quadrature(rule, 10)
    assert a.shape == w.shape == (10,)
    assert np.all((a >= 0) & (a <= 1)) and np.all(w > 0)
    expected_total = 1 - 1 / 10 if rule == "riemann_trapezoid" else 1.0  # Captum's trapezoid
    np.testing.assert_allclose(w.sum(), expected_total, rtol=1e-12)


def test_gauss_legendre_is_exact_for_polynomials():
    a, w = quadrature("gausslegendre", 4)
    for p in range(8):  # degree <= 2n - 1
        np.testing.assert_allclose(np.sum(w * a**p), 1 / (p + 1), rtol=1e-12)


def test_rule_aliases():
    for alias, name in [("left", "riemann_left"), ("right", "riemann_right"),
                        ("middle", "riemann_middle"), ("gauss_legendre", "gausslegendre")]:
        np.testing.assert_array_equal(quadrature(alias, 5)[0], quadrature(name, 5)[0])


def test_ig_of_linear_model_is_closed_form():
    logits_fn, w, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    b = uniform_images(2, (4, 4, 2), seed=5)
    for rule in ("riemann_right", "trapezoid", "gausslegendre"):
        ig = integrated_gradients(logits_fn, x, 1, baseline=b, num_steps=7, rule=rule)
        expected = np.asarray(w)[:, 1].reshape(4, 4, 2) * np.asarray(x - b)
        np.testing.assert_allclose(ig, expected, rtol=1e-5, atol=1e-6)


def _rel_completeness(f, x, t, ig, baseline):
    fx = np.asarray(f.logits(x))[np.arange(x.shape[0]), t]
    fb = np.asarray(f.logits(baseline))[np.arange(x.shape[0]), t]
    return np.max(np.abs(np.asarray(ig).sum((1, 2, 3)) - (fx - fb)) / np.abs(fx - fb))


def test_completeness_error_shrinks_with_steps():
    with x64():
        _, _, f = tiny_smallgap("softplus", dtype=jnp.float64)
        x = uniform_images(3, (12, 12, 1), dtype=jnp.float64)
        t = np.array([0, 4, 7])
        zero = jnp.zeros_like(x)
        for rule in ("riemann_left", "riemann_right", "riemann_middle", "trapezoid"):
            errs = [_rel_completeness(f, x, t, integrated_gradients(
                f.logits, x, t, num_steps=n, rule=rule), zero) for n in (4, 16, 64)]
            assert errs[0] > errs[1] > errs[2], (rule, errs)


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "trapezoid",
                                  "gausslegendre"])
def test_completeness_below_1e_3_at_256_steps_on_softplus_model(rule):
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(3, (12, 12, 1))
    t = np.array([0, 4, 7])
    ig = integrated_gradients(f.logits, x, t, num_steps=256, rule=rule, chunk_size=64)
    assert _rel_completeness(f, x, t, ig, jnp.zeros_like(x)) < 1e-3


def test_captum_trapezoid_is_the_textbook_one_scaled_by_one_minus_one_over_n():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    n = 8
    a = integrated_gradients(f.logits, x, 3, num_steps=n, rule="riemann_trapezoid")
    b = integrated_gradients(f.logits, x, 3, num_steps=n, rule="trapezoid")
    np.testing.assert_allclose(a, (1 - 1 / n) * b, rtol=1e-5, atol=1e-7)


def test_chunk_size_does_not_change_the_result():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    ref = integrated_gradients(f.logits, x, 1, num_steps=10)
    for chunk in (1, 3, 10, 64):
        np.testing.assert_allclose(integrated_gradients(f.logits, x, 1, num_steps=10,
                                                        chunk_size=chunk), ref,
                                   rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(integrated_gradients(f.logits, x, 1, num_steps=10, chunk_size=4,
                                                    unroll=True), ref, rtol=2e-5, atol=1e-6)


def test_baselines():
    x = uniform_images(2, (12, 12, 3))
    np.testing.assert_array_equal(make_baseline(x, "zero"), np.zeros(x.shape))
    np.testing.assert_array_equal(make_baseline(x, 0.5), np.full(x.shape, 0.5, np.float32))
    np.testing.assert_allclose(make_baseline(x, "blur", blur_sigma=1.5),
                               gaussian_blur(x, 1.5, radius=6))
    u = make_baseline(x, "uniform", key=jax.random.key(3), bounds=(0.2, 0.4))
    assert u.shape == x.shape and float(u.min()) >= 0.2 and float(u.max()) <= 0.4
    one = jnp.linspace(0, 1, 12 * 12 * 3).reshape(12, 12, 3)
    np.testing.assert_array_equal(make_baseline(x, one), np.broadcast_to(one, x.shape))
    np.testing.assert_array_equal(make_baseline(x, x[::-1]), x[::-1])


def test_completeness_holds_for_a_given_baseline():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    b = make_baseline(x, "blur", blur_sigma=2.0)
    ig = integrated_gradients(f.logits, x, np.array([2, 5]), baseline=b, num_steps=32)
    assert _rel_completeness(f, x, np.array([2, 5]), ig, b) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    ({"rule": "simpson"}, "quadrature rule"),
    ({"baseline": "mean"}, "baseline"),
    ({"baseline": jnp.zeros((3, 4, 4, 2))}, "shape"),
    ({"baseline": "uniform"}, "key"),
    ({"num_steps": 2.5}, "num_steps"),
    ({"num_steps": 0}, "num_steps"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_arguments_raise(kwargs, match):
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    with pytest.raises(ValueError, match=match):
        integrated_gradients(logits_fn, x, 0, **kwargs)


def test_path_ig_matches_boopathy_formula_and_completeness():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    x_adv = jnp.clip(x + 0.2 * jnp.sign(uniform_images(2, (12, 12, 1), seed=9) - 0.5), 0, 1)
    y = jnp.array([1, 6])

    def ce(z):
        return -jnp.take_along_axis(jax.nn.log_softmax(f.logits(z)), y[:, None], 1)[:, 0]

    manual = sum(jax.grad(lambda z: jnp.sum(ce(z)))(x + (k / 5) * (x_adv - x))
                 for k in range(1, 6)) / 5 * (x_adv - x)
    np.testing.assert_allclose(path_ig(f.logits, x, x_adv, y), manual, rtol=1e-4, atol=1e-7)
    fine = path_integrated_gradients(ce, x, x_adv, num_steps=64, rule="gausslegendre")
    np.testing.assert_allclose(np.asarray(fine).sum((1, 2, 3)), ce(x_adv) - ce(x), rtol=1e-3,
                               atol=1e-5)


def test_path_functions_must_return_per_example_values():
    """A batch-mean loss would silently divide every map by B: refused, naming the fix."""
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    y = jnp.array([1, 6])

    def mean_ce(logits, labels):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    with pytest.raises(ValueError, match=r"loss_fn must return one value per example, shape \(2,\)"):
        path_ig(f.logits, x, x + 0.1, y, loss_fn=mean_ce)
    with pytest.raises(ValueError, match=r"value_fn must return one value per example.*got shape \(\)"):
        path_integrated_gradients(lambda z: jnp.sum(f.logits(z)[:, 1]), x, x + 0.1)
