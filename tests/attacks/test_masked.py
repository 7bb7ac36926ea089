"""Masked-support attacks: outside the mask x_adv == x exactly; inside, the eps-ball and the box
hold (hypothesis over shapes, masks, norms, eps, bounds); an all-ones mask reproduces PGD; a
zero mask returns x; a soft mask scales the perturbation; masked FGSM on a linear model is the
closed form restricted to the mask; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxadv.attacks import gradient as G
from jaxadv.attacks import masked as M
from jaxadv.attacks import projections


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


K = 5


def mlp(dim, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (dim, 8)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (8, K))

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    return f


def _run(f, x, y, key, mask, eps, norm, bounds, restarts):
    return M.masked_pgd(f, x, y, key, mask=mask, eps=eps, step_size=eps / 2, num_steps=3,
                        norm=norm, bounds=bounds, num_restarts=restarts, loss_fn="cw")


_RUN = jax.jit(_run, static_argnums=(0, 6, 7, 8))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(norm=st.sampled_from(["linf", "l2", "l1"]), batch=st.integers(1, 2), side=st.integers(2, 3),
       channels=st.integers(1, 2), eps=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
       per_pixel=st.booleans(), restarts=st.sampled_from([1, 2]),
       bounds=st.sampled_from([(0.0, 1.0), (-0.5, 0.5)]))
def test_containment(norm, batch, side, channels, eps, seed, per_pixel, restarts, bounds):
    shape = (batch, side, side, channels)
    lo, hi = bounds
    f = mlp(side * side * channels, seed % 5)
    x = jax.random.uniform(jax.random.key(seed), shape, minval=lo, maxval=hi)
    y = jax.random.randint(jax.random.key(seed + 1), (batch,), 0, K)
    mshape = (batch, side, side, 1) if per_pixel else shape
    mask = (jax.random.uniform(jax.random.key(seed + 2), mshape) < 0.5).astype(jnp.float32)
    res = _RUN(f, x, y, jax.random.key(seed + 3), mask, jnp.float32(eps), norm, bounds, restarts)
    adv, x_np = np.asarray(res.x_adv), np.asarray(x)
    outside = np.broadcast_to(np.asarray(mask) == 0, shape)
    np.testing.assert_array_equal(adv[outside], x_np[outside])
    assert adv.min() >= lo and adv.max() <= hi
    dist = np.asarray(projections.norm_of(res.x_adv - x, norm))
    assert np.all(dist <= eps * (1 + 1e-5) + 1e-6), (dist, eps)
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.all(np.asarray(res.success) <= (pred != np.asarray(y)))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_all_ones_mask_is_pgd(norm, key):
    f = mlp(16, 1)
    x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 1))
    y = jnp.argmax(f(x), -1)
    kw = dict(eps=0.1 if norm == "linf" else 0.5, step_size=0.03 if norm == "linf" else 0.15,
              num_steps=5, norm=norm)
    ours = jax.jit(lambda k: M.masked_pgd(f, x, y, k, mask=jnp.ones((6, 4, 4, 1)), **kw))(key)
    ref = jax.jit(lambda k: G.pgd(f, x, y, k, **kw))(key)
    np.testing.assert_allclose(np.asarray(ours.x_adv), np.asarray(ref.x_adv), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours.success), np.asarray(ref.success))
    np.testing.assert_allclose(np.asarray(ours.loss), np.asarray(ref.loss), rtol=1e-4, atol=1e-5)


def test_zero_mask_returns_x_and_clean_success(key):
    f = mlp(16, 2)
    x = jax.random.uniform(jax.random.key(2), (5, 4, 4, 1))
    y = jnp.asarray([0, 1, 2, 3, 4])
    res = jax.jit(lambda k: M.masked_pgd(f, x, y, k, mask=jnp.zeros((4, 4, 1)), eps=0.3,
                                         step_size=0.1, num_steps=3))(key)
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(res.success), np.asarray(jnp.argmax(f(x), -1) != y))


def test_masked_fgsm_linear_closed_form_and_soft_mask(key):
    """z = flatten(x) W: masked FGSM (l-inf) moves exactly the masked pixels by eps * m *
    sign(grad of CE); a soft mask m scales each pixel's step."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(16, K)).astype(np.float32)

    def f(v):
        return v.reshape(v.shape[0], -1) @ w

    x = jnp.asarray(rng.uniform(0.3, 0.7, (4, 4, 4, 1)).astype(np.float32))
    y = jnp.asarray([0, 1, 2, 3])
    soft = jnp.asarray(rng.choice([0.0, 0.5, 1.0], (4, 4, 4, 1)).astype(np.float32))
    eps = 0.1
    res = jax.jit(lambda k: M.masked_fgsm(f, x, y, k, mask=soft, eps=eps))(key)
    p = np.asarray(jax.nn.softmax(f(x)))
    g = (p - np.eye(K)[np.asarray(y)]) @ w.T  # d CE / d x, (B, 16)
    expect = np.asarray(x).reshape(4, -1) + eps * np.asarray(soft).reshape(4, -1) * np.sign(g)
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(4, -1), expect, atol=1e-6)


