"""RoI vs RoA (Chattopadhyay et al. 2020, methods.md 3.2) on a planted problem with known answers.

The planted model sees two 4 x 4 patches of an 8 x 8 image: class 0 is the sum of patch A (top-left),
class 1 is four times the sum of patch B (bottom-right). The clean image is 1 on A and 0 elsewhere
(class 0); the attack writes 1 on B (class 1). Every importance method then puts the RoI on A, the
attack map puts the RoA on B, and neutralising RoA \\ RoI with 0 gives back the clean image.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from jaxadv import attributions
from jaxadv.analysis import roi_roa as rr
from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.masked import masked_pgd

H = W = 8
A = np.zeros((H, W), bool)
A[:4, :4] = True
B = np.zeros((H, W), bool)
B[4:, 4:] = True
HEAD = jnp.array([[64.0, 0.0], [0.0, 256.0]])  # GAP over 64 pixels: f0 = sum_A x, f1 = 4 sum_B x


def features_fn(x):
    return jnp.concatenate([x * A[None, :, :, None], x * B[None, :, :, None]], axis=-1)


def head_fn(a):
    return jnp.mean(a, axis=(1, 2)) @ HEAD


def logits_fn(x):
    return head_fn(features_fn(x))


def planted(batch=2):
    x = jnp.broadcast_to(jnp.asarray(A, jnp.float32)[None, :, :, None], (batch, H, W, 1))
    x_adv = x + jnp.asarray(B, jnp.float32)[None, :, :, None]
    return x, jnp.zeros(batch, jnp.int32), x_adv


@pytest.mark.parametrize("method", rr.IMPORTANCE_METHODS)
def test_every_importance_method_finds_the_planted_roi(method):
    x, y, _ = planted()
    kw = {"occlusion_window": 1, "ig_num_steps": 4}
    s = rr.importance_map(logits_fn, x, y, method=method, features_fn=features_fn,
                          head_fn=head_fn, **kw)
    assert s.shape == (2, H, W)
    assert float(s.min()) == 0.0 and float(s.max()) == pytest.approx(1.0)
    roi = rr.top_fraction_mask(s, 0.25)
    np.testing.assert_array_equal(np.asarray(roi), np.broadcast_to(A, roi.shape))


def test_ig_importance_does_not_depend_on_its_chunk_size():
    """``ig_chunk_size`` reaches Integrated Gradients: one path point per call, all at once and
    the default ``"auto"`` give the same map."""
    x, y, _ = planted()
    maps = [rr.importance_map(logits_fn, x, y, method="integrated_gradients", ig_num_steps=40,
                              **kw) for kw in ({}, {"ig_chunk_size": 1}, {"ig_chunk_size": None})]
    for m in maps[1:]:
        np.testing.assert_allclose(m, maps[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        rr.importance_map(logits_fn, x, y, method="integrated_gradients", ig_chunk_size="some")


def test_planted_isolation_metrics_and_neutralisation():
    x, y, x_adv = planted()
    s_i = rr.importance_map(logits_fn, x, y, features_fn=features_fn, head_fn=head_fn)
    s_a = rr.oracle_attack_map(x, x_adv)
    np.testing.assert_allclose(s_a, np.broadcast_to(B, s_a.shape).astype(np.float32))
    regions = rr.segregate(s_i, s_a, p_importance=0.25, p_attack=0.25)
    iso = rr.isolate(*regions)
    np.testing.assert_array_equal(iso.both, False)
    np.testing.assert_array_equal(iso.importance_only, np.broadcast_to(A, (2, H, W)))
    np.testing.assert_array_equal(iso.attack_only, np.broadcast_to(B, (2, H, W)))
    np.testing.assert_array_equal(iso.rest, np.broadcast_to(~A & ~B, (2, H, W)))
    # The four regions partition the image.
    np.testing.assert_array_equal(sum(np.asarray(r, int) for r in iso), 1)
    np.testing.assert_array_equal(rr.isolation_labels(*regions)[0], A * 1 + B * 2)

    m = rr.overlap_metrics(*regions, x_adv - x)
    np.testing.assert_array_equal(m.iou, 0.0)
    np.testing.assert_array_equal(m.overlap, 0.0)
    np.testing.assert_array_equal(m.energy_share, 0.0)

    for fill, kw in (("zero", {}), ("mean", {"mean": 0.0})):
        x_n = rr.neutralize(x_adv, iso.attack_only, fill, **kw)
        np.testing.assert_array_equal(x_n, x)
    x_cn = rr.neutralize(x, iso.attack_only, "zero")
    out = rr.neutralization_outcome(logits_fn, x, y, x_adv, x_n, x_cn)
    assert np.all(out.clean_correct) and not np.any(out.adv_correct)
    assert np.all(out.neutralized_correct) and np.all(out.neutralized_clean_correct)
    s = rr.summarize_outcome(out)
    assert float(s["recovery_rate"]) == 1.0 and int(s["num_attacked"]) == 2
    assert float(s["attacked_accuracy"]) == 0.0
    # Neutralising the RoI instead destroys the clean evidence: the attack wins.
    wrong = rr.neutralize(x_adv, iso.importance_only, "zero")
    assert np.all(np.argmax(logits_fn(wrong), -1) == 1)


def test_real_masked_attack_on_planted_patch_is_undone():
    """A masked PGD confined to B is found as the RoA and neutralised (end to end)."""
    x, y, _ = planted()
    res = masked_pgd(logits_fn, x, y, jax.random.key(0), mask=B[None, :, :, None], eps=1.0,
                     step_size=0.5, num_steps=2, random_start=False)
    assert np.all(res.success)
    s_i = rr.importance_map(logits_fn, x, y, features_fn=features_fn, head_fn=head_fn)
    regions = rr.segregate(s_i, rr.oracle_attack_map(x, res.x_adv))
    m = rr.isolate(*regions).attack_only
    assert np.all(np.asarray(m) <= B)  # RoA \ RoI inside the attacked patch
    x_n = rr.neutralize(res.x_adv, m, "zero")
    assert np.all(np.argmax(logits_fn(x_n), -1) == 0)


def test_overlap_metrics_by_hand():
    roi = np.zeros((1, H, W), bool)
    roi[0, :4, :4] = True
    roa = np.zeros((1, H, W), bool)
    roa[0, 2:6, 2:6] = True  # 4 pixels in common
    delta = np.where(roa, 1.0, 0.0)[..., None].astype(np.float32)
    delta[0, 2:4, 2:4] = 0.5
    m = rr.overlap_metrics(jnp.asarray(roi), jnp.asarray(roa), jnp.asarray(delta))
    assert float(m.iou[0]) == pytest.approx(4 / 28)
    assert float(m.overlap[0]) == pytest.approx(4 / 16)
    assert float(m.energy_share[0]) == pytest.approx(4 * 0.25 / (4 * 0.25 + 12))
    # Undefined cases are 0 (empty regions, no perturbation).
    z = rr.overlap_metrics(jnp.zeros((1, H, W), bool), jnp.zeros((1, H, W), bool),
                           jnp.zeros((1, H, W, 1)))
    assert all(float(v[0]) == 0.0 for v in z)


@pytest.mark.parametrize("p,count", [(0.001, 1), (0.01, 1), (0.2, 20), (0.25, 25), (0.333, 33),
                                     (0.5, 50), (1.0, 100)])
def test_top_fraction_counts(p, count):
    s = jax.random.normal(jax.random.key(1), (3, 10, 10))
    m = rr.top_fraction_mask(s, p)
    np.testing.assert_array_equal(np.asarray(m).sum((1, 2)), count)
    # The selected entries are the largest ones.
    flat, mf = np.asarray(s).reshape(3, -1), np.asarray(m).reshape(3, -1)
    for f, k in zip(flat, mf, strict=True):
        assert f[k].min() >= f[~k].max() if (~k).any() else True


def test_top_fraction_ties_are_broken_by_position_and_fraction_is_traced():
    s = jnp.zeros((2, 4, 4))
    m = rr.top_fraction_mask(s, 0.25)
    np.testing.assert_array_equal(np.asarray(m)[0].ravel(), np.arange(16) < 4)
    traces = []

    @jax.jit
    def counts(scores, ps):
        traces.append(1)
        return jax.vmap(lambda p: rr.top_fraction_mask(scores, p).sum((1, 2)))(ps)

    s = jax.random.uniform(jax.random.key(2), (2, 10, 10))
    np.testing.assert_array_equal(counts(s, jnp.array([0.1, 0.5])), [[10, 10], [50, 50]])
    np.testing.assert_array_equal(counts(s, jnp.array([0.3, 0.07])), [[30, 30], [7, 7]])
    assert len(traces) == 1


def test_top_fraction_ties_are_broken_at_random_with_a_key():
    """An l-inf sign attack's |delta|: a few pixels above eps / 2 (clipped), the rest tied at eps.
    With a key the tied pixels are drawn anywhere (mean row near the centre), the larger ones are
    always in, the count is exact, and two keys draw different regions; without it the tied
    picks are the top rows."""
    s = jnp.full((64, 28, 28), 0.3).at[:, 20, 5:10].set(0.5)
    k = round(0.2 * 28 * 28)
    rows = np.arange(28)[None, :, None]
    by_position = np.asarray(rr.top_fraction_mask(s, 0.2))
    assert (rows * by_position).sum() / by_position.sum() < 4
    m = np.asarray(rr.top_fraction_mask(s, 0.2, key=jax.random.key(0)))
    np.testing.assert_array_equal(m.sum((1, 2)), k)
    assert m[:, 20, 5:10].all()
    assert 12 < (rows * m).sum() / m.sum() < 15
    other = np.asarray(rr.top_fraction_mask(s, 0.2, key=jax.random.key(1)))
    assert (m & other).sum() < 0.5 * m.sum()
    reg = rr.segregate(s, s, key=jax.random.key(2))
    assert 12 < (rows * np.asarray(reg.roa)).sum() / np.asarray(reg.roa).sum() < 15


def test_random_region_control_keeps_the_count():
    m = jax.random.uniform(jax.random.key(6), (3, 8, 8)) < jnp.array([0.0, 0.2, 0.7])[:, None, None]
    r = rr.random_region_like(m, jax.random.key(7))
    np.testing.assert_array_equal(r.sum((1, 2)), m.sum((1, 2)))
    assert not np.array_equal(r, m)


def test_threshold_segregation():
    s = jnp.arange(16.0).reshape(1, 4, 4) / 15
    r = rr.segregate(s, 1 - s, tau_importance=0.5, tau_attack=0.9)
    assert int(r.roi.sum()) == 8 and int(r.roa.sum()) == 2


def test_fills():
    x = jax.random.uniform(jax.random.key(3), (2, 6, 6, 3))
    np.testing.assert_array_equal(rr.fill_value(x, "zero"), 0.0)
    mean = jnp.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(rr.fill_value(x, "mean", mean=mean)[1, 4, 2], mean)
    np.testing.assert_allclose(rr.fill_value(x, "blur", blur_sigma=1.0),
                               scipy.ndimage.gaussian_filter(np.asarray(x), (0, 1, 1, 0),
                                                             mode="reflect"), atol=1e-5)
    const = jnp.full((1, 6, 6, 1), 0.4)
    np.testing.assert_allclose(rr.fill_value(const, "blur"), const, atol=1e-6)
    n1 = rr.fill_value(x, "noise", key=jax.random.key(0), bounds=(0.2, 0.3))
    assert float(n1.min()) >= 0.2 and float(n1.max()) <= 0.3
    np.testing.assert_array_equal(n1, rr.fill_value(x, "noise", key=jax.random.key(0),
                                                    bounds=(0.2, 0.3)))
    assert not np.allclose(n1, rr.fill_value(x, "noise", key=jax.random.key(1), bounds=(0.2, 0.3)))
    stack = rr.fill_values(x, ("zero", "mean"), mean=0.5)
    assert stack.shape == (2,) + x.shape
    # Neutralisation: mask 1 -> fill, mask 0 -> x, soft masks interpolate.
    ones, zeros = jnp.ones(x.shape[:3]), jnp.zeros(x.shape[:3], bool)
    np.testing.assert_allclose(rr.neutralize(x, ones, "mean", mean=mean),
                               jnp.broadcast_to(mean, x.shape))
    np.testing.assert_array_equal(rr.neutralize(x, zeros, "zero"), x)
    np.testing.assert_allclose(rr.neutralize(x, 0.5 * ones, 0.0), 0.5 * x)


def test_attack_map_smoothing_blocks_and_stacking():
    delta = np.zeros((1, 7, 7, 2), np.float32)
    delta[0, 3, 3] = [0.5, -0.5]
    s = rr.attack_map(jnp.asarray(delta), normalization=None)
    assert float(s[0, 3, 3]) == 1.0 and float(s.sum()) == 1.0
    box = rr.attack_map(jnp.asarray(delta), smoothing="box", box_size=3, normalization=None)
    np.testing.assert_allclose(np.asarray(box)[0, 2:5, 2:5], 1 / 9, rtol=1e-6)
    assert float(box[0, 0, 0]) == 0.0
    gauss = rr.attack_map(jnp.asarray(delta), smoothing="gaussian", sigma=1.0, normalization=None)
    ref = scipy.ndimage.gaussian_filter(np.abs(delta).sum(-1), (0, 1, 1), mode="reflect")
    np.testing.assert_allclose(gauss, ref, atol=1e-6)
    norm = rr.attack_map(jnp.asarray(delta), smoothing="gaussian", sigma=1.0)
    assert float(norm.max()) == pytest.approx(1.0) and int(jnp.argmax(norm[0])) == 3 * 7 + 3
    # Block version: 5 x 5 map, 2 x 2 cells (the last row/column of cells is partial).
    m = jnp.arange(25.0).reshape(1, 5, 5)
    blk = np.asarray(rr.block_average(m, block_size=2))[0]
    assert blk[0, 0] == blk[1, 1] == np.mean([0, 1, 5, 6])
    assert blk[4, 4] == 24 and blk[0, 4] == np.mean([4, 9]) and blk[4, 0] == np.mean([20, 21])
    # Stacked attacks are averaged after per-image max normalisation.
    d2 = jnp.stack([jnp.asarray(delta), 10 * jnp.roll(jnp.asarray(delta), 1, axis=2)])
    s2 = rr.attack_map(d2, normalization=None)
    assert float(s2[0, 3, 3]) == 0.5 and float(s2[0, 3, 4]) == 0.5


def test_proxy_and_prior_maps():
    x, _, x_adv = planted(3)
    calls = []

    def fake_attack(lf, xs, ys, key):  # moves B by 0.1 * (label + 1) plus key-dependent noise on A
        calls.append(1)
        d = 0.1 * (ys + 1)[:, None, None, None] * B[None, :, :, None]
        d = d + 0.01 * jax.random.uniform(key, xs.shape) * A[None, :, :, None]
        return AttackResult(xs + d, jnp.ones(xs.shape[0], bool), jnp.zeros(xs.shape[0]))

    s = rr.proxy_attack_map(fake_attack, logits_fn, x_adv, jax.random.key(0), normalization=None)
    np.testing.assert_allclose(np.asarray(s)[:, B], 0.2, rtol=1e-5)  # re-attacked away from its label, 1
    s = rr.proxy_attack_map(fake_attack, logits_fn, x, jax.random.key(0), normalization=None)
    np.testing.assert_allclose(np.asarray(s)[:, B], 0.1, rtol=1e-5)  # the clean prediction is 0
    s3 = rr.proxy_attack_map(fake_attack, logits_fn, x, jax.random.key(0), num_restarts=3)
    assert s3.shape == (3, H, W) and np.all(np.asarray(rr.top_fraction_mask(s3, 0.25)) == B)
    maps = jnp.stack([jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)])
    np.testing.assert_allclose(rr.prior_attack_map(maps), 0.5 * (A + B))
    np.testing.assert_allclose(rr.prior_attack_map(maps, weights=jnp.array([0.0, 1.0])), B * 1.0)


def test_sweep_matches_single_calls_and_compiles_once():
    x, y, x_adv = planted(2)
    s_i = rr.importance_map(logits_fn, x, y, features_fn=features_fn, head_fn=head_fn)
    s_a = rr.oracle_attack_map(x, x_adv, smoothing="gaussian", sigma=1.0)
    s_a_noisy = s_a + 0.01 * jax.random.uniform(jax.random.key(4), s_a.shape)
    fills = ("zero", "noise", "blur")
    fa = rr.fill_values(x_adv, fills, key=jax.random.key(5))
    fc = rr.fill_values(x, fills, key=jax.random.key(5))
    traces = []

    @jax.jit
    def run(pi, pa):
        traces.append(1)
        return rr.neutralization_sweep(logits_fn, x, y, x_adv, importance_adv=s_i,
                                       attack_adv=s_a_noisy, importance_clean=s_i,
                                       attack_clean=s_a, p_importance=pi, p_attack=pa,
                                       fills_adv=fa, fills_clean=fc)

    p_i, p_a = jnp.array([0.25, 0.5]), jnp.array([0.05, 0.25, 0.6])
    out = run(p_i, p_a)
    run(p_i + 0.01, p_a)
    assert len(traces) == 1
    assert out.outcome.neutralized_correct.shape == (2, 3, 3, 2)
    assert out.mask_fraction.shape == (2, 3, 2)
    for i, pi in enumerate(p_i):
        for j, pa in enumerate(p_a):
            reg = rr.segregate(s_i, s_a_noisy, p_importance=pi, p_attack=pa)
            m = rr.isolate(*reg).attack_only
            np.testing.assert_allclose(out.mask_fraction[i, j], m.mean((1, 2)))
            for f in range(len(fills)):
                pred = jnp.argmax(logits_fn(rr.neutralize(x_adv, m, fa[f])), -1)
                np.testing.assert_array_equal(out.outcome.neutralized_correct[i, j, f], pred == y)
    # p_I = 0.25, p_A = 0.25: RoA \ RoI = B; zero fill recovers every image.
    summ = rr.summarize_outcome(out.outcome)
    assert summ["recovery_rate"].shape == (2, 3, 3)
    assert float(summ["recovery_rate"][0, 1, 0]) == 1.0
    assert float(summ["neutralized_clean_accuracy"][0, 1, 0]) == 1.0


def test_sweep_breaks_ties_with_its_key_as_segregate_does():
    """An l-inf sign attack's |delta| is eps almost everywhere: without a key the sweep's RoA is
    the top rows of the image; with one it is segregate(key=)'s region at every (p_I, p_A), and
    the regions of a larger p_A hold those of a smaller one (one random order per image)."""
    x, y, x_adv = planted(2)
    s_i = rr.importance_map(logits_fn, x, y, features_fn=features_fn, head_fn=head_fn)
    s_a = jnp.full(s_i.shape, 0.3)  # all tied
    fa = rr.fill_values(x_adv, ("zero",))
    fc = rr.fill_values(x, ("zero",))
    key = jax.random.key(7)
    p_i, p_a = jnp.array([0.1]), jnp.array([0.1, 0.2, 0.4])

    def sweep(k):
        return rr.neutralization_sweep(logits_fn, x, y, x_adv, importance_adv=s_i, attack_adv=s_a,
                                       importance_clean=s_i, attack_clean=s_a, p_importance=p_i,
                                       p_attack=p_a, fills_adv=fa, fills_clean=fc, key=k)

    out, by_position = sweep(key), sweep(None)
    masks = []
    for j, pa in enumerate(p_a):
        m = rr.isolate(*rr.segregate(s_i, s_a, p_importance=p_i[0], p_attack=pa,
                                     key=key)).attack_only
        masks.append(np.asarray(m))
        np.testing.assert_allclose(out.mask_fraction[0, j], m.mean((1, 2)))
        pred = jnp.argmax(logits_fn(rr.neutralize(x_adv, m, fa[0])), -1)
        np.testing.assert_array_equal(out.outcome.neutralized_correct[0, j, 0], pred == y)
        roa = np.asarray(rr.segregate(s_i, s_a, p_importance=p_i[0], p_attack=pa, key=key).roa)
        assert roa[:, H // 2:].any()  # not only the top rows, as by position
    assert np.all(masks[0] <= masks[1]) and np.all(masks[1] <= masks[2])
    first = np.asarray(rr.segregate(s_i, s_a, p_importance=0.1, p_attack=0.1).roa)
    assert not first[:, H // 2:].any()  # by position: the top rows only
    assert by_position.mask_fraction.shape == out.mask_fraction.shape


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, np.array([0.2, 1.2])])
def test_bad_fraction_names_the_fix(bad):
    s = jnp.ones((1, 4, 4))
    with pytest.raises(ValueError, match=r"\(0, 1\].*0\.2"):
        rr.segregate(s, s, p_importance=bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rr.top_fraction_mask(s, bad)


def test_bad_inputs_raise_value_errors():
    x, y, x_adv = planted(2)
    s = jnp.ones((2, H, W))
    with pytest.raises(ValueError, match="must match.*same batch"):
        rr.segregate(s, jnp.ones((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        rr.segregate(jnp.ones((2, H, W, 1)), s)
    with pytest.raises(ValueError, match="mask must be"):
        rr.neutralize(x, jnp.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="must match"):
        rr.oracle_attack_map(x, x_adv[:1])
    with pytest.raises(ValueError, match="needs key="):
        rr.fill_value(x, "noise")
    with pytest.raises(ValueError, match="needs mean="):
        rr.fill_value(x, "mean")
    with pytest.raises(ValueError, match="does not broadcast"):
        rr.fill_value(x, "mean", mean=jnp.ones(3))
    with pytest.raises(ValueError, match="Unknown fill"):
        rr.fill_value(x, "grey")
    with pytest.raises(ValueError, match="features_fn and head_fn"):
        rr.importance_map(logits_fn, x, y)
    with pytest.raises(ValueError, match="Unknown importance method"):
        rr.importance_map(logits_fn, x, y, method="lime")
    with pytest.raises(ValueError, match="Unknown sign"):
        rr.importance_map(logits_fn, x, y, method="saliency", sign="square")
    with pytest.raises(ValueError, match="odd int"):
        rr.box_filter(s, size=2)
    with pytest.raises(ValueError, match="Unknown smoothing"):
        rr.attack_map(x_adv - x, smoothing="median")
    with pytest.raises(ValueError, match=r"\(S, B, H, W, C\)"):
        rr.attack_map(jnp.ones((2, H, W)))
    with pytest.raises(ValueError, match="channel axis"):
        rr.neutralize(jnp.ones((2, H, W)), s)
    with pytest.raises(ValueError, match="fills_adv must be"):
        rr.neutralization_sweep(logits_fn, x, y, x_adv, importance_adv=s, attack_adv=s,
                                importance_clean=s, attack_clean=s, p_importance=0.2,
                                p_attack=0.2, fills_adv=x_adv, fills_clean=x_adv)


def test_grad_cam_map_is_upsampled_from_the_feature_grid():
    """A 2 x 2 feature map (each cell the mean of a 4 x 4 quadrant) upsampled to 8 x 8: Grad-CAM
    weights channels, so the RoI is where the channel is active (patch A)."""

    def feats(x):
        return x.reshape(x.shape[0], 2, 4, 2, 4, 1).mean((2, 4))

    def head(a):
        return jnp.stack([a[:, 0, 0, 0], a[:, 1, 1, 0]], -1)

    x = jnp.asarray(A, jnp.float32)[None, :, :, None]
    s = rr.importance_map(lambda v: head(feats(v)), x, 0, features_fn=feats, head_fn=head,
                          upsample_method="nearest")
    np.testing.assert_array_equal(np.asarray(rr.top_fraction_mask(s, 0.25))[0], A)
    assert attributions.grad_cam(feats, head, x, 0).shape == (1, 2, 2)
