"""Str-attack (Xu et al. ICLR 2019): the group soft threshold equals a NumPy loop (edge windows
included) and is the prox of the group norm (no perturbation improves its objective); with
tau = 0 the ADMM reaches the closed-form l2 distance of a linear boundary; with tau > 0 the
perturbation is group-sparse; the l-inf bound and the box hold; refinement never hurts; errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import str_attack as S
from tests.attacks.minnorm_models import boundary_distances, linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _numpy_group_threshold(v, k, lam):
    out = np.zeros_like(v)
    _, h, w, _ = v.shape
    for i in range(0, h, k):
        for j in range(0, w, k):
            g = v[:, i:i + k, j:j + k, :]
            n = np.sqrt((g ** 2).sum(axis=(1, 2, 3), keepdims=True))
            out[:, i:i + k, j:j + k, :] = np.where(n > lam, (1 - lam / np.maximum(n, 1e-30)) * g, 0)
    return out


@pytest.mark.parametrize("shape, k", [((2, 6, 6, 1), 2), ((2, 5, 7, 3), 2), ((1, 9, 9, 2), 4)])
def test_group_threshold_matches_numpy_and_is_prox(shape, k):
    rng = np.random.default_rng(0)
    v = rng.normal(size=shape).astype(np.float32)
    lam = float(np.median(np.asarray(S.group_norms(jnp.asarray(v), k))))
    ours = np.asarray(S.group_soft_threshold(jnp.asarray(v), k, lam))
    np.testing.assert_allclose(ours, _numpy_group_threshold(v, k, lam), atol=1e-6)
    assert 0 < np.mean(ours == 0) < 1  # some groups vanish, some survive

    def objective(u):
        return 0.5 * np.sum((u - v) ** 2) + lam * np.sum(np.asarray(S.group_norms(jnp.asarray(u), k)))

    base = objective(ours)
    for _ in range(20):
        assert objective(ours + 0.05 * rng.normal(size=shape).astype(np.float32)) >= base - 1e-5
    norms = np.asarray(S.group_norms(jnp.asarray(v), k))
    assert norms.shape == (shape[0], -(-shape[1] // k), -(-shape[2] // k))


@functools.partial(jax.jit, static_argnames=("retrain",))
def _str_linear(w, b, x, y, key, tau, linf_bound=0.5, *, retrain=False):
    def f(v):
        return v.reshape(v.shape[0], -1) @ w + b
    return S.str_attack(f, x, y, key, tau=tau, retrain=retrain, num_binary_steps=6,
                        num_steps=300, steps_increment=0, retrain_iters=100,
                        num_retrain_steps=4, linf_bound=linf_bound)


def _problem():
    return linear_problem(0, num_classes=2, shape=(8, 8, 1))


def _l2_and_groups(adv, x):
    d = np.asarray(adv, np.float64) - x
    gn = np.asarray(S.group_norms(jnp.asarray(d), 2)).reshape(len(x), -1)
    return np.linalg.norm(d.reshape(len(x), -1), axis=-1), (gn > 1e-6).sum(-1)


def test_tau_zero_reaches_l2_boundary(key):
    f, w, b, x, y = _problem()
    res = _str_linear(w, b, x, y, key, 0.0)
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    l2, groups = _l2_and_groups(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    assert np.all(l2 >= exact * (1 - 1e-4)) and np.all(l2 <= exact * 1.01 + 1e-4), l2 / exact
    np.testing.assert_allclose(-np.asarray(res.loss), l2, rtol=1e-4)
    assert np.all(groups == 16)  # dense without the group penalty


def test_group_sparsity_bound_box_and_refinement(key):
    f, w, b, x, y = _problem()
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    plain = _str_linear(w, b, x, y, key, 3.0)
    refined = _str_linear(w, b, x, y, key, 3.0, retrain=True)
    for res in (plain, refined):
        adv = np.asarray(res.x_adv)
        l2, groups = _l2_and_groups(adv, x)
        assert np.all(np.asarray(res.success))
        assert np.all(np.asarray(jnp.argmax(f(adv), -1)) != y)
        assert np.all(l2 >= exact * (1 - 1e-4))
        assert np.all(groups <= 8) and np.mean(groups) <= 5  # of 16 windows
        assert adv.min() >= 0 and adv.max() <= 1
    # the refinement starts from the best example and keeps it unless it finds a closer one
    assert np.all(-np.asarray(refined.loss) <= -np.asarray(plain.loss) + 1e-7)
    assert np.mean(-np.asarray(refined.loss)) < np.mean(-np.asarray(plain.loss))


def test_linf_bound_holds(key):
    f, w, b, x, y = _problem()
    bound = 0.08
    res = _str_linear(w, b, x, y, key, 1.0, bound)
    d = np.abs(np.asarray(res.x_adv) - x)
    assert d.max() <= bound + 1e-6
    assert np.asarray(res.success).sum() >= 2


def test_targeted(key):
    f, w, b, x, y = linear_problem(1, num_classes=4, shape=(6, 6, 1))
    t = ((y + 1) % 4).astype(np.int32)
    res = S.str_attack(f, x, y, key, targets=jnp.asarray(t), num_binary_steps=4, num_steps=100,
                       steps_increment=0, retrain=False)
    assert np.all(np.asarray(res.success))
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) == t)


@pytest.mark.parametrize("kwargs, match", [
    ({"group_size": 0}, "group_size"), ({"rho": 0.0}, "rho"), ({"tau": -1.0}, "tau"),
    ({"linf_bound": 0.0}, "linf_bound"), ({"retrain_percentile": 100.0}, "retrain_percentile"),
    ({"num_steps": 0}, "num_steps")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        S.str_attack(f, x, y, key, **kwargs)
    with pytest.raises(ValueError, match="B, H, W, C"):
        S.str_attack(f, x.reshape(4, 16), y, key)
