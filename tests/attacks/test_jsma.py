"""JSMA (Papernot et al. 2016): equals a direct NumPy transcription of the algorithm on a linear
model (constant Jacobian; pairs and single features, raising and lowering), respects its l0
budget and the box, reaches its targets on an MLP, errors, and agrees example by example with
torchattacks' JSMA on a PyTorch twin (peer)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import jsma as J
from tests.attacks.minnorm_models import linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def _numpy_jsma(w, b, x, t, *, theta, gamma, pairs):
    """Papernot et al.'s loop for one example of the linear model z = x w + b (logits)."""
    z = x.reshape(-1).astype(np.float32).copy()
    d = z.size
    a = w[:, t]
    bs = w.sum(1) - a
    inc = theta > 0
    domain = z < 1.0 if inc else z > 0.0
    steps = math.ceil(d * gamma / 2) if pairs else math.ceil(d * gamma)
    for _ in range(steps):
        if np.argmax(z @ w + b) == t:
            break
        best, pick = -np.inf, None
        cands = ([(p, q) for p in range(d) for q in range(d) if p != q] if pairs
                 else [(p, p) for p in range(d)])
        for p, q in cands:
            if not (domain[p] and domain[q]):
                continue
            al = a[p] + a[q] if pairs else a[p]
            be = bs[p] + bs[q] if pairs else bs[p]
            if (al > 0 and be < 0) if inc else (al < 0 and be > 0):
                if -al * be > best:
                    best, pick = -al * be, (p, q)
        if pick is None:
            break
        for i in set(pick):
            z[i] = np.clip(z[i] + theta, 0.0, 1.0)
            domain[i] = False
    ok = np.argmax(z @ w + b) == t
    return (z.reshape(x.shape) if ok else x), ok


@pytest.mark.parametrize("pairs", [True, False])
@pytest.mark.parametrize("theta", [1.0, -1.0, 0.4])
def test_linear_matches_numpy_transcription(pairs, theta, key):
    f, w, b, x, y = linear_problem(0, num_classes=4, batch=6, shape=(4, 4, 1), spread=0.2)
    t = ((y + 1 + np.arange(6) % 3) % 4).astype(np.int32)
    res = J.jsma(f, x, y, key, targets=jnp.asarray(t), theta=theta, gamma=0.5, pairs=pairs)
    for i in range(6):
        ref, ok = _numpy_jsma(w, b, x[i], t[i], theta=theta, gamma=0.5, pairs=pairs)
        assert bool(res.success[i]) == ok
        np.testing.assert_allclose(np.asarray(res.x_adv[i]), ref, atol=1e-6)
    assert np.asarray(res.success).sum() >= 3  # the comparison has substance


def _mlp(seed=0, dim=64, hidden=16, num_classes=10):
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(dim, hidden)) / np.sqrt(dim)).astype(np.float32)
    w2 = rng.normal(size=(hidden, num_classes)).astype(np.float32)

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    return f, w1, w2


@pytest.mark.parametrize("pairs", [True, False])
def test_mlp_targets_budget_and_box(pairs, key):
    f, _, _ = _mlp()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 0.98, (8, 8, 8, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    gamma = 0.4
    res = jax.jit(lambda x, y, k: J.jsma(f, x, y, k, targets="random", gamma=gamma,
                                         pairs=pairs))(x, y, key)
    ok = np.asarray(res.success)
    adv = np.asarray(res.x_adv)
    pred = np.asarray(jnp.argmax(f(adv), -1))
    changed = (adv != x).reshape(8, -1).sum(-1)
    # single features run out of valid candidates (a_i > 0 and b_i < 0) sooner than pairs
    assert ok.sum() >= (4 if pairs else 2)
    assert np.all(pred[ok] != y[ok]) and np.all(changed[ok] >= 1)
    assert np.all(changed <= 64 * gamma + 1)
    assert np.all(adv[adv != x] == 1.0)  # theta = 1 moves chosen features to the top
    np.testing.assert_array_equal(adv[~ok], x[~ok])
    np.testing.assert_allclose(-np.asarray(res.loss)[ok], changed[ok] / 64)


def test_probs_saliency_runs_and_clean_target(key):
    f, _, _ = _mlp()
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 0.98, (4, 8, 8, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    t = y.copy()
    t[1:] = (y[1:] + 2) % 10  # not the labels (y + 1) % 10 either
    res = J.jsma(f, x, (y + 1) % 10, key, targets=jnp.asarray(t), saliency_on="probs",
                 gamma=0.3)
    assert bool(res.success[0]) and float(res.loss[0]) == 0.0  # already the target
    np.testing.assert_array_equal(np.asarray(res.x_adv[0]), x[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"targets": None}, "targeted"), ({"theta": 0.0}, "theta"), ({"gamma": 0.0}, "gamma"),
    ({"gamma": 1.5}, "gamma"), ({"saliency_on": "softmax"}, "saliency_on"),
    ({"targets": np.array([0, 1, 2, 9])}, "targets")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        J.jsma(f, x, y, key, **kwargs)


@pytest.mark.peer
def test_against_torchattacks_jsma(key):
    """torchattacks' JSMA (targets (y + 1) % 10, pairs, logits, theta 1, gamma 0.25) on a PyTorch
    twin: the same examples succeed with the same adversarial examples."""
    torch = pytest.importorskip("torch")
    torchattacks = pytest.importorskip("torchattacks")
    f, w1, w2 = _mlp()

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = torch.nn.Parameter(torch.from_numpy(w1))
            self.w2 = torch.nn.Parameter(torch.from_numpy(w2))

        def forward(self, v):
            return torch.tanh(v.reshape(v.shape[0], -1) @ self.w1 * 3.0) @ self.w2

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 0.98, (8, 8, 8, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    ours = J.jsma(f, x, y, key, targets=jnp.asarray((y + 1) % 10), gamma=0.25)
    atk = torchattacks.JSMA(Twin().eval(), theta=1.0, gamma=0.25)
    x_nchw = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
    theirs = np.transpose(atk(x_nchw, torch.from_numpy(y.astype(np.int64))).detach().numpy(),
                          (0, 2, 3, 1))
    theirs_ok = np.asarray(jnp.argmax(f(theirs), -1)) == (y + 1) % 10
    ok = np.asarray(ours.success)
    np.testing.assert_array_equal(ok, theirs_ok)
    assert ok.sum() >= 3
    np.testing.assert_allclose(np.asarray(ours.x_adv)[ok], theirs[ok], atol=1e-6)
