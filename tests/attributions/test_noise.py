"""SmoothGrad, SmoothGrad^2 and VarGrad: explicit noise, keys, chunking, closed forms, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import (
    integrated_gradients,
    noise_tunnel,
    saliency,
    smooth_grad,
    smooth_grad_squared,
    var_grad,
)
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _setup():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    t = jnp.array([3, 8])
    noise = 0.1 * jax.random.normal(jax.random.key(4), (5,) + x.shape)
    maps = jnp.stack([saliency(f.logits, x + n, t) for n in noise])
    return f, x, t, noise, maps


def test_explicit_noise_gives_the_three_statistics():
    f, x, t, noise, maps = _setup()
    mean, sq = maps.mean(0), (maps**2).mean(0)
    np.testing.assert_allclose(smooth_grad(f.logits, x, t, None, noise=noise), mean, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(smooth_grad_squared(f.logits, x, t, None, noise=noise), sq,
                               rtol=1e-5, atol=1e-9)
    vg = var_grad(f.logits, x, t, None, noise=noise)
    np.testing.assert_allclose(vg, sq - mean**2, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(vg, maps.var(0), rtol=1e-3, atol=1e-8)


def test_key_is_deterministic_and_chunking_does_not_change_the_draw():
    f, x, t, _, _ = _setup()
    key = jax.random.key(7)
    ref = smooth_grad(f.logits, x, t, key, num_samples=5, stdev=0.2)
    for chunk in (1, 2, 5):
        np.testing.assert_allclose(smooth_grad(f.logits, x, t, key, num_samples=5, stdev=0.2,
                                               chunk_size=chunk), ref, rtol=2e-5, atol=1e-7)
    other = smooth_grad(f.logits, x, t, jax.random.key(8), num_samples=5, stdev=0.2)
    assert not np.allclose(other, ref)
    keys = jax.random.split(key, 5)
    noise = jnp.stack([0.2 * jax.random.normal(k, x.shape) for k in keys])
    np.testing.assert_allclose(smooth_grad(f.logits, x, t, None, noise=noise), ref, rtol=2e-5,
                               atol=1e-7)


def test_linear_model_gradient_is_noise_free():
    logits_fn, w, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    sg = smooth_grad(logits_fn, x, 2, jax.random.key(0), num_samples=4, stdev=0.5)
    np.testing.assert_allclose(sg, np.broadcast_to(np.asarray(w)[:, 2].reshape(4, 4, 2), x.shape),
                               rtol=1e-5)
    np.testing.assert_allclose(var_grad(logits_fn, x, 2, jax.random.key(0), num_samples=4),
                               0.0, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 2, 3])
def test_var_grad_keeps_float32_precision_where_maps_are_large_and_vary_little(chunk):
    """Maps of about 37 that vary by about 1e-2 across the samples (a large linear part plus a
    small sine): E[a^2] - E[a]^2 cancels to float32 noise of about 1e-4 there, as large as the
    variance itself, with negative values. The chunk-merged variance matches float64."""
    w = 37.3 * jax.random.normal(jax.random.key(0), (12, 3))
    x = uniform_images(4, (2, 2, 3))
    noise = 0.15 * jax.random.normal(jax.random.key(1), (7,) + x.shape)

    def logits(v):
        z = v.reshape(v.shape[0], -1)
        return z @ w.astype(z.dtype) + 0.01 * jnp.sum(jnp.sin(3.0 * z), -1, keepdims=True)

    vg = np.asarray(var_grad(logits, x, 1, None, noise=noise, chunk_size=chunk))
    with jax.enable_x64(True):
        ref = np.asarray(var_grad(logits, np.asarray(x, np.float64), 1, None,
                                  noise=np.asarray(noise, np.float64), chunk_size=chunk))
    assert vg.min() >= 0.0 and ref.min() > 1e-6
    np.testing.assert_allclose(vg, ref, rtol=1e-2)
    # On a linear model every sample's map is the same: the variance is 0 up to rounding.
    lin = var_grad(lambda v: v.reshape(v.shape[0], -1) @ w, x, 1, None, noise=noise,
                   chunk_size=chunk)
    assert float(jnp.min(lin)) >= 0.0 and float(jnp.max(lin)) <= 1e-9


def test_around_any_method_with_its_keywords():
    f, x, t, noise, _ = _setup()
    out = smooth_grad(f.logits, x, t, None, noise=noise[:2], method=integrated_gradients,
                      num_steps=4, rule="riemann_right")
    manual = (integrated_gradients(f.logits, x + noise[0], t, num_steps=4, rule="riemann_right")
              + integrated_gradients(f.logits, x + noise[1], t, num_steps=4,
                                     rule="riemann_right")) / 2
    np.testing.assert_allclose(out, manual, rtol=1e-4, atol=1e-7)
    generic = noise_tunnel(lambda z: z**2, x, None, noise=noise, kind="smoothgrad")
    np.testing.assert_allclose(generic, ((x[None] + noise) ** 2).mean(0), rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "median"}, "kind"),
    ({"noise": jnp.zeros((3, 1, 12, 12, 1))}, "noise"),
    ({"num_samples": 0}, "num_samples"),
])
def test_bad_arguments_raise(kwargs, match):
    f, x, t, _, _ = _setup()
    with pytest.raises(ValueError, match=match):
        smooth_grad(f.logits, x, t, jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match="key"):
        smooth_grad(f.logits, x, t, None)


def test_per_example_method_arguments():
    f, x, t, noise, _ = _setup()
    base = 0.1 * x  # a (B, ...) baseline: each noisy copy of the batch keeps its own examples
    out = smooth_grad(f.logits, x, t, None, noise=noise[:2], method=integrated_gradients,
                      baseline=base, num_steps=3)
    manual = sum(integrated_gradients(f.logits, x + n, t, baseline=base, num_steps=3)
                 for n in noise[:2]) / 2
    np.testing.assert_allclose(out, manual, rtol=1e-4, atol=1e-7)


def test_unknown_keyword_names_smooth_grads_own():
    """A misspelt noise keyword (``sigma`` for ``stdev``) is reported as smooth_grad's, not as an
    error of the wrapped method."""
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    with pytest.raises(TypeError, match=r"method=saliency.*stdev \(the noise's standard"):
        smooth_grad(logits_fn, x, 0, jax.random.key(0), sigma=0.1)
    # keywords of the method still go through
    out = smooth_grad(logits_fn, x, 0, jax.random.key(0), num_samples=2, absolute=True)
    assert np.all(np.asarray(out) >= 0)
