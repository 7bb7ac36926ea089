"""Promotion-suppression effect (Xu et al. 2019, methods.md 2.3-2.4): closed forms on linear models,
group sums, the type thresholds, CAM overlap on planted regions, CAM-guided masked attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.analysis import promotion_suppression as ps
from jaxadv.attacks.masked import masked_pgd
from jaxadv.metrics import interpretability_scores
from tests.attributions.helpers import linear_model, tiny_mlp, tiny_smallgap, uniform_images

SHAPE = (5, 6, 2)  # odd height: the bottom row of 2x2 windows is a smaller edge group


@pytest.fixture
def linear():
    logits_fn, w, _ = linear_model(shape=SHAPE, num_classes=4)
    x = uniform_images(3, SHAPE)
    delta = 0.1 * jax.random.normal(jax.random.key(5), x.shape)
    return logits_fn, np.asarray(w).reshape(SHAPE + (4,)), x, delta


SOURCE, TARGET = jnp.asarray([0, 1, 2]), jnp.asarray([3, 0, 1])


def _closed_form(w, delta):
    d = np.asarray(delta)
    p = np.einsum("bhwc,bhwc->bhw", d, np.moveaxis(w[..., np.asarray(TARGET)], -1, 0))
    s = -np.einsum("bhwc,bhwc->bhw", d, np.moveaxis(w[..., np.asarray(SOURCE)], -1, 0))
    return p, s  # per pixel


@pytest.mark.parametrize("method", ps.METHODS)
def test_linear_image_pse_closed_form(linear, method):
    logits_fn, w, x, delta = linear
    p, s = _closed_form(w, delta)
    out = ps.image_promotion_suppression(logits_fn, x, delta, SOURCE, TARGET, method=method)
    np.testing.assert_allclose(out.promotion, p.sum((1, 2)), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(out.suppression, s.sum((1, 2)), rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_linear_groups_closed_form_and_add_up(linear, group_size):
    logits_fn, w, x, delta = linear
    p, s = _closed_form(w, delta)
    exact = ps.group_promotion_suppression(logits_fn, x, delta, SOURCE, TARGET,
                                           group_size=group_size, chunk_size=5)
    first = ps.group_promotion_suppression(logits_fn, x, delta, SOURCE, TARGET,
                                           group_size=group_size, method="first_order")
    hg, wg = -(-SHAPE[0] // group_size), -(-SHAPE[1] // group_size)
    assert exact.promotion.shape == (3, hg, wg)
    grid = ps.group_grid(SHAPE[0], SHAPE[1], group_size)
    want_p = np.stack([np.bincount(grid.ravel(), p[b].ravel()) for b in range(3)]).reshape(3, hg, wg)
    want_s = np.stack([np.bincount(grid.ravel(), s[b].ravel()) for b in range(3)]).reshape(3, hg, wg)
    for out in (exact, first):
        np.testing.assert_allclose(out.promotion, want_p, rtol=1e-4, atol=3e-5)
        np.testing.assert_allclose(out.suppression, want_s, rtol=1e-4, atol=3e-5)
    image = ps.image_promotion_suppression(logits_fn, x, delta, SOURCE, TARGET)
    np.testing.assert_allclose(exact.promotion.sum((1, 2)), image.promotion, rtol=1e-4, atol=3e-5)
    np.testing.assert_allclose(exact.suppression.sum((1, 2)), image.suppression, rtol=1e-4,
                               atol=3e-5)


def test_group_grid_matches_str_attack_windows():
    g = ps.group_grid(3, 5, 2)
    np.testing.assert_array_equal(g, [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]])
    v = jnp.arange(30.0).reshape(1, 3, 5, 2)
    np.testing.assert_allclose(ps.group_sum(v, 2)[0].ravel(),
                               np.bincount(np.repeat(g.ravel(), 2), np.arange(30.0)))


def test_exact_group_is_one_forward_pass_and_first_order_is_close():
    _, _, fns = tiny_mlp(shape=(8, 8, 1), num_classes=10)
    x = uniform_images(2, (8, 8, 1))
    delta = 1e-3 * jax.random.normal(jax.random.key(3), x.shape)
    src, tgt = jnp.asarray([1, 2]), jnp.asarray([4, 7])

    @jax.jit
    def run(d):
        kw = {"group_size": 4}
        return (ps.group_promotion_suppression(fns.logits, x, d, src, tgt, chunk_size=3, **kw),
                ps.group_promotion_suppression(fns.logits, x, d, src, tgt, chunk_size=None, **kw),
                ps.group_promotion_suppression(fns.logits, x, d, src, tgt, method="first_order",
                                               **kw))

    exact, whole, first = run(delta)
    # group (0, 1): rows 0-3, columns 4-7, computed by hand
    m = np.zeros((1, 8, 8, 1), np.float32)
    m[:, :4, 4:] = 1
    z0, z1 = fns.logits(x), fns.logits(x + delta * m)
    np.testing.assert_allclose(exact.promotion[:, 0, 1], z1[[0, 1], tgt] - z0[[0, 1], tgt],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exact.suppression[:, 0, 1], z0[[0, 1], src] - z1[[0, 1], src],
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(exact, first, strict=True):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=1e-5)
    for a, b in zip(exact, whole, strict=True):  # chunking changes nothing
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_promotion_ratio_and_types():
    p = jnp.asarray([1.0, 0.0, 1.0, -1.0, -1.0, 1.0, 2.0, 0.0])
    s = jnp.asarray([0.0, 1.0, 1.0, 2.0, -1.0, 3.0, 1.0, 0.0])
    r = ps.promotion_ratio(p, s)
    np.testing.assert_allclose(r, [1, 0, 0.5, 0, np.nan, 0.25, 2 / 3, np.nan])
    np.testing.assert_array_equal(ps.pse_type(p, s), [2, 0, 1, 0, -1, 0, 1, -1])
    # thresholds are arguments; r == 2/3 is balanced, r == high is not "above"
    np.testing.assert_array_equal(ps.pse_type(p, s, low=0.2, high=0.6),
                                  [2, 0, 1, 0, -1, 1, 2, -1])
    np.testing.assert_array_equal(ps.pse_type(p, s, min_effect=1.5), [-1, -1, 1, 0, -1, 0, 1, -1])
    frac, n = ps.type_distribution(ps.pse_type(p, s))
    assert int(n) == 6
    np.testing.assert_allclose(frac, [3 / 6, 2 / 6, 1 / 6])
    frac, n = ps.type_distribution(ps.pse_type(p, s).reshape(2, 4),
                                   where=jnp.asarray([False, True]))
    assert int(n) == 2  # the second row: types -1, 0, 1, -1
    np.testing.assert_allclose(frac, [1 / 2, 1 / 2, 0])
    with pytest.raises(ValueError, match="low <= high"):
        ps.pse_type(p, s, low=0.7, high=0.3)


def test_adversarial_class_and_norms():
    logits = jnp.asarray([[5.0, 4.0, 1.0], [0.0, 3.0, 3.5]])
    np.testing.assert_array_equal(ps.adversarial_class(logits, jnp.asarray([0, 2])), [1, 1])
    d = jnp.asarray([[[[3.0], [-4.0]]], [[[0.0], [0.0]]]])
    n = ps.perturbation_norms(d)
    np.testing.assert_allclose(n["l2"], [5, 0])
    np.testing.assert_allclose(n["l0"], [2, 0])
    np.testing.assert_allclose(n["linf"], [4, 0])
    np.testing.assert_allclose(n["l1"], [7, 0])


def test_bad_inputs():
    logits_fn, _, _ = linear_model(shape=SHAPE)
    x = uniform_images(2, SHAPE)
    with pytest.raises(ValueError, match="Unknown method"):
        ps.image_promotion_suppression(logits_fn, x, x, 0, 1, method="second")
    with pytest.raises(ValueError, match="group_size"):
        ps.group_promotion_suppression(logits_fn, x, x, 0, 1, group_size=0)
    with pytest.raises(ValueError, match="shaped like x"):
        ps.group_promotion_suppression(logits_fn, x, x[:1], 0, 1)
    with pytest.raises(ValueError, match="source must lie"):
        ps.image_promotion_suppression(logits_fn, x, x, 9, 1)
    with pytest.raises(ValueError, match="top_percent"):
        ps.top_percent_mask(x, top_percent=0)


def test_pse_analysis_fields_agree(linear):
    logits_fn, _, x, delta = linear
    a = ps.pse_analysis(logits_fn, x, x + delta, SOURCE, TARGET, group_size=2, percentile=80.0)
    np.testing.assert_allclose(a.image.promotion, a.image_first_order.promotion, rtol=1e-4,
                               atol=3e-5)
    np.testing.assert_array_equal(a.image_type, ps.pse_type(*a.image))
    assert a.group_type.shape == (3, 3, 3)
    ref = interpretability_scores(logits_fn, x, delta, SOURCE, TARGET, percentile=80.0)
    for got, want in zip(a.interpretability, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


# --- CAM overlap: features = the image itself, head = GAP + identity (CAM_c = channel c) ---------

def _planted():
    x = np.zeros((1, 5, 5, 2), np.float32)
    x[0, 0, :, 0] = 1.0  # class 0's CAM: top row (20% of the pixels)
    x[0, 4, :, 1] = 1.0  # class 1's CAM: bottom row
    features_fn = lambda z: z  # noqa: E731
    head_fn = lambda a: jnp.mean(a, axis=(1, 2))  # noqa: E731
    return jnp.asarray(x), features_fn, head_fn


def test_cam_masks_and_overlap_on_planted_regions():
    x, features_fn, head_fn = _planted()
    m0 = ps.cam_masks(features_fn, head_fn, x, 0, top_percent=20)
    np.testing.assert_array_equal(m0[0], np.arange(5)[:, None] == np.zeros((1, 5)))
    d = np.zeros((1, 5, 5, 2), np.float32)
    d[0, 4, :, 1] = 0.1  # raises class 1 (promotion) inside M_1
    d[0, 0, :, 0] = -0.1  # lowers class 0 (suppression) inside M_0
    d[0, 2, 2, :] = 0.0
    o = jax.jit(lambda dd: ps.cam_overlap(features_fn, head_fn, x, dd, 0, 1))(jnp.asarray(d))
    np.testing.assert_allclose(o.energy_union, 1.0, rtol=1e-6)
    np.testing.assert_allclose(o.energy_source, np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(o.energy_target, np.sqrt(0.5), rtol=1e-6)
    np.testing.assert_allclose(o.promotion_in_target, 1.0)
    np.testing.assert_allclose(o.suppression_in_source, 1.0)
    np.testing.assert_allclose(o.union_area, 0.4)
    # a perturbation in the middle row lies outside both regions
    d2 = np.zeros_like(d)
    d2[0, 2, :, :] = 0.1
    o2 = jax.jit(lambda dd: ps.cam_overlap(features_fn, head_fn, x, dd, 0, 1, method="exact"))(
        jnp.asarray(d2))
    np.testing.assert_allclose([o2.energy_union, o2.promotion_in_target,
                                o2.suppression_in_source], 0.0, atol=1e-7)


def test_random_mask_like_keeps_area(key):
    m = jnp.zeros((3, 6, 6), jnp.bool_).at[:, :2].set(True)
    r = ps.random_mask_like(key, m)
    np.testing.assert_array_equal(r.sum((1, 2)), m.sum((1, 2)))
    assert not np.array_equal(r, m)


def test_cam_guided_attack_is_masked_pgd(key):
    _, _, fns = tiny_smallgap(size=8, activation="relu")
    x = uniform_images(4, (8, 8, 1))
    y = jnp.argmax(fns.logits(x), -1)
    t = (y + 1) % 10
    kw = {"eps": 0.2, "step_size": 0.05, "num_steps": 2}

    @jax.jit
    def run():
        r = ps.cam_guided_attack(fns.features, fns.head, x, y, key, targets=t, top_percent=25,
                                 **kw)
        ref = masked_pgd(fns.logits, x, y, key, mask=1.0, targets=t, random_start=False, **kw)
        return r, ref

    r, ref = run()
    assert r.mask.shape == (4, 8, 8, 1)
    assert np.all(np.asarray(r.mask).sum((1, 2, 3)) >= 16)  # union of two 16-pixel masks
    outside = np.asarray(r.mask) == 0
    np.testing.assert_array_equal(np.asarray(r.masked.x_adv)[outside], np.asarray(x)[outside])
    assert np.any(np.asarray(r.masked.x_adv) != np.asarray(x))
    np.testing.assert_allclose(r.unmasked.x_adv, ref.x_adv, atol=1e-6)
