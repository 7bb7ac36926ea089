"""ISA (Boopathy et al. 2020, methods.md 1.3-1.5): class sets, the attack's invariants, the bound of
section 1.4 that no attack can beat, and the curve summaries on hand-made results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.analysis.isa import (
    ISAResult,
    attribution_class_maps,
    cam_class_maps,
    cam_plus_plus_class_maps,
    isa,
    isa_curve,
    isa_reference_summary,
    margin_discrepancy,
    representation_maps,
    select_classes,
    set_discrepancy,
)
from jaxadv.metrics import discrepancy

K = 4


def _gap_net(key):
    """A one-conv GAP-CAM network on 8x8x1 images: A = relu(conv(x)) (B, 4, 4, 6), CAM = A W + b,
    logits = mean_hw CAM (exactly a GAP-linear head)."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (3, 3, 1, 6)) * 0.8
    w2 = jax.random.normal(k2, (6, K))
    b2 = jax.random.normal(k3, (K,)) * 0.1

    def features(x):
        a = jax.lax.conv_general_dilated(x, w1, (2, 2), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(a)

    def cam(a):
        return a @ w2 + b2

    def head(a):
        return jnp.mean(cam(a), axis=(1, 2))

    return features, head, cam, lambda x: head(features(x))


@pytest.fixture(scope="module")
def net():
    return _gap_net(jax.random.key(0))


@pytest.fixture(scope="module")
def data():
    x = jax.random.uniform(jax.random.key(1), (6, 8, 8, 1))
    return x, jnp.asarray([0, 1, 2, 3, 0, 1])


def test_class_sets_match_the_discrepancy_metric(net):
    features, _, cam, _ = net
    maps_fn = cam_class_maps(features, cam)
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
    x2 = jnp.clip(x + 0.2 * jax.random.normal(jax.random.key(3), x.shape), 0, 1)
    y, t = jnp.asarray([0, 1, 3]), jnp.asarray([2, 0, 1])
    full_c, full_a = cam(features(x)), cam(features(x2))
    for classes in ("one", "two", "all"):
        cls = select_classes(classes, y, t, K)
        for norm in ("l1", "l2sq", "l2"):
            for normalize in (False, True):
                got = set_discrepancy(maps_fn(x, cls), maps_fn(x2, cls), norm=norm,
                                      normalize=normalize)
                want = discrepancy(full_c, full_a, y, t, classes=classes, norm=norm,
                                   normalize=normalize)
                np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="class set"):
        select_classes("three", y, t, K)


