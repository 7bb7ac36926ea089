"""Robust accuracy: masked (sum, count) pairs ignore padding; the streamed curve equals a direct
computation on all examples at once; eps = 0 is clean accuracy; sharding over the 8 fake devices
changes nothing."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv import sharding
from jaxadv.attacks import gradient as G
from jaxadv.attacks import sweep as S
from jaxadv.data import ArrayDataset, eval_batches
from jaxadv.metrics import accuracy_sum_count, masked_sum_count, robust_accuracy_curve
from tests.conftest import most_optimizations_off

K = 4
N = 21  # not a multiple of the batch size: the last batch is padded
EPS = [0.0, 0.03, 0.1, 0.3]


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    with most_optimizations_off():
        yield


def mlp_model(seed=0, dim=16, hidden=8):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (hidden, K))
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 * 4.0) @ w2


def dataset(seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (N, 4, 4, 1)).astype(np.float32)
    labels = (np.arange(N) % K).astype(np.int32)
    return images, labels


def test_masked_sum_count_keeps_float64_and_counts_in_float32_otherwise():
    from tests.attributions.helpers import x64
    with x64():
        v = jnp.asarray([1.0 + 1e-12, 2.0, 3.0], jnp.float64)
        total, count = masked_sum_count(v, jnp.array([True, True, False]))
        assert total.dtype == jnp.float64 and count.dtype == jnp.float64
        assert float(total) - 3.0 == pytest.approx(1e-12, rel=1e-3)  # lost in float32
        g = jax.grad(lambda u: masked_sum_count(u)[0])(v)
        assert g.dtype == jnp.float64
    for values in (jnp.array([True, False]), jnp.array([1, 2]), jnp.array([1.0, 2.0], jnp.bfloat16)):
        total, count = masked_sum_count(values)
        assert total.dtype == jnp.float32 and count.dtype == jnp.float32


def test_masked_sum_count_ignores_padding():
    values = jnp.array([[1.0, 2.0, 3.0, 100.0], [0.0, 1.0, 1.0, 100.0]])
    mask = jnp.array([True, True, True, False])
    total, count = masked_sum_count(values, mask)
    np.testing.assert_allclose(total, [6.0, 2.0])
    assert float(count) == 3.0
    logits = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    correct, count = accuracy_sum_count(logits, jnp.array([0, 0, 1]), jnp.array([1, 1, 0], bool))
    assert float(correct) == 1.0 and float(count) == 2.0
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_sum_count(values, jnp.ones(3, bool))


BIM = functools.partial(G.bim, num_steps=3)  # deterministic: batch composition cannot matter


def direct_curve(f, images, labels):
    """All N examples in one call, no padding."""
    sw = S.attack_over_eps(BIM, f, jnp.asarray(images), jnp.asarray(labels), jax.random.key(0),
                           epsilons=EPS)
    clean_ok = np.asarray(jnp.argmax(f(jnp.asarray(images)), -1) == labels)
    return (clean_ok[None] & ~np.asarray(sw.success)).mean(-1), clean_ok.mean()


@pytest.mark.parametrize("as_", ["source", "arrays", "batches"])
def test_streamed_curve_equals_direct_computation(as_, key):
    f = mlp_model()
    images, labels = dataset()
    if as_ == "source":
        data = ArrayDataset(images, labels, K)
    elif as_ == "arrays":
        data = (images, labels)
    else:
        data = eval_batches(ArrayDataset(images, labels, K), batch_size=8)
    curve = robust_accuracy_curve(f, data, BIM, epsilons=EPS, batch_size=8, key=key)
    expected, clean = direct_curve(f, images, labels)
    assert curve.num_examples == N
    np.testing.assert_allclose(curve.robust_accuracy, expected, atol=1e-7)
    assert curve.clean_accuracy == pytest.approx(clean)
    assert curve.robust_accuracy[0] == pytest.approx(curve.clean_accuracy)  # eps = 0
    assert 0 < clean < 1 and curve.robust_accuracy[-1] < clean


def test_num_examples_limits_the_stream(key):
    f = mlp_model(1)
    images, labels = dataset(1)
    curve = robust_accuracy_curve(f, ArrayDataset(images, labels, K), BIM, epsilons=EPS,
                                  batch_size=8, key=key, num_examples=10)
    expected, _ = direct_curve(f, images[:10], labels[:10])
    assert curve.num_examples == 10
    np.testing.assert_allclose(curve.robust_accuracy, expected, atol=1e-7)


def test_sharded_curve_equals_unsharded(key, monkeypatch):
    assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"
    waits = []  # one per batch on several CPU devices (XLA:CPU's collective deadlock)
    real = sharding.wait_between_steps
    monkeypatch.setattr(sharding, "wait_between_steps",
                        lambda t, m: waits.append(sharding.waits_between_steps(m)) or real(t, m))
    f = mlp_model(2)
    images, labels = dataset(2)
    attack = functools.partial(G.pgd, step_size=0.05, num_steps=3)  # random start: keys matter
    mesh = sharding.data_mesh()
    sharded = robust_accuracy_curve(f, (images, labels), attack, epsilons=EPS, batch_size=16,
                                    key=key, mesh=mesh)
    plain = robust_accuracy_curve(f, (images, labels), attack, epsilons=EPS, batch_size=16,
                                  key=key)
    np.testing.assert_array_equal(sharded.robust_accuracy, plain.robust_accuracy)
    assert sharded.clean_accuracy == plain.clean_accuracy and sharded.num_examples == N
    assert waits == [True] * -(-N // 16)
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        robust_accuracy_curve(f, (images, labels), attack, epsilons=EPS, batch_size=12,
                              key=key, mesh=mesh)


def test_curve_argument_errors(key):
    f = mlp_model()
    images, labels = dataset()
    for bad in ([-0.1], [0.0, float("nan"), 0.05], [float("inf")]):
        with pytest.raises(ValueError, match="epsilons must be .* finite values >= 0"):
            robust_accuracy_curve(f, (images, labels), BIM, epsilons=bad, batch_size=8, key=key)
    with pytest.raises(ValueError, match="batch_size"):
        robust_accuracy_curve(f, (images, labels), BIM, epsilons=EPS, batch_size=0, key=key)
    with pytest.raises(ValueError, match="labels must have shape"):
        robust_accuracy_curve(f, (images, labels[:3]), BIM, epsilons=EPS, batch_size=8, key=key)
    unpadded = [{"image": images[:5], "label": labels[:5]}]
    with pytest.raises(ValueError, match="pad it"):
        robust_accuracy_curve(f, unpadded, BIM, epsilons=EPS, batch_size=8, key=key)
