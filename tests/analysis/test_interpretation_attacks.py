"""AAI (top-k attack on a map): closed form on a linear map, containment, Kendall over kept labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.analysis import (
    cam_map_fn,
    map_manipulation_attack,
    map_robustness,
    mean_over_kept,
    region_mass,
    top_k_attack,
    top_k_mask,
)
from jaxadv.models import get_model


def test_top_k_mask():
    m = jnp.asarray([[[3.0, 1.0], [2.0, 0.0]]])
    np.testing.assert_array_equal(top_k_mask(m, 2), [[[1, 0], [1, 0]]])
    with pytest.raises(ValueError, match="k must lie in"):
        top_k_mask(m, 5)


def test_attack_on_identity_map_moves_top_k_pixels_down_by_eps():
    # map = the image itself: the optimum lowers each top-k pixel by eps (inside the box).
    x = jax.random.uniform(jax.random.key(0), (4, 6, 6), minval=0.2, maxval=0.8)
    res = top_k_attack(lambda z, y: z, x, jnp.zeros(4, jnp.int32), jax.random.key(1), eps=0.1,
                       k=5, step_size=0.05, num_steps=10)
    mask = np.asarray(top_k_mask(x, 5)).astype(bool)
    d = np.asarray(res.x_adv - x)
    np.testing.assert_allclose(d[mask], -0.1, atol=1e-6)
    assert np.max(np.abs(d)) <= 0.1 + 1e-6
    np.testing.assert_allclose(np.asarray(res.loss), -(np.asarray(x)[mask].reshape(4, 5) - 0.1)
                               .sum(-1), rtol=1e-5)


def test_cam_attack_lowers_tau_and_stays_in_ball():
    model = get_model("smallgap", num_classes=10)
    x = jax.random.uniform(jax.random.key(2), (8, 28, 28, 1))
    variables = model.init(jax.random.key(3), x[:1])
    logits_fn = lambda z: model.apply(variables, z)
    y = jnp.argmax(logits_fn(x), -1)
    map_fn = cam_map_fn(model.apply, variables)
    res = top_k_attack(map_fn, x, y, jax.random.key(4), eps=0.1, num_steps=10)
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= 0.1 + 1e-6
    clean_topk = jnp.sum(map_fn(x, y) * top_k_mask(map_fn(x, y), 8), axis=(1, 2))
    adv_topk = jnp.sum(map_fn(res.x_adv, y) * top_k_mask(map_fn(x, y), 8), axis=(1, 2))
    assert np.all(np.asarray(adv_topk) < np.asarray(clean_topk))
    r = map_robustness(map_fn, logits_fn, x, y, res.x_adv)
    same = map_robustness(map_fn, logits_fn, x, y, x)
    np.testing.assert_allclose(same.kendall_tau, 1.0, atol=1e-6)
    np.testing.assert_allclose(same.top_k_kept, 1.0)
    assert float(mean_over_kept(r.kendall_tau, r.label_kept)) < 1.0
    assert np.isnan(float(mean_over_kept(r.kendall_tau, jnp.zeros(8, bool))))


def test_region_mass():
    m = jnp.asarray([[[1.0, -2.0], [3.0, 0.0]]])
    region = jnp.asarray([[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(region_mass(m, region), [0.25])


def test_map_manipulation_moves_identity_map_into_region_and_keeps_label():
    # map = the image; a label-constant model: the optimum raises the region by eps and lowers
    # the rest by eps.
    x = jax.random.uniform(jax.random.key(5), (3, 6, 6), minval=0.2, maxval=0.8)
    region = jnp.zeros((6, 6)).at[:, :3].set(1.0)
    logits_fn = lambda z: jnp.zeros((z.shape[0], 3)).at[:, 1].set(1.0)  # noqa: E731
    y = jnp.ones(3, jnp.int32)
    res = map_manipulation_attack(lambda z, yy: z, logits_fn, x, y, region, jax.random.key(6),
                                  eps=0.1, step_size=0.05, num_steps=6, random_start=False)
    d = np.asarray(res.x_adv - x)
    np.testing.assert_allclose(d[:, :, :3], 0.1, atol=1e-6)
    np.testing.assert_allclose(d[:, :, 3:], -0.1, atol=1e-6)
    assert np.all(np.asarray(res.success))
    assert np.all(np.asarray(region_mass(res.x_adv, region) > region_mass(x, region)))


def test_map_manipulation_never_returns_a_flipped_label():
    # the model predicts class 1 iff the left half is brighter: moving the map left flips it, so
    # the kept example is the last one before the flip (the start, with no random start).
    x = jnp.full((2, 4, 4), 0.5).at[:, :, 2:].add(0.05)
    region = jnp.zeros((4, 4)).at[:, :2].set(1.0)

    def logits_fn(z):
        left, right = z[:, :, :2].mean((1, 2)), z[:, :, 2:].mean((1, 2))
        return jnp.stack([right - left, left - right], -1)

    y = jnp.zeros(2, jnp.int32)
    res = map_manipulation_attack(lambda z, yy: z, logits_fn, x, y, region, jax.random.key(0),
                                  eps=0.2, step_size=0.1, num_steps=3, label_weight=0.0,
                                  random_start=False)
    assert np.all(np.asarray(jnp.argmax(logits_fn(res.x_adv), -1)) == 0)


def test_map_manipulation_returns_the_label_keeping_iterate_of_largest_region_mass():
    """Identity map, region = left half, a model whose cross-entropy on y = 0 grows with the left
    half's brightness steeply enough (label_weight 1) that every step darkens the left half: the
    objective rises step by step while the region mass falls, so the start (no random start) is
    the iterate of largest region mass and is what comes back, with its region mass as loss."""
    x = jnp.full((2, 4, 4), 0.5).at[:, :, 2:].add(0.05)
    region = jnp.zeros((4, 4)).at[:, :2].set(1.0)

    def logits_fn(z):
        left, right = z[:, :, :2].mean((1, 2)), z[:, :, 2:].mean((1, 2))
        return jnp.stack([jnp.zeros_like(left), 10.0 * (left - right)], -1)

    y = jnp.zeros(2, jnp.int32)
    res = map_manipulation_attack(lambda z, yy: z, logits_fn, x, y, region, jax.random.key(0),
                                  eps=0.1, step_size=0.02, num_steps=5, random_start=False)
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(res.x_adv, x, atol=1e-7)
    np.testing.assert_allclose(res.loss, region_mass(x, region), rtol=1e-6)