def test_cam_plus_plus_and_attribution_maps(net):
    features, head, cam, _ = net
    x = jax.random.uniform(jax.random.key(4), (2, 8, 8, 1))
    cls = jnp.asarray([[0, 2], [3, 1]])
    got = cam_plus_plus_class_maps(features, head)(x, cls)
    # closed form: sum_k relu(W_kc) A_k
    a = features(x)
    w = (cam(jnp.eye(6)[None, None]) - cam(jnp.zeros((1, 1, 1, 6))))[0, 0]  # (6, K) = W
    want = jnp.einsum("bhwk,kc->bhwc", a, jax.nn.relu(w))
    want = jnp.take_along_axis(want, cls[:, None, None, :], axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a one-class attribution stacked per requested class
    maps = attribution_class_maps(lambda z, c: z[..., 0] * (c[:, None, None] + 1.0))(x, cls)
    np.testing.assert_allclose(maps[..., 1], x[..., 0] * (cls[:, 1, None, None] + 1.0))
    rep = representation_maps(features)(x, cls)
    assert rep.shape == (2, 4, 4, 6)


def test_no_example_beats_the_margin_bound(net):
    """Section 1.4: for GAP-CAM, any x' classified as t' has D_{2,1} / hw >= (f_t - f_t')(x) / 2.
    Independent random images that change the label all satisfy it, and some come within a factor
    4 of it (a discrepancy four times too small would break the test)."""
    features, _, cam, logits_fn = net
    maps_fn = cam_class_maps(features, cam)
    x = jax.random.uniform(jax.random.key(5), (256, 8, 8, 1))
    x2 = jax.random.uniform(jax.random.key(6), x.shape) ** 3
    y = jnp.argmax(logits_fn(x), -1)
    t = jnp.argmax(logits_fn(x2), -1)
    flipped = np.asarray(t != y)
    assert flipped.sum() > 20
    res = margin_discrepancy(logits_fn, maps_fn, x, x2, y, t)
    assert np.all(np.asarray(res.success)[flipped])
    bound, d = np.asarray(res.bound)[flipped], np.asarray(res.discrepancy)[flipped]
    assert np.all(d >= bound - 1e-5)
    assert np.any(d < 4 * bound)  # not vacuous: some flips come within a factor 4 of it
    # IG of a linear model is exact (x * w_c), so the "sum" version holds with equality-level
    # tightness for a single-coordinate move.
    w = jax.random.normal(jax.random.key(7), (64, K))
    lin = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    ig_maps = attribution_class_maps(lambda z, c: z[..., 0] * w[:, c].T.reshape(-1, 8, 8))
    yl, tl = jnp.argmax(lin(x), -1), jnp.argmax(lin(x2), -1)
    res = margin_discrepancy(lin, ig_maps, x, x2, yl, tl, completeness="sum")
    ok = np.asarray(tl != yl)
    assert np.all(np.asarray(res.discrepancy)[ok] >= np.asarray(res.bound)[ok] - 1e-4)
    with pytest.raises(ValueError, match="completeness"):
        margin_discrepancy(lin, ig_maps, x, x2, yl, tl, completeness="max")


@pytest.fixture(scope="module")
def isa_run(net, data):
    features, _, cam, logits_fn = net
    x, y = data
    maps_fn = cam_class_maps(features, cam)
    res = jax.jit(lambda xx, yy: isa(logits_fn, maps_fn, xx, yy, jax.random.key(8),
                                     multipliers=(1.0, 1.5, 2.0), eps_rounds=6,
                                     gamma_rounds=4))(x, y)
    return res, maps_fn


def test_isa_invariants(net, data, isa_run):
    _, _, _, logits_fn = net
    x, y = data
    res, maps_fn = isa_run
    p, b = 3, x.shape[0]
    assert res.x_adv.shape == (p, *x.shape) and res.eps.shape == (p, b)
    found = np.isfinite(np.asarray(res.eps_adv))
    assert found.sum() >= 3
    t = np.asarray(res.targets)
    assert np.all(t != np.asarray(y))
    succ = np.asarray(res.success)
    assert succ[:, found].mean() > 0.8
    # containment: ||x' - x|| <= p eps_adv, inside the box; successes are classified as t'
    for i, m in enumerate((1.0, 1.5, 2.0)):
        lim = np.where(found, m * np.asarray(res.eps_adv), 0.0)
        assert np.all(np.asarray(res.eps[i]) <= lim + 1e-5)
        pred = np.asarray(jnp.argmax(logits_fn(res.x_adv[i]), -1))
        assert np.all(pred[succ[i]] == t[succ[i]])
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    # failed examples are returned unchanged
    np.testing.assert_array_equal(np.asarray(res.x_adv)[~succ], np.broadcast_to(
        np.asarray(x), res.x_adv.shape)[~succ])
    # the reported discrepancy is the normalised two-class l1 of the kept examples
    cls = jnp.stack([y, res.targets], 1)
    want = set_discrepancy(maps_fn(x, cls), maps_fn(res.x_adv[1], cls), norm="l1",
                           normalize=True)
    np.testing.assert_allclose(res.discrepancy[1], want, rtol=1e-5)
    # and it obeys the bound (the whole point of the "proper" measure)
    md = margin_discrepancy(logits_fn, maps_fn, x, res.x_adv[2], y, res.targets)
    ok = np.asarray(md.success)
    assert np.all(np.asarray(md.discrepancy)[ok] >= np.asarray(md.bound)[ok] - 1e-5)


def test_kappa_zero_finds_sneaking_examples(net, data, isa_run):
    """At kappa = 0 the clipped margin is never below 0: success is decided on the unclipped
    margin, so ISA finds examples as it does at kappa = 0.1 (earlier: none at all)."""
    features, _, cam, logits_fn = net
    x, y = data
    res = jax.jit(lambda xx, yy: isa(logits_fn, cam_class_maps(features, cam), xx, yy,
                                     jax.random.key(8), kappa=0.0, multipliers=(1.5,),
                                     eps_rounds=6, gamma_rounds=2))(x, y)
    found = np.isfinite(np.asarray(res.eps_adv))
    assert found.sum() >= np.isfinite(np.asarray(isa_run[0].eps_adv)).sum() - 1 >= 2
    assert np.asarray(res.success)[0, found].mean() > 0.8


def test_gamma_trades_discrepancy_for_radius(net, data, isa_run):
    """The gamma search only ever lowers the discrepancy relative to gamma = 0 at the same radius:
    with a large weight the kept examples change the maps less than plain attacks do."""
    features, _, cam, logits_fn = net
    x, y = data
    res, maps_fn = isa_run
    plain = isa(logits_fn, maps_fn, x, y, jax.random.key(8), multipliers=(2.0,), eps_rounds=6,
                gamma_rounds=1, gamma_init=0.0, gamma_bounds=(0.0, 1e-12))
    both = np.asarray(res.success[2] & plain.success[0])
    assert both.sum() >= 2
    assert np.mean(np.asarray(res.discrepancy[2])[both]) <= np.mean(
        np.asarray(plain.discrepancy[0])[both]) + 1e-6
    assert np.all(np.asarray(res.gamma[2])[both] >= 0)


def test_plain_attack_is_the_curves_first_point(net, data):
    """The reference's curve starts at the plain attack (gamma = 0 at eps_adv,
    ``attacks.append(x_adv)`` before its multiplier loop); NS's D_0 and eps_0 are that point's."""
    features, _, cam, logits_fn = net
    x, _ = data
    y = jnp.argmax(logits_fn(x), -1)  # labels the clean logits rank first: every image can count
    res = jax.jit(lambda xx, yy: isa(logits_fn, cam_class_maps(features, cam), xx, yy,
                                     jax.random.key(8), multipliers=(1.0, 1.5, 2.0),
                                     eps_rounds=6, gamma_rounds=4))(x, y)
    found = np.isfinite(np.asarray(res.eps_adv))
    ok = np.asarray(res.plain_success)
    assert ok[found].mean() > 0.8 and not ok[~found].any()
    assert np.all(np.asarray(res.plain_eps) <= np.where(found, np.asarray(res.eps_adv), 0) + 1e-5)
    pred = np.asarray(jnp.argmax(logits_fn(x + 0), -1))
    assert found.sum() >= 2 and np.all(pred[found] == np.asarray(y)[found])
    with_plain, without = isa_curve(res), isa_curve(res, include_plain=False)
    assert with_plain.includes_plain and not without.includes_plain
    assert with_plain.multipliers.tolist() == [1.0, 1.0, 1.5, 2.0]
    keep = np.asarray(res.valid & res.plain_success & np.all(res.success, 0))
    assert with_plain.num_images == keep.sum() >= 2
    np.testing.assert_allclose(with_plain.eps[0], np.asarray(res.plain_eps)[keep].mean(),
                               rtol=1e-6)
    d0 = np.asarray(res.plain_discrepancy)[keep].mean()
    np.testing.assert_allclose(with_plain.discrepancy[0], d0, rtol=1e-6)
    ns = ((d0 - with_plain.discrepancy[-1]) / d0) / (
        (with_plain.eps[-1] - with_plain.eps[0]) / with_plain.eps[0])
    np.testing.assert_allclose(with_plain.normalized_slope, ns, rtol=1e-5)
    assert without.multipliers.tolist() == [1.0, 1.5, 2.0]
    # the gamma search never keeps more discrepancy than the plain attack at the same radius
    # (after the curve's monotone step, which starts from the plain point)
    assert np.all(np.diff(with_plain.discrepancy) <= 1e-6)


def test_representation_loss_is_the_sum_over_the_feature_map(net, data):
    """The reference's rep loss is ||A(x') - A(x)||_1 (``rep_diff``), not its mean over the k
    channels (which made gamma k times weaker and left its search at the cap)."""
    features, _, _, logits_fn = net
    x, _ = data
    y = jnp.argmax(logits_fn(x), -1)
    maps_fn = representation_maps(features)
    assert maps_fn.loss_reduction == "sum"
    x2 = jnp.clip(x + 0.1 * jax.random.normal(jax.random.key(4), x.shape), 0, 1)
    cls = select_classes("all", y, y, K)
    a, a2 = features(x), features(x2)
    np.testing.assert_allclose(set_discrepancy(maps_fn(x, cls), maps_fn(x2, cls), norm="l1",
                                               reduction="sum"),
                               jnp.abs(a2 - a).sum((1, 2, 3)), rtol=1e-5)
    run = lambda **kw: jax.jit(lambda xx, yy: isa(  # noqa: E731
        logits_fn, maps_fn, xx, yy, jax.random.key(8), multipliers=(1.5,), eps_rounds=6,
        classes="all", **kw))(x, y)
    default, summed, mean = run(), run(loss_reduction="sum"), run(loss_reduction="mean")
    np.testing.assert_array_equal(default.gamma, summed.gamma)
    np.testing.assert_array_equal(default.x_adv, summed.x_adv)
    ok = np.asarray(default.success[0] & mean.success[0])
    assert ok.sum() >= 2
    # On this toy net gamma reaches the search's cap either way; the loss k = 6 times larger
    # then hides more of the change (the reported discrepancy is the same measure for both).
    d_sum, d_mean = np.asarray(default.discrepancy[0])[ok], np.asarray(mean.discrepancy[0])[ok]
    assert np.all(d_sum <= d_mean + 1e-6) and np.mean(d_sum) < 0.9 * np.mean(d_mean)


def _fake(disc, eps, valid=None, success=None):
    disc, eps = np.asarray(disc, np.float32), np.asarray(eps, np.float32)
    p, b = disc.shape
    return ISAResult(
        eps_adv=np.ones(b), targets=np.zeros(b, int),
        valid=np.ones(b, bool) if valid is None else np.asarray(valid),
        multipliers=np.arange(1, p + 1, dtype=np.float32), eps=eps,
        gamma=np.zeros((p, b)), success=np.ones((p, b), bool) if success is None else success,
        discrepancy=disc, kendall=np.zeros((p, b)), pearson=np.zeros((p, b)), x_adv=np.zeros(()))


def test_curve_enforces_monotone_discrepancy_and_computes_slopes():
    # two images; image 1's discrepancy goes up at p=3 and is reset to its earlier value
    disc = [[1.0, 2.0], [0.5, 1.0], [0.25, 1.5]]
    eps = [[0.1, 0.1], [0.2, 0.2], [0.4, 0.4]]
    c = isa_curve(_fake(disc, eps))
    np.testing.assert_allclose(c.discrepancy, [1.5, 0.75, 0.625])
    np.testing.assert_allclose(c.eps, [0.1, 0.2, 0.4])
    assert c.num_images == 2
    np.testing.assert_allclose(c.normalized_slope, ((1.5 - 0.625) / 1.5) / 3.0, rtol=1e-6)
    pairs = [((1.5 - 0.75) / 1.5) / 1.0, ((0.75 - 0.625) / 0.75) / 1.0]
    np.testing.assert_allclose(c.mean_adjacent_slope, np.mean(pairs), rtol=1e-6)
    np.testing.assert_allclose(c.eps_vs_log_d_slope,
                               np.polyfit(np.log(c.discrepancy), c.eps, 1)[0], rtol=1e-5)


def test_curve_counts_only_valid_images_that_always_succeed():
    disc = [[1.0, 9.0, 9.0], [0.5, 9.0, 9.0]]
    eps = [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]]
    success = np.array([[True, True, True], [True, True, False]])
    c = isa_curve(_fake(disc, eps, valid=[True, False, True], success=success))
    assert c.num_images == 1
    np.testing.assert_allclose(c.discrepancy, [1.0, 0.5])


