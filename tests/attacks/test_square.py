"""Square attack (Andriushchenko et al. 2020): the p schedule and square sizes in closed form, the l2
pattern against a direct evaluation of the paper's definition (and AutoAttack's), containment in
the ball and the box (hypothesis), determinism given the key, masks and query counts, eps = 0,
strength on a trained model, and errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxadv.attacks import projections
from jaxadv.attacks import square as S
from tests.attacks.test_apgd import RANDOM_MLP, K, trained_mlp


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


# ----------------------------------------------------------------------------------------------
# Schedule and pattern.


@pytest.mark.parametrize("it, halvings", [
    (0, 0), (10, 0), (11, 1), (50, 1), (51, 2), (200, 2), (201, 3), (500, 3), (501, 4),
    (1000, 4), (1001, 5), (2000, 5), (2001, 6), (4000, 6), (4001, 7), (6000, 7), (6001, 8),
    (8000, 8), (8001, 9), (9999, 9)])
def test_p_schedule_closed_form(it, halvings):
    p = S.p_schedule(it, p_init=0.8, num_queries=10000, rescale_schedule=False)
    assert float(p) == pytest.approx(0.8 / 2 ** halvings)
    # rescaled to 1,000 queries, iteration it / 10 sits at the same point of the schedule
    if it % 10 == 0:
        q = S.p_schedule(it // 10, p_init=0.8, num_queries=1000, rescale_schedule=True)
        assert float(q) == pytest.approx(0.8 / 2 ** halvings)


def test_square_side():
    # MNIST 28 x 28: sqrt(0.8 * 784) = 25.04 -> 25; p = 0.05 -> round(6.26) = 6 (l2: odd -> 7)
    assert int(S.square_side(jnp.float32(0.8), 28, 28, "linf")) == 25
    assert int(S.square_side(jnp.float32(0.05), 28, 28, "linf")) == 6
    assert int(S.square_side(jnp.float32(0.05), 28, 28, "l2")) == 7
    assert int(S.square_side(jnp.float32(1e-4), 28, 28, "linf")) == 1
    assert int(S.square_side(jnp.float32(1e-4), 28, 28, "l2")) == 3
    assert int(S.square_side(jnp.float32(1.0), 8, 6, "linf")) == 6  # capped at min(H, W)


def eta_reference(s: int) -> np.ndarray:
    """The l2 pattern by its construction in the paper: each rectangle accumulates 1/(k+1)^2 on
    growing concentric rings around its centre; top s // 2 rows one rectangle, the rest minus
    another; each half normalised, then the whole."""
    def rect(rows, cols):
        out = np.zeros((rows, cols))
        cr, cc = rows // 2, cols // 2
        for k in range(max(cr, cc) + 1):
            out[max(cr - k, 0):cr + k + 1, max(cc - k, 0):cc + k + 1] += 1.0 / (k + 1) ** 2
        return out / np.sqrt((out ** 2).sum()) if out.size else out

    e = np.concatenate([rect(s // 2, s), -rect(s - s // 2, s)], axis=0)
    return e / np.sqrt((e ** 2).sum())


def _eta_on_window(s: int, transpose: bool) -> np.ndarray:
    li, lj = np.meshgrid(np.arange(s), np.arange(s), indexing="ij")
    htab = jnp.asarray(S._inv_square_cumsum(s + 2))
    return np.asarray(S._eta(jnp.asarray(li)[None], jnp.asarray(lj)[None], jnp.int32(s),
                             jnp.asarray([transpose]), htab, jnp.float32))[0]


@pytest.mark.parametrize("s", [2, 3, 4, 7, 25])
def test_eta_matches_construction(s):
    ref = eta_reference(s)
    np.testing.assert_allclose(_eta_on_window(s, False), ref, atol=1e-6)
    np.testing.assert_allclose(_eta_on_window(s, True), ref.T, atol=1e-6)


@pytest.mark.peer
def test_eta_matches_autoattack():
    pytest.importorskip("torch")
    square_mod = pytest.importorskip("pyautoattack.square")
    ref = square_mod.SquareAttack(lambda v: v, norm="L2", eps=1.0, device="cpu")
    for s in (3, 5, 7, 9):
        theirs = ref.eta(s).numpy()  # randomly transposed
        ours = [_eta_on_window(s, t) for t in (False, True)]
        assert min(np.abs(o - theirs).max() for o in ours) < 1e-6


# ----------------------------------------------------------------------------------------------
# Threat model, determinism, masks.


@functools.cache
def _jitted(norm: str, num_queries: int = 30):
    def attack(x, y, key, eps):
        return S.square(RANDOM_MLP, x, y, key, eps=eps, norm=norm, num_queries=num_queries)
    return jax.jit(attack)


def _images(seed, batch, shape=(4, 4, 1)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (batch,) + shape)
    x = np.where(rng.uniform(size=x.shape) < 0.25, rng.choice([0.0, 1.0], size=x.shape), x)
    return jnp.asarray(x, jnp.float32), jnp.asarray(rng.integers(0, K, batch), jnp.int32)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(["linf", "l2"]), batch=st.sampled_from([1, 3]),
       eps=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_containment_ball_and_box(norm, batch, eps, seed, strict_promotion):
    x, y = _images(seed, batch)
    res = _jitted(norm)(x, y, jax.random.key(seed), jnp.float32(eps))
    dist = np.asarray(projections.norm_of(res.x_adv - x, norm))
    assert np.all(dist <= eps * (1 + 1e-5) + 1e-6), (dist, eps)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    pred = np.asarray(jnp.argmax(RANDOM_MLP(res.x_adv), -1))
    np.testing.assert_array_equal(np.asarray(res.success), pred != np.asarray(y))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_deterministic_given_key(norm):
    x, _ = _images(0, 4)
    y = jnp.argmax(RANDOM_MLP(x), -1).astype(jnp.int32)  # correctly classified: all attacked
    f = _jitted(norm)
    a = f(x, y, jax.random.key(1), jnp.float32(0.3))
    b = f(x, y, jax.random.key(1), jnp.float32(0.3))
    c = f(x, y, jax.random.key(2), jnp.float32(0.3))
    np.testing.assert_array_equal(np.asarray(a.x_adv), np.asarray(b.x_adv))
    np.testing.assert_array_equal(np.asarray(a.success), np.asarray(b.success))
    assert not np.array_equal(np.asarray(a.x_adv), np.asarray(c.x_adv))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_gives_clean_accuracy(norm, key):
    x, y = _images(3, 5)
    res = _jitted(norm)(x, y, key, jnp.float32(0.0))
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
    wrong = np.asarray(jnp.argmax(RANDOM_MLP(x), -1)) != np.asarray(y)
    np.testing.assert_array_equal(np.asarray(res.success), wrong)


def test_masks_and_query_counts(key):
    f, x, y = trained_mlp()
    x, y = x[:16], y[:16]
    active = jnp.arange(16) % 2 == 1
    q = 40
    res, n_fwd = S.square_runs(f, x, y, key, eps=0.12, active=active, num_queries=q,
                               rescale_schedule=True)
    a = np.asarray(active)
    np.testing.assert_array_equal(np.asarray(res.x_adv)[~a], np.asarray(x)[~a])
    assert not np.any(np.asarray(res.success)[~a]) and np.all(np.asarray(n_fwd)[~a] == 0)
    ok = a & ~np.asarray(res.success)
    assert np.all(np.asarray(n_fwd)[ok] == q + 1)  # start + one query per iteration
    br = a & np.asarray(res.success)
    assert np.all((np.asarray(n_fwd)[br] >= 1) & (np.asarray(n_fwd)[br] <= q + 1))
    # the frozen points do not change the active points' outcome
    full, _ = S.square_runs(f, x, y, key, eps=0.12, active=jnp.ones(16, bool), num_queries=q,
                            rescale_schedule=True)
    np.testing.assert_array_equal(np.asarray(full.x_adv)[a], np.asarray(res.x_adv)[a])


def test_breaks_points_on_trained_model(key):
    f, x, y = trained_mlp()
    clean_ok = np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)
    for norm, eps in (("linf", 0.15), ("l2", 1.5)):
        res = S.square(f, x, y, key, eps=eps, norm=norm, num_queries=300)
        broken = np.asarray(res.success) & clean_ok
        assert broken.sum() >= 5, (norm, broken.sum())
        # margin bookkeeping: the loss is max_{j != y} z_j - z_y at x_adv
        z = np.array(f(res.x_adv))
        zy = z[np.arange(len(y)), np.asarray(y)]
        z[np.arange(len(y)), np.asarray(y)] = -np.inf
        np.testing.assert_allclose(np.asarray(res.loss), z.max(-1) - zy, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm"), ({"eps": -1.0}, "eps"), ({"num_queries": -1}, "num_queries"),
    ({"p_init": 0.0}, "p_init"), ({"num_restarts": 0}, "num_restarts"),
])
def test_bad_arguments(kwargs, match, key):
    x, y = _images(0, 2)
    with pytest.raises(ValueError, match=match):
        S.square(RANDOM_MLP, x, y, key, **({"eps": 0.1} | kwargs))


def test_bad_shapes(key):
    x, y = _images(0, 2)
    with pytest.raises(ValueError, match="B, H, W, C"):
        S.square(RANDOM_MLP, x.reshape(2, 16), y, key, eps=0.1)
    with pytest.raises(ValueError, match="labels"):
        S.square(RANDOM_MLP, x, jnp.array([0, K], jnp.int32), key, eps=0.1)
