"""nested_robust_accuracy: closed form on a toy threat model and agreement with per-radius PGD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import pgd
from jaxadv.metrics import nested_robust_accuracy


def test_closed_form_margins():
    # Point i falls at radius >= r_i (an exact attack); predictions wrong for the first 3.
    rng = np.random.default_rng(0)
    r = rng.uniform(0, 1, 50).astype(np.float32)
    x = np.arange(50, dtype=np.float32)[:, None]
    y = np.ones(50, int)
    y_pred = y.copy()
    y_pred[:3] = 0
    calls = []

    def success(xb, yb, eps):
        calls.append(len(xb))
        return r[xb[:, 0].astype(int)] <= eps

    def predict(xb):
        return y_pred[xb[:, 0].astype(int)]

    eps = [0.0, 0.5, 0.25, 0.9]
    got = nested_robust_accuracy(success, predict, x, y, epsilons=eps, chunk=16)
    assert list(got) == [0.0, 0.25, 0.5, 0.9]  # ascending
    for e in eps:
        want = np.mean((np.arange(50) >= 3) & (r > e))
        assert got[e] == pytest.approx(want)
    assert set(calls) == {16}  # fixed chunk shape: one compile


def test_equals_independent_radii_for_pgd_on_linear_model():
    w = jax.random.normal(jax.random.key(0), (12, 3))
    fn = lambda z: z.reshape(z.shape[0], -1) @ w
    x = np.asarray(jax.random.uniform(jax.random.key(1), (40, 2, 2, 3)))
    y = np.asarray(jnp.argmax(fn(x), -1))
    attack = jax.jit(lambda xb, yb, e: pgd(fn, xb, yb, jax.random.key(0), eps=e, step_size=e / 4,
                                           num_steps=20, random_start=False).success)
    predict = jax.jit(lambda xb: jnp.argmax(fn(xb), -1))
    eps = [0.01, 0.03, 0.1]
    got = nested_robust_accuracy(attack, predict, x, y, epsilons=eps, chunk=16)
    for e in eps:
        independent = 1 - np.mean(np.asarray(attack(x, y, np.float32(e))))
        assert got[e] == pytest.approx(independent)  # linear model: PGD is monotone in eps


@pytest.mark.parametrize("epsilons", [[-0.1], [0.2, float("nan"), 0.1], [0.1, float("inf")]])
def test_rejects_negative_or_non_finite_eps_before_attacking(epsilons):
    """A NaN radius used to pass (it compares False both ways) and left the radii unsorted, so a
    larger radius was attacked first and the smaller one got its accuracy."""
    def success(*_):
        raise AssertionError("attacked before the radii were checked")

    with pytest.raises(ValueError, match="epsilons must be finite and >= 0"):
        nested_robust_accuracy(success, lambda xb: np.zeros(len(xb)), np.zeros((2, 1)),
                               np.zeros(2), epsilons=epsilons)


def _linear_apply(variables, z):
    return z.reshape(z.shape[0], -1) @ variables["w"]


@pytest.mark.parametrize("unroll", [False, True])
def test_pgd_eval_accuracy_equals_the_attack_per_radius(unroll):
    """The helper runs Boopathy et al.'s evaluation PGD: on a linear model (PGD monotone in eps)
    its nested accuracies equal the attack run independently at each radius, whether the chunks
    are split over the 8 test devices (chunk 16) or not (chunk 10), looped or unrolled."""
    from jaxadv.attacks import pgd_boopathy_eval
    from jaxadv.metrics import pgd_eval_accuracy

    # committed to one device, as restored checkpoints are
    v = jax.device_put({"w": jax.random.normal(jax.random.key(0), (12, 3))}, jax.devices()[0])
    x = np.asarray(jax.random.uniform(jax.random.key(1), (40, 2, 2, 3)))
    y = np.array(jnp.argmax(_linear_apply(v, x), -1))
    y[:4] = (y[:4] + 1) % 3  # four misclassified points count as broken at every radius
    eps = [0.0, 0.01, 0.03]
    for chunk in (16, 10):
        got = pgd_eval_accuracy(_linear_apply, v, x, y, epsilons=eps, num_steps=5,
                                step_size=0.01, chunk=chunk, unroll=unroll)
        assert list(got) == ["0", "0.01", "0.03"]
        assert got["0"] == pytest.approx(0.9)
        for e in eps[1:]:
            res = pgd_boopathy_eval(lambda z: _linear_apply(v, z), jnp.asarray(x), jnp.asarray(y),
                                    jax.random.key(0), eps=e, num_steps=5, step_size=0.01)
            assert got[f"{e:g}"] == pytest.approx(float(np.mean(~np.asarray(res.success))))


def test_pgd_eval_accuracy_compiles_once_for_equal_modules():
    """Two checkpoints of one architecture, each with its own (equal) Flax module, share one
    compiled attack: the cache keys ``model.apply`` by the module's value, not its identity."""
    from jaxadv.metrics import pgd_eval_accuracy
    from jaxadv.metrics.robustness import _pgd_eval_fns
    from jaxadv.models import get_model, init_variables

    x = np.asarray(jax.random.uniform(jax.random.key(1), (8, 8, 8, 1)))
    y = np.zeros(8, np.int32)
    for seed in (0, 1):
        model = get_model("mlp", hidden=(4,), num_classes=3)  # a new, equal module each time
        v = init_variables(model, jax.random.key(seed), (1, 8, 8, 1))
        before = _pgd_eval_fns.cache_info().misses
        pgd_eval_accuracy(model.apply, v, x, y, epsilons=[0.0, 0.05], num_steps=7,
                          step_size=0.01, chunk=8, unroll=False)
        misses = _pgd_eval_fns.cache_info().misses - before
        assert misses == (1 if seed == 0 else 0)
    other = get_model("mlp", hidden=(5,), num_classes=3)  # a different architecture compiles anew
    before = _pgd_eval_fns.cache_info().misses
    pgd_eval_accuracy(other.apply, init_variables(other, jax.random.key(0), (1, 8, 8, 1)), x, y,
                      epsilons=[0.0], num_steps=7, step_size=0.01, chunk=8, unroll=False)
    assert _pgd_eval_fns.cache_info().misses - before == 1
