"""Minimal-eps bisection (Boopathy et al. 2020, ISA step 1): on a two-class linear model the short
PGD is an exact oracle (it succeeds iff eps exceeds the closed-form l-inf distance), so the found
eps equals the bracketing run against that oracle; on several classes the found eps is never below
the LP optimum; containment, targets, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import min_eps as M
from tests.attacks.minnorm_models import boundary_distances, linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@functools.partial(jax.jit, static_argnames=("num_rounds",))
def _run_linear(w, b, x, y, key, targets=None, kappa=0.1, *, num_rounds=10):
    def f(v):
        return v.reshape(v.shape[0], -1) @ w + b
    return M.min_eps_bisection(f, x, y, key, targets=targets, kappa=kappa, num_rounds=num_rounds)


def _bracket_with_oracle(e_star, *, eps0=0.05, rounds=10):
    """The paper's bracketing when a round succeeds iff eps > e_star."""
    eps, lo, hi = eps0, 0.0, 1.0
    for _ in range(rounds):
        if eps > e_star:
            hi = eps
            eps = (lo + hi) / 2
        else:
            lo = eps
            eps = min(2 * eps, (lo + hi) / 2)
    return hi


@pytest.mark.parametrize("seed", [0, 1])
def test_two_classes_matches_oracle_bracketing(seed, key):
    f, w, b, x, y = linear_problem(seed, num_classes=2)
    res = _run_linear(w, b, x, y, key)
    exact = boundary_distances(w, b, x, y, "linf").min(-1)
    expect = np.array([_bracket_with_oracle(e) for e in exact])
    eps = -np.asarray(res.loss)
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(eps, expect, rtol=1e-5)
    assert np.all(eps >= exact)
    # 10 rounds pin the radius down to a few percent
    assert np.all(eps <= 1.05 * exact + 1e-3)
    adv = np.asarray(res.x_adv)
    dist = np.abs(adv - x).reshape(len(y), -1).max(-1)
    assert np.all(dist <= eps + 1e-6)
    assert np.all(np.asarray(jnp.argmax(f(adv), -1)) != y)
    assert adv.min() >= 0 and adv.max() <= 1


@pytest.mark.parametrize("kappa", [0.0, 1e-6])
def test_kappa_zero_succeeds_like_a_tiny_kappa(kappa, key):
    """kappa = 0 clips the margin at 0, where it never goes below: success is decided on the
    unclipped margin (earlier: no example ever succeeded at kappa = 0, eps_adv = inf)."""
    f, w, b, x, y = linear_problem(0, num_classes=2)
    res = _run_linear(w, b, x, y, key, kappa=kappa)
    exact = boundary_distances(w, b, x, y, "linf").min(-1)
    expect = np.array([_bracket_with_oracle(e) for e in exact])
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(-np.asarray(res.loss), expect, rtol=1e-5)


def _lp_targeted_linf(w, b, x, t):
    """min_delta ||delta||_inf s.t. z_t(x + delta) >= z_j(x + delta) for all j, x + delta in [0,1]."""
    so = pytest.importorskip("scipy.optimize")
    n = x.size
    p = x.reshape(-1).astype(np.float64)
    w = w.astype(np.float64)
    c = np.zeros(n + 1)
    c[-1] = 1.0
    rows, rhs = [], []
    for j in range(w.shape[1]):
        if j != t:
            rows.append(np.append(w[:, j] - w[:, t], 0.0))
            rhs.append(-(w[:, j] - w[:, t]) @ p - b[j] + b[t])
    eye = np.hstack([np.eye(n), -np.ones((n, 1))])
    neg = np.hstack([-np.eye(n), -np.ones((n, 1))])
    r = so.linprog(c, A_ub=np.vstack([np.array(rows), eye, neg]),
                   b_ub=np.concatenate([rhs, np.zeros(2 * n)]),
                   bounds=[(-pi, 1 - pi) for pi in p] + [(0, None)])
    assert r.status == 0
    return r.fun


def test_targeted_never_below_lp(key):
    f, w, b, x, y = linear_problem(2, num_classes=4)
    t = ((y + 1 + np.arange(len(y)) % 3) % 4).astype(np.int32)
    res = _run_linear(w, b, x, y, key, jnp.asarray(t))
    eps = -np.asarray(res.loss)
    lp = np.array([_lp_targeted_linf(w, b, x[i], t[i]) for i in range(len(y))])
    assert np.all(np.asarray(res.success))
    assert np.all(eps >= lp * (1 - 1e-5)), (eps, lp)
    assert np.all(eps <= 1.1 * lp + 1e-3), (eps, lp)  # the short attack gets close (<= 4% here)
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) == t)


def test_untargeted_multiclass_lower_bound_and_no_success_in_tiny_bracket(key):
    f, w, b, x, y = linear_problem(3, num_classes=3)
    exact = boundary_distances(w, b, x, y, "linf").min(-1)
    res = _run_linear(w, b, x, y, key)
    eps = -np.asarray(res.loss)
    assert np.all(np.asarray(res.success)) and np.all(eps >= exact)
    # a bracket entirely below every boundary: nothing succeeds, x comes back
    small = M.min_eps_bisection(f, x, y, key, eps_init=1e-4,
                                eps_bounds=(0.0, float(exact.min()) * 0.9), num_rounds=3)
    assert not np.any(np.asarray(small.success))
    np.testing.assert_array_equal(np.asarray(small.x_adv), x)
    assert np.all(np.isinf(np.asarray(M.minimal_eps(f, x, y, key, eps_init=1e-4,
                                                    eps_bounds=(0.0, 1e-4), num_rounds=2))))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_rounds": 0}, "num_rounds"), ({"num_steps": 0}, "num_steps"), ({"kappa": -1.0}, "kappa"),
    ({"eps_bounds": (0.5, 0.1)}, "eps_bounds"), ({"eps_init": 0.0}, "eps_init"),
    ({"step_scale": 0.0}, "step_scale"), ({"targets": np.array([0, 0, 0, 5])}, "targets")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        M.min_eps_bisection(f, x, y, key, **kwargs)


def test_expanding_bisection_brackets_a_threshold():
    """Against the oracle 'value >= threshold', doubling from below then halving the bracket
    traps each threshold: low < threshold <= high, and the bracket halves every round after the
    first success; growing on success (the ISA's gamma search) mirrors it."""
    thresholds = jnp.array([0.003, 0.3, 0.95])
    value, low, high = jnp.full(3, 0.05), jnp.zeros(3), jnp.ones(3)
    for _ in range(20):
        value, low, high = M.expanding_bisection(value, value < thresholds, low, high)
    assert bool(jnp.all((low < thresholds) & (thresholds <= high)))
    assert float(jnp.max(high - low)) < 1e-4
    # mirrored: grow while the value still succeeds (largest value below the threshold)
    value, low, high = jnp.full(3, 0.05), jnp.zeros(3), jnp.ones(3)
    for _ in range(20):
        value, low, high = M.expanding_bisection(value, value <= thresholds, low, high)
    assert bool(jnp.all((low <= thresholds) & (thresholds < high + 1e-6)))


def test_scaled_clip_step_stays_in_ball_and_box():
    x = jnp.array([[0.0, 0.5, 1.0]])
    z = M.scaled_clip_step(x, jnp.array([[1.0, -1.0, -1e-6]]), x, jnp.float32(0.1),
                           step_scale=2.0, grad_scale=1000.0, bounds=(0.0, 1.0))
    np.testing.assert_allclose(z, [[0.0, 0.6, 1.0]], atol=1e-6)  # box, ball, box
