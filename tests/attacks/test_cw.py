"""C&W-l2 (Carlini & Wagner 2017): the minimum-l2 example of a linear model is the closed-form
distance to its decision boundary (untargeted) or a small QP's optimum (targeted); returned
examples really are adversarial; the binary search; errors; and Foolbox's C&W on the same JAX
function (peer)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import cw
from tests.attacks.minnorm_models import boundary_distances, linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _l2(a, b):
    return np.linalg.norm((np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1),
                          axis=-1)


# Adam moves a pixel by about lr * (high - low) / 2 per step, which bounds how finely C&W can land on
# the boundary: the tests allow that much absolute slack on top of a relative tolerance.
LR = 5e-3
SLACK = 5e-3


@functools.partial(jax.jit, static_argnames=("num_binary_steps", "num_steps"))
def _cw_linear(w, b, x, y, key, targets=None, kappa=0.0, *, num_binary_steps=9, num_steps=300):
    """C&W on the linear model (w, b), compiled once per shape (kappa and the model are traced)."""
    def f(v):
        return v.reshape(v.shape[0], -1) @ w + b
    return cw.cw_l2(f, x, y, key, targets=targets, kappa=kappa, learning_rate=LR,
                    num_binary_steps=num_binary_steps, num_steps=num_steps)


@pytest.mark.parametrize("seed", [0, 1])
def test_untargeted_binary_linear_boundary_distance(seed, key):
    """Two classes: the closest adversarial example lies on the one hyperplane, at the closed-form
    distance (z_y - z_j) / ||w_y - w_j||_2 (the problem is convex in delta)."""
    f, w, b, x, y = linear_problem(seed, num_classes=2)
    res = _cw_linear(w, b, x, y, key)
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    dist = _l2(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    # no adversarial example lies closer than the boundary; C&W lands just beyond it
    assert np.all(dist >= exact * (1 - 1e-4)), (dist, exact)
    assert np.all(dist <= exact * 1.02 + SLACK), (dist, exact)
    assert np.median(dist / exact) <= 1.01
    np.testing.assert_allclose(-np.asarray(res.loss), dist, rtol=1e-4, atol=1e-6)
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.all(pred != y)
    assert np.all(np.asarray(res.x_adv) >= 0) and np.all(np.asarray(res.x_adv) <= 1)


def test_untargeted_multiclass_never_below_boundary(key):
    """K = 4: untargeted C&W is non-convex (it follows the runner-up class, which need not have
    the nearest boundary), so only the lower bound and success are exact properties."""
    f, w, b, x, y = linear_problem(0, num_classes=4)
    res = _cw_linear(w, b, x, y, key)
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    dist = _l2(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) != y)
    assert np.all(dist >= exact * (1 - 1e-4)), (dist, exact)


def _targeted_qp(w, b, x, t):
    """min ||d||_2 s.t. z_t(x + d) >= z_j(x + d) for all j != t, 0 <= x + d <= 1 (scipy SLSQP)."""
    so = pytest.importorskip("scipy.optimize")
    w = w.astype(np.float64)
    p = x.reshape(-1).astype(np.float64)
    cons = [{"type": "ineq", "fun": (lambda d, j=j: (w[:, t] - w[:, j]) @ (p + d) + b[t] - b[j]),
             "jac": (lambda d, j=j: w[:, t] - w[:, j])} for j in range(w.shape[1]) if j != t]
    r = so.minimize(lambda d: d @ d, np.zeros_like(p), jac=lambda d: 2 * d, method="SLSQP",
                    constraints=cons, bounds=[(-pi, 1 - pi) for pi in p],
                    options={"ftol": 1e-14, "maxiter": 500})
    assert r.success
    return np.sqrt(r.fun)


def test_targeted_linear_matches_qp(key):
    """Targeted C&W on a linear model is convex in delta: it reaches the QP optimum."""
    f, w, b, x, y = linear_problem(3, num_classes=4)
    t = (y + 1 + np.arange(len(y)) % 3) % 4
    res = _cw_linear(w, b, x, y, key, jnp.asarray(t, jnp.int32))
    dist = _l2(res.x_adv, x)
    exact = np.array([_targeted_qp(w, b, x[i], t[i]) for i in range(len(y))])
    assert np.all(np.asarray(res.success))
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) == t)
    assert np.all(dist >= exact * (1 - 1e-3)), (dist, exact)
    assert np.all(dist <= exact * 1.02 + SLACK), (dist, exact)
    assert np.median(dist / exact) <= 1.01


def test_kappa_margin(key):
    f, w, b, x, y = linear_problem(1, num_classes=4)
    kappa = 0.5
    res = _cw_linear(w, b, x, y, key, kappa=kappa)
    logits = np.asarray(f(res.x_adv))
    assert np.all(np.asarray(res.success))
    for i in range(len(y)):
        other = np.max(np.delete(logits[i], y[i]))
        assert other - logits[i, y[i]] >= kappa - 1e-5
    # a margin of kappa costs distance: farther than the kappa = 0 boundary
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    assert np.all(_l2(res.x_adv, x) > exact)


def test_clean_misclassified_is_returned_unchanged(key):
    _, w, b, x, y = linear_problem(1, num_classes=4)
    y = np.asarray(y).copy()
    y[0] = (y[0] + 1) % 4
    res = _cw_linear(w, b, x, y, key)
    assert bool(res.success[0])
    np.testing.assert_array_equal(np.asarray(res.x_adv[0]), x[0])
    assert float(res.loss[0]) == 0.0


def test_examples_do_not_interact(key):
    """Per-example c search and early abort: an example's result does not depend on the batch."""
    _, w, b, x, y = linear_problem(1, num_classes=4)
    full = _cw_linear(w, b, x, y, key, num_binary_steps=3, num_steps=50)
    half = _cw_linear(w, b, x[:4], y[:4], key, num_binary_steps=3, num_steps=50)
    np.testing.assert_allclose(np.asarray(full.x_adv[:4]), np.asarray(half.x_adv), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(full.success[:4]), np.asarray(half.success))


