"""Rank agreement: Kendall tau-b, Spearman and Pearson equal scipy's; top-k intersections."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxadv.metrics.rank import (
    average_ranks,
    kendall_tau,
    pearson,
    spearman,
    top_k_intersection,
    top_k_intersection_b,
)
from tests.attributions.helpers import fast_compile  # noqa: F401

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _pair(seed, shape=(4, 7, 7), ties=False):
    a = np.asarray(jax.random.normal(jax.random.key(seed), shape))
    b = a + np.asarray(jax.random.normal(jax.random.key(seed + 1), shape))
    if ties:
        a, b = np.round(a * 2) / 2, np.round(b)
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunk", [5, 49, 256])
def test_kendall_tau_b_equals_scipy(ties, chunk):
    a, b = _pair(0, ties=ties)
    ours = np.asarray(kendall_tau(a, b, chunk_size=chunk))
    ref = [stats.kendalltau(a[i].ravel(), b[i].ravel())[0] for i in range(4)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_kendall_tau_constant_map_is_nan_like_scipy():
    a, b = _pair(1, shape=(1, 4, 4))
    c = np.zeros_like(a)
    assert np.isnan(float(kendall_tau(c, b)[0]))
    assert np.isnan(stats.kendalltau(c.ravel(), b.ravel())[0])


def test_kendall_tau_jit_and_large_map():
    a, b = _pair(2, shape=(2, 32, 32, 3))
    ours = np.asarray(jax.jit(lambda u, v: kendall_tau(u, v))(a, b))
    ref = [stats.kendalltau(a[i].ravel(), b[i].ravel())[0] for i in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_and_pearson_equal_scipy(ties):
    a, b = _pair(3, ties=ties)
    sp = [stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(4)]
    pe = [stats.pearsonr(a[i].ravel(), b[i].ravel())[0] for i in range(4)]
    np.testing.assert_allclose(spearman(a, b), sp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pearson(a, b), pe, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(average_ranks(jnp.asarray(a.reshape(4, -1))),
                               [stats.rankdata(a[i].ravel()) for i in range(4)])


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_maps_score_like_scipy_on_the_same_values(dtype):
    """float16 / bfloat16 maps: the scores are computed in float32, so they equal scipy's on the
    same (rounded) values; in the maps' own dtype the pair counts of a 16x16 map (65,536)
    overflowed float16 (tau 0 or NaN) and bfloat16 kept 8 bits of them (about 1e-3 off)."""
    a, b = _pair(0, shape=(2, 16, 16))
    la, lb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    ra, rb = np.asarray(la, np.float64), np.asarray(lb, np.float64)
    tau = [stats.kendalltau(ra[i].ravel(), rb[i].ravel())[0] for i in range(2)]
    sp = [stats.spearmanr(ra[i].ravel(), rb[i].ravel())[0] for i in range(2)]
    pe = [stats.pearsonr(ra[i].ravel(), rb[i].ravel())[0] for i in range(2)]
    np.testing.assert_allclose(kendall_tau(la, lb), tau, rtol=1e-5)
    np.testing.assert_allclose(spearman(la, lb), sp, rtol=1e-5)
    np.testing.assert_allclose(pearson(la, lb), pe, rtol=1e-4)
    assert kendall_tau(la, lb).dtype == jnp.float32


def test_top_k_intersection():
    a = jnp.arange(16.0).reshape(1, 4, 4)
    assert float(top_k_intersection(a, a, k=8)[0]) == 1.0
    assert float(top_k_intersection(a, -a, k=8)[0]) == 0.0
    b = a.at[0, 3, 3].set(-1.0)  # the top pixel drops out of b's top 4
    assert float(top_k_intersection(a, b, k=4)[0]) == 0.75
    # B-compatible: strictly above the k-th largest value (k - 1 pixels), divided by |I| = 16.
    assert float(top_k_intersection_b(a, a, k=8)[0]) == 7 / 16
    assert float(top_k_intersection_b(a, b, k=4)[0]) == 2 / 16


def test_errors():
    a, b = _pair(0)
    with pytest.raises(ValueError, match="same shape"):
        kendall_tau(a, b[:2])
    with pytest.raises(ValueError, match="k must be"):
        top_k_intersection(a, b, k=0)
    with pytest.raises(ValueError, match="k must be"):
        top_k_intersection_b(a, b, k=50)


def test_nan_maps_are_an_error_when_concrete_and_nan_when_traced():
    a, b = _pair(0)
    a[1, 2, 3] = np.nan
    for fn in (kendall_tau, spearman, pearson, top_k_intersection, top_k_intersection_b):
        with pytest.raises(ValueError, match=r"a contains NaN.*examples \[1\]"):
            fn(a, b)
        with pytest.raises(ValueError, match="b contains NaN"):
            fn(b, a)
        got = np.asarray(jax.jit(fn)(a, b))   # traced: scipy's nan_policy="propagate"
        assert np.isnan(got[1]) and np.all(np.isfinite(got[[0, 2, 3]])), (fn.__name__, got)
    got = np.asarray(jax.jit(kendall_tau)(a, b))
    np.testing.assert_allclose(got[0], stats.kendalltau(a[0].ravel(), b[0].ravel())[0], rtol=1e-5)
    assert np.isnan(stats.kendalltau(a[1].ravel(), b[1].ravel())[0])


def test_integer_arguments_accept_numpy_ints_and_reject_the_rest():
    a, b = _pair(0)
    np.testing.assert_array_equal(top_k_intersection(a, b, k=np.int64(5)),
                                  top_k_intersection(a, b, k=5))
    np.testing.assert_array_equal(kendall_tau(a, b, chunk_size=np.int32(7)),
                                  kendall_tau(a, b, chunk_size=7))
    for bad in (0, -3, None, 2.0, True):
        with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
            kendall_tau(a, b, chunk_size=bad)


def test_top_k_scores_follow_the_maps_float_dtype():
    a, b = _pair(0)
    with jax.enable_x64(True):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        assert top_k_intersection(a64, b64, k=5).dtype == jnp.float64
        assert top_k_intersection_b(a64, b64, k=5).dtype == jnp.float64
    assert top_k_intersection(a, b, k=5).dtype == jnp.float32
