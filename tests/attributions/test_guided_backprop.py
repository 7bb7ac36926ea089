"""Guided Backprop: the guided ReLU rule, a closed form on a one-hidden-layer network, the ReLU swap
on Flax models, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import guided_backprop, guided_relu, saliency, with_guided_relus
from tests.attributions.helpers import linear_model, tiny_mlp, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_guided_relu_forward_and_backward():
    x = jnp.array([-1.0, 2.0, 3.0, -4.0])
    g = jnp.array([5.0, -6.0, 7.0, 8.0])
    y, vjp = jax.vjp(guided_relu, x)
    np.testing.assert_array_equal(y, [0.0, 2.0, 3.0, 0.0])
    np.testing.assert_array_equal(vjp(g)[0], [0.0, 0.0, 7.0, 0.0])


def test_closed_form_on_one_hidden_layer():
    _, v, f = tiny_mlp("relu", hidden=(16,), shape=(6, 6, 1))
    x = uniform_images(3, (6, 6, 1))
    t = jnp.array([0, 2, 4])
    p = v["params"]
    w1, b1 = np.asarray(p["layers__0"]["kernel"]), np.asarray(p["layers__0"]["bias"])
    w2 = np.asarray(p["head"]["kernel"])
    h = np.asarray(x).reshape(3, -1) @ w1 + b1
    expected = np.stack([w1 @ ((h[i] > 0) * np.maximum(w2[:, c], 0.0))
                         for i, c in enumerate([0, 2, 4])]).reshape(x.shape)
    np.testing.assert_allclose(guided_backprop(f.logits, x, t), expected, rtol=1e-5, atol=1e-7)


def test_forward_values_unchanged_and_differs_from_plain_gradient():
    _, _, f = tiny_smallgap("relu")
    x = uniform_images(2, (12, 12, 1))
    np.testing.assert_allclose(with_guided_relus(f.logits)(x), f.logits(x), rtol=1e-6)
    gb = guided_backprop(f.logits, x, 1)
    assert gb.shape == x.shape
    assert not np.allclose(gb, saliency(f.logits, x, 1))


def test_jit_and_vmap():
    _, _, f = tiny_mlp("relu")
    x = uniform_images(3, (6, 6, 1))
    ref = guided_backprop(f.logits, x, 1)
    np.testing.assert_allclose(jax.jit(lambda z: guided_backprop(f.logits, z, 1))(x), ref,
                               rtol=1e-6, atol=1e-8)
    vm = jax.vmap(lambda z: guided_backprop(f.logits, z[None], 1)[0])(x)
    np.testing.assert_allclose(vm, ref, rtol=1e-6, atol=1e-8)


def test_relus_inside_checkpointed_blocks_are_guided():
    """jax.checkpoint / flax.linen.remat ("remat2" in the jaxpr): the ReLUs inside are guided too,
    so the map equals the same weights' map without rematerialisation."""
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, h):
            return nn.relu(nn.Dense(12)(h))

    class Net(nn.Module):
        remat: bool

        @nn.compact
        def __call__(self, x):
            h = x.reshape(x.shape[0], -1)
            block = nn.remat(Block) if self.remat else Block
            h = block(name="block")(h)
            return nn.Dense(5)(nn.relu(nn.Dense(10)(h)))

    x = uniform_images(3, (4, 4, 2))
    v = Net(remat=False).init(jax.random.key(0), x)
    plain = guided_backprop(lambda z: Net(remat=False).apply(v, z), x, 2)
    rematted = guided_backprop(lambda z: Net(remat=True).apply(v, z), x, 2)
    np.testing.assert_allclose(rematted, plain, rtol=1e-6, atol=1e-8)
    assert not np.allclose(plain, saliency(lambda z: Net(remat=False).apply(v, z), x, 2))
    # All ReLUs inside a checkpoint: found and guided (earlier: "found no jax.nn.relu").
    f = lambda z: Net(remat=False).apply(v, z)  # noqa: E731
    np.testing.assert_allclose(guided_backprop(jax.checkpoint(f), x, 2), plain, rtol=1e-6,
                               atol=1e-8)


def test_model_without_relu_raises():
    logits_fn, _, _ = linear_model()
    with pytest.raises(ValueError, match="no jax.nn.relu"):
        guided_backprop(logits_fn, uniform_images(1, (4, 4, 2)), 0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        guided_backprop(logits_fn, uniform_images(1, (4, 4, 2)), 5)