def test_masked_bim_traced_eps_one_trace(key):
    f = mlp(16, 3)
    x = jax.random.uniform(jax.random.key(3), (4, 4, 4, 1))
    y = jnp.argmax(f(x), -1)
    mask = jnp.zeros((4, 4, 4, 1)).at[:, :2].set(1.0)
    traces = []

    @jax.jit
    def run(eps):
        traces.append(1)
        return M.masked_bim(f, x, y, key, mask=mask, eps=eps, num_steps=4)

    r1, r2 = run(jnp.float32(0.05)), run(jnp.float32(0.2))
    assert len(traces) == 1
    d1 = np.abs(np.asarray(r1.x_adv - x)).max()
    d2 = np.abs(np.asarray(r2.x_adv - x)).max()
    assert d1 <= 0.05 + 1e-6 and d2 <= 0.2 + 1e-6 and d2 > 0.05
    np.testing.assert_array_equal(np.asarray(r2.x_adv)[:, 2:], np.asarray(x)[:, 2:])


@pytest.mark.parametrize("mask, match", [
    (np.ones((3, 3, 1)), "broadcast"), (np.full((4, 4, 1), 2.0), r"\[0, 1\]"),
    (np.full((4, 4, 1), np.nan), r"\[0, 1\]")])
def test_mask_errors(mask, match, key):
    f = mlp(16)
    x = jnp.zeros((2, 4, 4, 1)) + 0.5
    with pytest.raises(ValueError, match=match):
        M.masked_pgd(f, x, jnp.asarray([0, 1]), key, mask=mask, eps=0.1, step_size=0.1,
                     num_steps=1)


@pytest.mark.parametrize("kwargs, match", [
    ({"eps": -1.0}, "eps"), ({"norm": "l3"}, "norm"), ({"num_steps": -1}, "num_steps"),
    ({"num_restarts": 2, "random_start": False}, "num_restarts")])
def test_errors(kwargs, match, key):
    f = mlp(16)
    x = jnp.zeros((2, 4, 4, 1)) + 0.5
    args = dict(mask=np.ones((4, 4, 1)), eps=0.1, step_size=0.1, num_steps=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.masked_pgd(f, x, jnp.asarray([0, 1]), key, **args)


def test_masked_fgm_l1_is_fgm_at_mask_one_and_fills_a_hard_mask(key):
    """l1 FGM confined to a mask spends the budget like gradient.fgsm (coordinates in order of
    |g|, each up to the box): with mask 1 the two agree, and a hard mask gets the whole budget
    inside it (it used to put eps on one coordinate and lose most of it to the clip)."""
    f = mlp(6 * 6 * 3, seed=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 6, 6, 3)).astype(np.float32)
    x[:, :2] = np.round(x[:, :2])  # some pixels on the bounds
    x = jnp.asarray(x)
    y = jnp.argmax(f(x), -1)
    a = M.masked_fgsm(f, x, y, key, mask=1.0, eps=4.0, norm="l1")
    b = G.fgsm(f, x, y, key, eps=4.0, norm="l1")
    np.testing.assert_allclose(a.x_adv, b.x_adv, atol=1e-6)
    hard = jnp.asarray(rng.uniform(size=(6, 6, 6, 1)) < 0.4, jnp.float32)
    c = M.masked_fgsm(f, x, y, key, mask=hard, eps=4.0, norm="l1")
    d = np.asarray(c.x_adv - x)
    outside = np.broadcast_to(np.asarray(hard), x.shape) == 0
    assert np.abs(d[outside]).max() == 0.0
    np.testing.assert_allclose(np.abs(d).reshape(6, -1).sum(-1), 4.0, rtol=1e-5)


def test_masked_fgsm_returns_the_stepped_point_like_fgsm(key):
    """The case of test_gradient's FGSM test, through a mask of ones: the step lowers the loss,
    and both return the stepped point."""
    def f(v):
        u = 50.0 * (v.reshape(v.shape[0], -1)[:, :1] - 0.4) ** 2
        return jnp.concatenate([u, jnp.zeros_like(u)], -1)

    x = jnp.full((1, 1, 1, 1), 0.5)
    y = jnp.zeros(1, jnp.int32)
    a = M.masked_fgsm(f, x, y, key, mask=1.0, eps=0.3)
    np.testing.assert_allclose(a.x_adv, 0.2, atol=1e-6)
    np.testing.assert_allclose(a.x_adv, G.fgsm(f, x, y, key, eps=0.3).x_adv)
