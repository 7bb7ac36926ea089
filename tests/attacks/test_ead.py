"""EAD (Chen et al. 2018): the shrinkage operator is the box-constrained l1 prox (brute force);
on a two-class linear model EAD with beta = 0 reaches the closed-form l2 boundary distance and
with a large beta and the L1 rule the closed-form l1 distance (one or two pixels); lower bounds
always hold; errors; ART's ElasticNet on a PyTorch twin (peer)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import ead as E
from tests.attacks.minnorm_models import boundary_distances, linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def test_shrinkage_is_box_l1_prox():
    rng = np.random.default_rng(0)
    z = rng.uniform(-0.3, 1.3, 200).astype(np.float32)
    x = rng.uniform(0, 1, 200).astype(np.float32)
    beta = 0.1
    ours = np.asarray(E.shrinkage_threshold(jnp.asarray(z), jnp.asarray(x), beta, (0.0, 1.0)))
    grid = np.linspace(0, 1, 20001)
    obj = 0.5 * (grid[None] - z[:, None]) ** 2 + beta * np.abs(grid[None] - x[:, None])
    brute = grid[np.argmin(obj, axis=-1)]
    np.testing.assert_allclose(ours, brute, atol=1e-4)


@functools.partial(jax.jit, static_argnames=("rule", "fista"))
def _ead_linear(w, b, x, y, key, beta, *, rule="EN", fista=True):
    def f(v):
        return v.reshape(v.shape[0], -1) @ w + b
    return E.ead(f, x, y, key, beta=beta, decision_rule=rule, num_steps=300, fista=fista)


def _dists(x_adv, x):
    d = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
    return np.abs(d).sum(-1), np.linalg.norm(d, axis=-1), (np.abs(d) > 1e-6).sum(-1)


def _exact(w, b, x, y):
    """Closed-form l2 and l1 distances to a two-class linear boundary (l1: |f| / ||dw||_inf)."""
    l2 = boundary_distances(w, b, x, y, "l2").min(-1)
    dw = w[:, 0] - w[:, 1]
    return l2, l2 * np.linalg.norm(dw) / np.abs(dw).max()


@pytest.mark.parametrize("fista", [True, False])
def test_beta_zero_is_l2_minimal(fista, key):
    f, w, b, x, y = linear_problem(0, num_classes=2)
    res = _ead_linear(w, b, x, y, key, 0.0, fista=fista)
    l2x, _ = _exact(w, b, x, y)
    _, l2, _ = _dists(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    assert np.all(l2 >= l2x * (1 - 1e-4)) and np.all(l2 <= l2x * 1.01 + 1e-4), l2 / l2x
    np.testing.assert_allclose(-np.asarray(res.loss), l2 ** 2, rtol=1e-3)  # EN rule, beta 0
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) != y)


def test_large_beta_l1_rule_is_l1_minimal_and_sparse(key):
    f, w, b, x, y = linear_problem(0, num_classes=2)
    res = _ead_linear(w, b, x, y, key, 0.1, rule="L1")
    l2x, l1x = _exact(w, b, x, y)
    l1, l2, nnz = _dists(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    assert np.all(l1 >= l1x * (1 - 1e-4)) and np.all(l1 <= 1.05 * l1x), l1 / l1x
    assert np.all(nnz <= 2)  # all of the budget on the largest |w_y - w_j| pixels
    assert np.all(l2 >= l2x * (1 - 1e-4))
    np.testing.assert_allclose(-np.asarray(res.loss), l1, rtol=1e-4)
    adv = np.asarray(res.x_adv)
    assert adv.min() >= 0 and adv.max() <= 1


def test_en_rule_between(key):
    """beta = 1e-3 (the paper's): sparser than beta = 0, l1 no larger, never below the bounds."""
    f, w, b, x, y = linear_problem(1, num_classes=2)
    l2x, l1x = _exact(w, b, x, y)
    dense = _dists(_ead_linear(w, b, x, y, key, 0.0).x_adv, x)
    res = _ead_linear(w, b, x, y, key, 1e-3)
    l1, l2, nnz = _dists(res.x_adv, x)
    assert np.all(np.asarray(res.success))
    assert np.all(l1 >= l1x * (1 - 1e-4)) and np.all(l2 >= l2x * (1 - 1e-4))
    assert nnz.sum() < dense[2].sum() and np.all(l1 <= dense[0] * 1.01)


def test_targeted_reaches_target(key):
    f, w, b, x, y = linear_problem(2, num_classes=4)
    t = ((y + 1 + np.arange(len(y)) % 3) % 4).astype(np.int32)
    res = E.ead(f, x, y, key, targets=jnp.asarray(t), num_binary_steps=6, num_steps=100)
    assert np.all(np.asarray(res.success))
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) == t)


@pytest.mark.parametrize("kwargs, match", [
    ({"decision_rule": "L2"}, "decision_rule"), ({"beta": -1.0}, "beta"), ({"kappa": -1.0}, "kappa"),
    ({"num_steps": 0}, "num_steps"), ({"c_init": 0.0}, "c_init"), ({"learning_rate": 0.0},
                                                                    "learning_rate"),
    ({"targets": "nearest"}, "target")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        E.ead(f, x, y, key, **kwargs)


@pytest.mark.peer
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_against_art_elastic_net(key):
    """ART's ElasticNet (EN rule, FISTA, same constants) on a PyTorch twin of a tanh MLP: jaxadv
    succeeds on at least as many points, and over the points both break its total elastic-net
    distance is no more than 2% larger. (Per example neither dominates: ART zeroes the whole
    gradient, l2 term included, at adversarial points, so the two follow different paths.)"""
    torch = pytest.importorskip("torch")
    pytest.importorskip("art")
    from art.attacks.evasion import ElasticNet
    from art.estimators.classification import PyTorchClassifier

    rng = np.random.default_rng(0)
    w1 = (rng.normal(size=(16, 12)) / 4.0).astype(np.float32)
    w2 = rng.normal(size=(12, 5)).astype(np.float32)

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    class Twin(torch.nn.Module):
        def forward(self, v):
            h = torch.tanh(v.reshape(v.shape[0], -1) @ torch.from_numpy(w1) * 3.0)
            return h @ torch.from_numpy(w2)

    x = rng.uniform(0, 1, (12, 4, 4, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    beta = 1e-2
    ours = E.ead(f, x, y, key, beta=beta, num_binary_steps=5, num_steps=100, c_init=1e-2)
    clf = PyTorchClassifier(Twin(), loss=torch.nn.CrossEntropyLoss(), input_shape=(4, 4, 1),
                            nb_classes=5, clip_values=(0.0, 1.0))
    art = ElasticNet(clf, beta=beta, binary_search_steps=5, max_iter=100, initial_const=1e-2,
                     learning_rate=1e-2, batch_size=12, decision_rule="EN", verbose=False)
    theirs = art.generate(x, y=np.eye(5)[y])
    theirs_ok = np.asarray(jnp.argmax(f(theirs), -1)) != y
    ours_ok = np.asarray(ours.success)
    assert theirs_ok.sum() >= 8 and ours_ok.sum() >= theirs_ok.sum()

    def en(a):
        l1, l2, _ = _dists(a, x)
        return beta * l1 + l2 ** 2

    both = ours_ok & theirs_ok
    d_ours, d_theirs = en(ours.x_adv)[both].sum(), en(theirs)[both].sum()
    assert d_ours <= 1.02 * d_theirs, (d_ours, d_theirs)
