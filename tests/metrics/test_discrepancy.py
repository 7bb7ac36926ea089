"""Interpretation discrepancies (methods.md 1.3) against numpy, D~ gradients, and the margin bound
of methods.md 1.4 on successful targeted attacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.metrics.discrepancy import (
    class_discrepancies,
    discrepancy,
    label_free_discrepancy,
    map_discrepancy,
    margin_lower_bound,
    representation_discrepancy,
)
from tests.attributions.helpers import fast_compile, tiny_smallgap, uniform_images  # noqa: F401

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _maps(seed=0, shape=(3, 4, 5, 6)):
    a = np.asarray(jax.random.normal(jax.random.key(seed), shape))
    b = a + 0.3 * np.asarray(jax.random.normal(jax.random.key(seed + 1), shape))
    return a, b


def test_class_discrepancies_against_numpy():
    a, b = _maps()
    d = b - a
    rng = a.max((1, 2)) - a.min((1, 2))
    np.testing.assert_allclose(class_discrepancies(a, b), np.abs(d).sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(class_discrepancies(a, b, norm="l2sq"), (d**2).sum((1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(class_discrepancies(a, b, norm="l2", normalize=True),
                               np.sqrt((d**2).sum((1, 2))) / rng, rtol=1e-5)
    np.testing.assert_allclose(map_discrepancy(a[..., 0], b[..., 0], normalize=True),
                               np.abs(d[..., 0]).sum((1, 2)) / rng[:, 0], rtol=1e-5)


def test_one_two_all_class_sets():
    a, b = _maps()
    y, tp = np.array([0, 2, 5]), np.array([1, 4, 3])
    per = np.abs(b - a).sum((1, 2))
    idx = np.arange(3)
    np.testing.assert_allclose(discrepancy(a, b, y, classes="one"), per[idx, y], rtol=1e-5)
    np.testing.assert_allclose(discrepancy(a, b, y, tp, classes="two"),
                               0.5 * (per[idx, y] + per[idx, tp]), rtol=1e-5)
    np.testing.assert_allclose(discrepancy(a, b, classes="all"), per.mean(1), rtol=1e-5)


def test_label_free_discrepancy_formula_and_gradient_through_p_hat():
    a, b = _maps()
    logits = np.asarray(jax.random.normal(jax.random.key(9), (3, 6)))
    y = np.array([1, 0, 5])
    per = np.abs(b - a).sum((1, 2)).astype(np.float64)

    def numpy_d(lg):
        p = np.exp(lg) / np.exp(lg).sum(1, keepdims=True)
        out = []
        for i in range(3):
            q = p[i].copy()
            q[y[i]] = 0
            out.append(per[i, y[i]] + (q / q.sum() * per[i]).sum())
        return np.array(out)

    lg64 = logits.astype(np.float64)
    np.testing.assert_allclose(label_free_discrepancy(a, b, logits, y), numpy_d(lg64), rtol=1e-5)
    g = jax.grad(lambda z: jnp.sum(label_free_discrepancy(a, b, z, y)))(jnp.asarray(logits))
    e = np.zeros_like(lg64)
    e[1, 2] = 1e-6  # the gradient flows through p^: it matches central differences
    fd = (numpy_d(lg64 + e).sum() - numpy_d(lg64 - e).sum()) / 2e-6
    assert abs(fd) > 1e-3
    np.testing.assert_allclose(float(g[1, 2]), fd, rtol=1e-3)
    # No 1/2: with two classes D~ is d_y + d_other.
    two = label_free_discrepancy(a[..., :2], b[..., :2], logits[:, :2], np.array([0, 1, 0]))
    np.testing.assert_allclose(two, per[:, :2].sum(1), rtol=1e-5)


@pytest.mark.parametrize("margin", [10.0, 50.0, 100.0, 1000.0])
def test_label_free_discrepancy_stays_exact_and_differentiable_when_confident(margin):
    """At these margins the other classes' float32 probabilities underflow; p^ is a softmax over
    the other classes, so D~ and its gradient stay the closed form (earlier: NaN gradients from a
    margin of about 44, and D~ = d_y alone from about 88)."""
    a, b = _maps(shape=(1, 4, 5, 3))
    per = np.abs(b - a).astype(np.float64).sum((1, 2))[0]
    q = np.exp([0.0, -1.0]) / np.exp([0.0, -1.0]).sum()   # softmax of the other logits (0, -1)
    logits = np.array([[margin, 0.0, -1.0]], np.float32)
    y = np.array([0])
    got = label_free_discrepancy(a, b, logits, y)
    np.testing.assert_allclose(got, [per[0] + q[0] * per[1] + q[1] * per[2]], rtol=1e-5)
    g = jax.grad(lambda z: jnp.sum(label_free_discrepancy(a, b, z, y)))(jnp.asarray(logits))
    slope = q[0] * q[1] * (per[1] - per[2])   # d/dz_1 of q_1 per_1 + q_2 per_2; nothing on z_y
    np.testing.assert_allclose(g[0], [0.0, slope, -slope], rtol=1e-4, atol=1e-7)
    g_maps = jax.grad(lambda m: jnp.sum(label_free_discrepancy(a, m, logits, y)))(jnp.asarray(b))
    assert np.all(np.isfinite(g_maps))


def test_l2_discrepancy_has_a_finite_gradient_where_the_maps_agree():
    """||dI||_2 at dI = 0 (an attack's first step without a random start): gradient 0, not NaN;
    elsewhere the usual dI / ||dI||_2."""
    a, b = _maps()
    loss = lambda m: jnp.sum(discrepancy(a, m, classes="all", norm="l2"))  # noqa: E731
    np.testing.assert_array_equal(jax.grad(loss)(jnp.asarray(a)), 0.0)
    d = (b - a).astype(np.float64)
    want = d / np.sqrt((d * d).sum((1, 2), keepdims=True)) / a.shape[-1]
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(b)), want, rtol=1e-4, atol=1e-7)


def test_representation_discrepancy():
    a, b = _maps(shape=(2, 3, 3, 4))
    np.testing.assert_allclose(representation_discrepancy(a, b), np.abs(b - a).sum((1, 2, 3)),
                               rtol=1e-5)
    per_channel = np.abs(b - a).sum((1, 2)) / (a.max((1, 2)) - a.min((1, 2)))
    np.testing.assert_allclose(representation_discrepancy(a, b, normalize=True),
                               per_channel.mean(1), rtol=1e-5)


def test_constant_clean_maps_are_zero_if_unmoved_undefined_if_moved():
    """A clean map of zero range (a dead ReLU channel) has no range to normalise by: it counts 0
    if it did not move, is NaN if it did, and the averages leave it out, instead of d / 1e-12
    (about 1e10 here) swamping every mean."""
    a, b = (np.array(m) for m in _maps(shape=(2, 3, 3, 4)))
    a[:, :, :, 2] = 0.0          # channel 2 dead in both images ...
    b[0, :, :, 2] = 0.0          # ... and still dead on image 0's perturbed input,
    b[1, :, :, 2] = 0.0
    b[1, 1, 1, 2] = 0.01         # but not on image 1's.
    per = np.asarray(class_discrepancies(a, b, normalize=True))
    live = np.abs(b - a)[..., [0, 1, 3]].sum((1, 2)) / np.ptp(a[..., [0, 1, 3]], axis=(1, 2))
    np.testing.assert_allclose(per[:, [0, 1, 3]], live, rtol=1e-5)
    assert per[0, 2] == 0.0 and np.isnan(per[1, 2])
    np.testing.assert_allclose(representation_discrepancy(a, b, normalize=True),
                               [per[0].mean(), live[1].mean()], rtol=1e-5)
    np.testing.assert_allclose(discrepancy(a, b, classes="all", normalize=True),
                               [per[0].mean(), live[1].mean()], rtol=1e-5)
    one = np.asarray(discrepancy(a, b, np.array([2, 2]), classes="one", normalize=True))
    assert one[0] == 0.0 and np.isnan(one[1])
    raw = np.asarray(representation_discrepancy(a, b))       # the raw l1 counts the dead channel
    np.testing.assert_allclose(raw, np.abs(b - a).sum((1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(map_discrepancy(a[..., 2], b[..., 2], normalize=True), [0.0, np.nan])
    # Finite gradients through the guarded division (an evaluation measure, but jit/grad-safe).
    g = jax.grad(lambda m: jnp.sum(representation_discrepancy(jnp.asarray(a), m,
                                                              normalize=True)))(jnp.asarray(b))
    assert np.all(np.isfinite(np.asarray(g)))


def test_errors():
    a, b = _maps()
    with pytest.raises(ValueError, match="norm"):
        discrepancy(a, b, classes="all", norm="linf")
    with pytest.raises(ValueError, match="class set"):
        discrepancy(a, b, classes="three")
    with pytest.raises(ValueError, match="labels"):
        discrepancy(a, b, classes="one")
    with pytest.raises(ValueError, match="targets"):
        discrepancy(a, b, np.zeros(3, np.int32), classes="two")
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        discrepancy(a, b, np.array([0, 6, 1]), classes="one")
    with pytest.raises(ValueError, match="same shape"):
        discrepancy(a, b[:2], classes="all")
    with pytest.raises(ValueError, match=r"labels must be an int or have shape \(3,\)"):
        discrepancy(a, b, np.zeros((3, 1), np.int32), classes="one")
    with pytest.raises(ValueError, match="labels must hold integer class indices"):
        discrepancy(a, b, np.array([0.5, 1.0, 2.0]), classes="one")
    with pytest.raises(ValueError, match="labels must hold integer"):
        label_free_discrepancy(a, b, np.zeros((3, 6), np.float32), np.array([0.0, 1.0, 2.0]))


def _targeted_attack(logits_fn, x, target, *, eps, steps, step_size):
    """A tiny targeted signed-gradient attack (l-inf ball, [0, 1] box) on the target margin."""
    def margin(z):
        logits = logits_fn(z)
        zt = jnp.take_along_axis(logits, target[:, None], 1)[:, 0]
        others = jnp.where(jax.nn.one_hot(target, logits.shape[1], dtype=bool), -jnp.inf, logits)
        return jnp.sum(zt - jnp.max(others, axis=1))

    def step(_, z):
        z = z + step_size * jnp.sign(jax.grad(margin)(z))
        return jnp.clip(jnp.clip(z, x - eps, x + eps), 0.0, 1.0)

    return jax.jit(lambda z: jax.lax.fori_loop(0, steps, step, z))(x)


def test_margin_bound_holds_for_successful_targeted_attacks():
    _, _, f = tiny_smallgap("relu", seed=3)
    x = uniform_images(16, (12, 12, 1), seed=7)
    logits = f.logits(x)
    y = jnp.argmax(logits, 1)
    tp = (y + 1 + jax.random.randint(jax.random.key(2), (16,), 0, 9)) % 10
    x_adv = _targeted_attack(f.logits, x, tp, eps=0.5, steps=30, step_size=0.05)
    logits_adv = f.logits(x_adv)
    success = np.asarray(jnp.take_along_axis(logits_adv, tp[:, None], 1)[:, 0]
                         >= jnp.take_along_axis(logits_adv, y[:, None], 1)[:, 0])
    assert success.sum() >= 8, "the test attack should succeed on most random inputs"
    cam_x, cam_adv = f.cam(f.features(x)), f.cam(f.features(x_adv))
    hw = cam_x.shape[1] * cam_x.shape[2]
    d21 = np.asarray(discrepancy(cam_x, cam_adv, y, tp, classes="two")) / hw
    bound = np.asarray(margin_lower_bound(logits, y, tp))
    assert np.all(bound[success] > 0)
    assert np.all(d21[success] >= bound[success] * (1 - 1e-5)), (d21[success], bound[success])
    # The 1-class measure has no such floor (methods.md 1.4): it is only required to be >= 0.
    assert np.all(np.asarray(discrepancy(cam_x, cam_adv, y, classes="one")) >= 0)
