"""Unit sensitivity, unit masking and network dissection (Xu et al. 2019 / Bau et al. 2017,
methods.md 2.5): hand-computed sensitivities and logits, dissection on planted masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.analysis import units
from jaxadv.attacks.base import AttackResult

# features = the image itself (units = channels), head = GAP + a fixed linear map
W = jnp.asarray([[1.0, -1.0, 0.0], [0.5, 2.0, -1.0], [0.0, 0.0, 3.0]])  # (k=3 units, K=3 classes)


def features_fn(x):
    return x


def head_fn(a):
    return jnp.mean(a, axis=(1, 2)) @ W


def _images(seed=0, b=4):
    return jax.random.uniform(jax.random.key(seed), (b, 4, 4, 3))


def test_unit_sensitivity_by_hand():
    x = _images()
    shift = jnp.asarray([[0.1, -0.2, 0.0], [0.3, 0.2, 0.0], [-0.1, -0.2, 0.0], [0.5, 0.0, 0.0]])
    s = units.unit_sensitivity(features_fn, x, x + shift[:, None, None, :])
    np.testing.assert_allclose(s.sensitivity, [0.25, 0.15, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.promoted, [0.225, 0.05, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.suppressed, [0.025, 0.1, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.mean_change, [0.2, -0.05, 0.0], atol=1e-6)
    s = units.unit_sensitivity(features_fn, x, x + shift[:, None, None, :],
                               where=jnp.asarray([True, False, True, False]))
    np.testing.assert_allclose(s.sensitivity, [0.1, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.mean_change, [0.0, -0.2, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="shaped like x"):
        units.unit_sensitivity(features_fn, x, x[:2])


def test_top_unit_masks():
    s = jnp.asarray([0.1, 0.5, np.nan, 0.3])
    masks = units.top_unit_masks(s, [0, 1, 2, 4])
    np.testing.assert_array_equal(masks, [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(units.top_unit_masks(s, 1), [1, 0, 1, 1])
    with pytest.raises(ValueError, match="<= the number of units"):
        units.top_unit_masks(s, [5])


def test_masked_units_logits_by_hand():
    x = _images(1)
    keep = jnp.asarray([1.0, 0.0, 1.0])
    logits = units.masked_units_logits_fn(features_fn, head_fn, keep)(x)
    a = np.asarray(x).mean((1, 2))
    want = a[:, [0]] * np.asarray(W)[0] + a[:, [2]] * np.asarray(W)[2]  # unit 1 zeroed
    np.testing.assert_allclose(logits, want, rtol=1e-6)


def test_unit_masking_curve_by_hand(key):
    x = _images(2, b=6)
    y = jnp.asarray([0, 1, 2, 0, 1, 2])
    x_adv = jnp.flip(x, 0)
    keep = units.top_unit_masks(jnp.asarray([0.3, 0.2, 0.1]), [0, 1, 2])

    def shift_attack(logits_fn, xb, yb, k):  # a fixed "attack": moves every image to x_adv
        return AttackResult(x_adv, jnp.zeros(xb.shape[:1], bool), jnp.zeros(xb.shape[:1]))

    curve = jax.jit(lambda km: units.unit_masking_curve(
        features_fn, head_fn, x, y, x_adv, key, keep_masks=km, attack_fn=shift_attack))(keep)
    for i in range(3):
        f = units.masked_units_logits_fn(features_fn, head_fn, keep[i])
        np.testing.assert_allclose(curve.clean[i], np.mean(np.argmax(f(x), -1) == y), atol=1e-6)
        np.testing.assert_allclose(curve.transfer[i], np.mean(np.argmax(f(x_adv), -1) == y),
                                   atol=1e-6)
    np.testing.assert_allclose(curve.adaptive, curve.transfer, atol=1e-6)
    assert np.all(np.isnan(units.unit_masking_curve(features_fn, head_fn, x, y, x_adv, key,
                                                    keep_masks=keep).adaptive))


# --- Network dissection on planted masks ----------------------------------------------------------

def _planted(n=20, size=8, seed=0):
    rng = np.random.default_rng(seed)
    concepts = np.zeros((n, size, size, 3), bool)
    for i in range(n):
        r, c = rng.integers(0, size - 2, 2)
        concepts[i, r:r + 2, c:c + 3, 0] = True  # 6 pixels of 64: 9.4% of the probe pixels
        concepts[i, :, rng.integers(0, size), 1] = True  # a column
    concepts[..., 2] = rng.random((n, size, size)) < 0.05
    acts = np.stack([concepts[..., 0], concepts[..., 0] | concepts[..., 1],
                     np.zeros((n, size, size)), rng.random((n, size, size))], -1)
    return acts.astype(np.float32), concepts


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_dissection_unit_copying_a_mask_gets_iou_one():
    acts, concepts = _planted()
    # top 30% > the <= 22% area of units 0 and 1: T_u = 0, so M_u = {A_u > 0} = the copied mask
    d = units.dissect(jnp.asarray(acts), jnp.asarray(concepts), top_fraction=0.3)
    np.testing.assert_allclose(d.thresholds[:3], 0.0)
    np.testing.assert_allclose(d.iou[0], [1.0, _iou(concepts[..., 0], concepts[..., 1]),
                                          _iou(concepts[..., 0], concepts[..., 2])], rtol=1e-6)
    union01 = concepts[..., 0] | concepts[..., 1]
    np.testing.assert_allclose(d.iou[1], [_iou(union01, concepts[..., c]) for c in range(3)],
                               rtol=1e-6)
    np.testing.assert_allclose(d.iou[2], 0.0)  # a dead unit selects nothing
    np.testing.assert_array_equal(d.best_concept[:2], [0, np.argmax(np.asarray(d.iou[1]))])
    np.testing.assert_allclose(d.max_iou[0], 1.0)
    assert bool(d.interpretable[0]) and not bool(d.interpretable[2])
    # chunking with a padded last chunk gives the same sums
    dc = units.dissect(jnp.asarray(acts), jnp.asarray(concepts), top_fraction=0.3, chunk_size=3)
    np.testing.assert_allclose(dc.iou, d.iou, rtol=1e-6)


def test_dissection_default_quantile_selects_the_top_half_percent():
    rng = np.random.default_rng(1)
    n, size = 200, 8  # 12,800 probe pixels: the top 0.5% is 64 of them
    concept = np.zeros(n * size * size, bool)
    concept[rng.choice(concept.size, 64, replace=False)] = True
    concept = concept.reshape(n, size, size, 1)
    act = np.where(concept, 2.0 + rng.random(concept.shape), rng.random(concept.shape))
    d = units.dissect(jnp.asarray(act, jnp.float32), jnp.asarray(concept))
    thr = np.quantile(act.reshape(-1), 0.995)
    np.testing.assert_allclose(d.thresholds, [thr], rtol=1e-3)  # q = 0.995 in float32
    np.testing.assert_allclose(d.iou, [[1.0]])
    np.testing.assert_allclose(units.unit_thresholds(jnp.asarray(act, jnp.float32)), [thr],
                               rtol=1e-3)


def test_dissection_upsamples_low_resolution_units():
    acts, concepts = _planted(size=4)
    big = np.repeat(np.repeat(concepts, 2, 1), 2, 2)  # masks at 8x8, units at 4x4
    f = lambda z: jnp.asarray(acts)  # noqa: E731  (a features_fn ignoring its input)
    d = units.dissection_iou(f, jnp.zeros((20, 8, 8, 1)), jnp.asarray(big), top_fraction=0.5,
                             upsample_method="nearest")
    np.testing.assert_allclose(d.iou[0, 0], 1.0)
    with pytest.raises(ValueError, match="concept_masks"):
        units.dissect(jnp.asarray(acts), jnp.asarray(big[:3]))


def test_correlation_and_concept_alignment():
    s = jnp.asarray([0.1, 0.4, 0.2, 0.9])
    m = jnp.asarray([0.0, 0.3, 0.1, 0.5])
    c = units.sensitivity_iou_correlation(s, m)
    np.testing.assert_allclose(c["pearson"], np.corrcoef(s, m)[0, 1], rtol=1e-5)
    np.testing.assert_allclose(c["spearman"], 1.0, rtol=1e-6)
    d = jnp.asarray([[-1.0, 2.0, 5.0], [-3.0, 4.0, 7.0]])  # (B=2, k=3)
    unit_class = jnp.asarray([0, 1, -1])
    a = units.concept_alignment(d, unit_class, jnp.asarray([0, 1]), jnp.asarray([1, 0]))
    # pairs: (b0,u0) source, (b0,u1) target, (b1,u0) target, (b1,u1) source; unit 2 has no class
    np.testing.assert_allclose([a.source, a.target], [(-1 + 4) / 2, (2 - 3) / 2])
    assert np.isnan(a.other)
    a = units.concept_alignment(d, unit_class, jnp.asarray([0, 1]), jnp.asarray([1, 0]),
                                scale=jnp.asarray([1.0, 2.0, 1.0]),
                                where=jnp.asarray([True, False]))
    np.testing.assert_allclose([a.source, a.target], [-1.0, 1.0])
