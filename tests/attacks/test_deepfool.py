"""DeepFool (Moosavi-Dezfooli et al. 2016): on a linear model one step lands on the closest
boundary (closed form, l2 and l-inf), success and containment on an MLP, candidates, errors, and
Foolbox's DeepFool on a PyTorch twin (the same algorithm: per-example distances agree)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import deepfool as D
from jaxadv.attacks.projections import norm_of
from tests.attacks.minnorm_models import boundary_distances, linear_problem


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_linear_one_step_closed_form(norm, num_classes, key):
    f, w, b, x, y = linear_problem(0, num_classes=num_classes)
    overshoot = 0.02
    res = D.deepfool(f, x, y, key, norm=norm, num_steps=1, overshoot=overshoot)
    dists = boundary_distances(w, b, x, y, norm)
    exact = dists.min(-1)
    assert np.all(np.asarray(res.success))
    # the step goes to the closest hyperplane, by its closed-form distance + 1e-4, times 1.02
    near = dists.argmin(-1)
    dw = np.stack([w[:, y[i]] - w[:, near[i]] for i in range(len(y))])  # grad of z_y - z_l
    unit = -dw / np.linalg.norm(dw, axis=-1, keepdims=True) if norm == "l2" else -np.sign(dw)
    expect = x.reshape(len(y), -1) + (1 + overshoot) * (exact + 1e-4)[:, None] * unit
    np.testing.assert_allclose(np.asarray(res.x_adv).reshape(len(y), -1), expect, atol=2e-6)
    np.testing.assert_allclose(-np.asarray(res.loss), (1 + overshoot) * (exact + 1e-4),
                               rtol=1e-4, atol=2e-7)
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1)) != y)


def test_zero_overshoot_lands_just_across(key):
    f, w, b, x, y = linear_problem(1, num_classes=3)
    res = D.deepfool(f, x, y, key, num_steps=3, overshoot=0.0)
    exact = boundary_distances(w, b, x, y, "l2").min(-1)
    assert np.all(np.asarray(res.success))
    np.testing.assert_allclose(-np.asarray(res.loss), exact + 1e-4, rtol=1e-3, atol=1e-6)


def _mlp(seed=0, dim=16, hidden=12, num_classes=5):
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(dim, hidden)) / np.sqrt(dim)).astype(np.float32)
    w2 = rng.normal(size=(hidden, num_classes)).astype(np.float32)

    def f(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    return f, w1, w2


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_mlp_success_and_containment(norm, key):
    f, _, _ = _mlp()
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (12, 4, 4, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    y[0] = (y[0] + 1) % 5  # already misclassified: returned unchanged, distance 0
    res = jax.jit(lambda x, y, k: D.deepfool(f, x, y, k, norm=norm))(x, y, key)
    ok = np.asarray(res.success)
    assert ok.all()
    adv = np.asarray(res.x_adv)
    assert adv.min() >= 0 and adv.max() <= 1
    np.testing.assert_array_equal(adv[0], x[0])
    assert np.all(np.asarray(jnp.argmax(f(adv), -1)) != y)
    np.testing.assert_allclose(-np.asarray(res.loss), np.asarray(norm_of(adv - x, norm)),
                               rtol=1e-5)


def test_candidates_restrict_classes(key):
    """With one candidate, DeepFool only ever crosses to the runner-up class of the clean input."""
    f, w, b, x, y = linear_problem(2, num_classes=4)
    runner_up = np.argsort(-np.asarray(f(x)), -1)[:, 1]
    res = D.deepfool(f, x, y, key, num_candidates=1, num_steps=1, overshoot=0.0)
    assert np.all(np.asarray(res.success))
    z = np.asarray(f(res.x_adv))
    np.testing.assert_allclose(z[np.arange(8), runner_up], z[np.arange(8), y], atol=1e-3)
    np.testing.assert_allclose(-np.asarray(res.loss),
                               boundary_distances(w, b, x, y, "l2")[np.arange(8), runner_up]
                               + 1e-4, rtol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm"), ({"num_steps": 0}, "num_steps"), ({"overshoot": -0.1}, "overshoot"),
    ({"num_candidates": 3}, "num_candidates"), ({"num_candidates": 0}, "num_candidates"),
    ({"bounds": (0.0, 0.0)}, "bounds")])
def test_errors(kwargs, match, key):
    f, _, _, x, y = linear_problem(0, batch=4)
    with pytest.raises(ValueError, match=match):
        D.deepfool(f, x, y, key, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        D.deepfool(f, x, np.array([0, 1, 2, 3]), key)


@pytest.mark.peer
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_against_foolbox_deepfool(norm, key):
    """Foolbox's DeepFool (logits loss, all candidates) on a PyTorch twin of the same MLP: the
    same algorithm, so the same examples succeed at the same distances."""
    torch = pytest.importorskip("torch")
    fb = pytest.importorskip("foolbox")
    f, w1, w2 = _mlp()

    class Twin(torch.nn.Module):
        def forward(self, v):
            h = torch.tanh(v.reshape(v.shape[0], -1) @ torch.from_numpy(w1) * 3.0)
            return h @ torch.from_numpy(w2)

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (12, 4, 4, 1)).astype(np.float32)
    y = np.argmax(np.asarray(f(x)), -1).astype(np.int32)
    ours = D.deepfool(f, x, y, key, norm=norm, num_steps=50, overshoot=0.02)
    cls = fb.attacks.L2DeepFoolAttack if norm == "l2" else fb.attacks.LinfDeepFoolAttack
    attack = cls(steps=50, candidates=5, overshoot=0.02, loss="logits")
    fmodel = fb.PyTorchModel(Twin().eval(), bounds=(0.0, 1.0))
    _, clipped, success = attack(fmodel, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)),
                                 epsilons=None)
    theirs = clipped.numpy()
    np.testing.assert_array_equal(np.asarray(ours.success), success.numpy().reshape(-1))
    np.testing.assert_allclose(np.asarray(norm_of(jnp.asarray(ours.x_adv - x), norm)),
                               np.asarray(norm_of(jnp.asarray(theirs - x), norm)), rtol=1e-3,
                               atol=1e-5)