def test_binary_search_update():
    c = jnp.asarray([1.0, 1.0, 4.0, 4.0])
    lower = jnp.asarray([0.0, 0.0, 2.0, 2.0])
    upper = jnp.asarray([1e10, 1e10, 8.0, 8.0])
    found = jnp.asarray([True, False, True, False])
    c2, lo2, up2 = cw.binary_search_update(c, lower, upper, found)
    np.testing.assert_allclose(np.asarray(c2), [0.5, 10.0, 3.0, 6.0])
    np.testing.assert_allclose(np.asarray(lo2), [0.0, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(np.asarray(up2), [1.0, 1e10, 4.0, 8.0])


def test_too_small_budget_fails_cleanly(key):
    f, _, _, x, y = linear_problem(0, batch=4)
    res = cw.cw_l2(f, x, y, key, c_init=1e-6, num_binary_steps=1, num_steps=1)
    assert not np.any(np.asarray(res.success))
    np.testing.assert_array_equal(np.asarray(res.x_adv), x)
    assert np.all(np.isneginf(np.asarray(res.loss)))


@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 0}, "num_steps"), ({"num_binary_steps": 0}, "num_binary_steps"),
    ({"c_init": 0.0}, "c_init"), ({"learning_rate": -1.0}, "learning_rate"),
    ({"kappa": -0.1}, "kappa"), ({"targets": np.array([0, 1, 9, 0])}, "targets"),
    ({"bounds": (1.0, 0.0)}, "bounds")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        cw.cw_l2(f, x, y, key, **kwargs)


def test_label_errors(key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match="labels"):
        cw.cw_l2(f, x, np.array([0, 1, 2, 7]), key)
    with pytest.raises(ValueError, match="labels"):
        cw.cw_l2(f, x, y[:3], key)


def _mlp_weights(seed=0, dim=16, hidden=12, num_classes=5):
    rng = np.random.default_rng(seed)
    return ((rng.normal(size=(dim, hidden)) / np.sqrt(dim)).astype(np.float32),
            rng.normal(size=(hidden, num_classes)).astype(np.float32))


@pytest.mark.peer
def test_against_foolbox_cw(key):
    """Foolbox's L2CarliniWagnerAttack on a PyTorch twin of a small tanh MLP (same weights), same
    budget and constants: jaxadv succeeds on at least as many points and its median l2 is at most
    1% larger (the two differ only in early abort: Foolbox checks the batch's summed objective)."""
    torch = pytest.importorskip("torch")
    fb = pytest.importorskip("foolbox")
    w1, w2 = _mlp_weights()

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    class Twin(torch.nn.Module):
        def forward(self, v):
            return torch.tanh(v.reshape(v.shape[0], -1) @ torch.from_numpy(w1) * 3.0) @ \
                torch.from_numpy(w2)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (12, 4, 4, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    ours = cw.cw_l2(f, x, y, key, num_binary_steps=5, num_steps=100, c_init=1e-2,
                    learning_rate=1e-2)
    fmodel = fb.PyTorchModel(Twin().eval(), bounds=(0.0, 1.0))
    attack = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100, stepsize=1e-2,
                                              confidence=0.0, initial_const=1e-2,
                                              abort_early=True)
    _, clipped, success = attack(fmodel, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)),
                                 epsilons=None)
    theirs_ok = success.numpy().reshape(-1)
    theirs_x = clipped.numpy()
    ours_ok = np.asarray(ours.success)
    assert theirs_ok.sum() >= 8  # the comparison has substance
    assert ours_ok.sum() >= theirs_ok.sum()
    d_ours = np.median(_l2(ours.x_adv, x)[ours_ok])
    d_theirs = np.median(_l2(theirs_x, x)[theirs_ok])
    assert d_ours <= 1.01 * d_theirs, (d_ours, d_theirs)
