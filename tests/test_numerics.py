"""safe_sqrt / l2_norm: the values of jnp.sqrt and the l2 norm, with gradient 0 (not NaN) at 0."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxadv.numerics import l2_norm, safe_sqrt


def test_safe_sqrt_values_and_gradients():
    x = jnp.array([0.0, 1e-30, 0.25, 4.0])
    np.testing.assert_array_equal(safe_sqrt(x), jnp.sqrt(x))
    g = jax.vmap(jax.grad(safe_sqrt))(x)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_allclose(g[1:], 0.5 / np.sqrt(np.asarray(x[1:], np.float64)), rtol=1e-6)
    assert np.isnan(jax.grad(jnp.sqrt)(0.0) * 0.0)  # what the plain form gives in a chain rule


def test_l2_norm_gradient_at_zero_and_elsewhere():
    v = jnp.array([[3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_norm(v, axis=-1), [5.0, 0.0])
    g = jax.grad(lambda a: jnp.sum(l2_norm(a, axis=-1)))(v)
    np.testing.assert_allclose(g, [[0.6, -0.8], [0.0, 0.0]], rtol=1e-6)
    assert l2_norm(v, axis=-1, keepdims=True).shape == (2, 1)
    np.testing.assert_allclose(l2_norm(v), 5.0)
    # Second order (double backprop through a map's norm): finite at 0 too.
    h = jax.hessian(lambda a: l2_norm(a))(jnp.zeros(3))
    assert np.all(np.isfinite(h))