def test_reference_summary_follows_the_official_code_by_hand():
    # image 0: all three points count; its discrepancy goes up at the last point (running min)
    # image 1: the middle point failed; its own two points count
    # image 2: flat curve, left out; image 3: invalid, left out
    disc = [[1.0, 2.0, 0.7, 5.0], [0.5, 9.0, 0.7, 5.0], [0.8, 1.0, 0.7, 5.0]]
    eps = [[0.1, 0.2, 0.3, 0.1], [0.2, 0.3, 0.3, 0.1], [0.4, 0.5, 0.3, 0.1]]
    success = np.array([[True, True, True, True], [True, False, True, True],
                        [True, True, True, True]])
    valid = np.array([True, True, True, False])
    ns0 = ((1.0 - 0.5) * 0.1) / ((0.4 - 0.1) * 1.0)  # D: 1, .5, .5; eps_0 .1, eps_last .4
    ns1 = ((2.0 - 1.0) * 0.2) / ((0.5 - 0.2) * 2.0)  # D: 2, 1 at eps .2, .5
    d, ns = isa_reference_summary(np.asarray(disc), np.asarray(eps), valid[None] & success)
    np.testing.assert_allclose(d, (1.0 + 0.5 + 0.5 + 2.0 + 1.0) / 5)
    np.testing.assert_allclose(ns, (ns0 + ns1) / 5)  # over the 5 points, as the reference
    c = isa_curve(_fake(disc, eps, valid=valid, success=success))
    assert c.num_images == 2  # the mean curve keeps images 0 and 2 (successful everywhere)
    np.testing.assert_allclose([c.reference_mean_discrepancy, c.reference_normalized_slope],
                               [d, ns], rtol=1e-6)
    none = isa_reference_summary(np.ones((2, 1)), np.ones((2, 1)), np.zeros((2, 1), bool))
    assert np.isnan(none).all()
    # an undefined (NaN) discrepancy is skipped like a failed point (the reference's d >= 0)
    with_nan = np.asarray(disc).copy()
    with_nan[1, 1] = np.nan
    np.testing.assert_allclose(
        isa_reference_summary(with_nan, np.asarray(eps), valid[None] & np.ones_like(success)),
        (d, ns))
    with pytest.raises(ValueError, match="share one"):
        isa_reference_summary(np.ones((2, 1)), np.ones((3, 1)), np.ones((2, 1), bool))


def test_bad_arguments(net, data):
    features, _, cam, logits_fn = net
    x, y = data
    maps_fn = cam_class_maps(features, cam)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="class set"):
        isa(logits_fn, maps_fn, x, y, key, classes="some")
    with pytest.raises(ValueError, match="norm"):
        isa(logits_fn, maps_fn, x, y, key, norm="linf")
    with pytest.raises(ValueError, match="multipliers"):
        isa(logits_fn, maps_fn, x, y, key, multipliers=(1.0, 0.0))
    with pytest.raises(ValueError, match="gamma_bounds"):
        isa(logits_fn, maps_fn, x, y, key, gamma_bounds=(1.0, 0.5))
    for gamma_init in (-0.5, 2.0):  # a negative gamma rewards the discrepancy; above the bracket
        with pytest.raises(ValueError, match="gamma_init must lie in gamma_bounds"):
            isa(logits_fn, maps_fn, x, y, key, gamma_init=gamma_init)
    with pytest.raises(ValueError, match="loss_reduction"):
        isa(logits_fn, maps_fn, x, y, key, loss_reduction="max")
    with pytest.raises(ValueError, match="labels"):
        isa(logits_fn, maps_fn, x, y + 10, key)
