"""Sweeps over eps, restarts and targets: Foolbox shapes, equality with Python loops, one trace for
any eps values, worst-case reduction, and the target helpers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import gradient as G
from jaxadv.attacks import sweep as S
from jaxadv.attacks import targets as T
from jaxadv.attacks.base import AttackResult

K = 4
B = 5


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def mlp_model(seed=0, dim=16, hidden=8):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (hidden, K))
    return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1 * 4.0) @ w2


def easy_linear_problem():
    """Class k scores block k of the 16 pixels: every class is reachable in the linf 0.5 ball."""
    w = np.full((16, K), -1.0, np.float32)
    for k in range(K):
        w[4 * k:4 * k + 4, k] = 1.0
    w = jnp.asarray(w)
    return lambda x: x.reshape(x.shape[0], -1) @ w


def data(seed=0):
    x = jax.random.uniform(jax.random.key(seed), (B, 4, 4, 1))
    y = jnp.arange(B, dtype=jnp.int32) % K
    return x, y


EPS = [0.0, 0.02, 0.05, 0.1, 0.3]
PGD_KW = dict(step_size=0.03, num_steps=3)


@pytest.mark.slow
def test_attack_over_eps_shapes_and_equality_with_a_loop(key):
    f = mlp_model()
    x, y = data()
    sw = S.attack_over_eps(G.pgd, f, x, y, key, epsilons=EPS, **PGD_KW)
    assert sw.raw.shape == sw.clipped.shape == (len(EPS),) + x.shape
    assert sw.success.shape == (len(EPS), B) and sw.success.dtype == jnp.bool_
    for i, e in enumerate(EPS):
        one = G.pgd(f, x, y, key, eps=e, **PGD_KW)
        np.testing.assert_allclose(sw.raw[i], one.x_adv, atol=1e-6)
        np.testing.assert_array_equal(sw.success[i], one.success)
    # Chunked over eps with lax.map, and all vmapped at once: the same results.
    for batch_size in (2, None):
        chunked = S.attack_over_eps(G.pgd, f, x, y, key, epsilons=EPS, eps_batch_size=batch_size,
                                    **PGD_KW)
        np.testing.assert_allclose(chunked.raw, sw.raw, atol=1e-6)
        np.testing.assert_array_equal(chunked.success, sw.success)
    # Fixed-eps attacks already return feasible points: clipped == raw.
    np.testing.assert_allclose(sw.clipped, sw.raw, atol=0)
    # eps = 0 is clean accuracy; success never decreases much with eps on this model.
    clean_wrong = jnp.argmax(f(x), -1) != y
    np.testing.assert_array_equal(sw.success[0], clean_wrong)
    assert np.all(np.asarray(sw.success[-1]) >= np.asarray(sw.success[0]))


def test_clipped_and_success_are_recomputed_for_attacks_that_overshoot(key):
    f = easy_linear_problem()
    x = jnp.broadcast_to(jnp.zeros((16,)).at[:4].set(1.0).reshape(1, 4, 4, 1), (B, 4, 4, 1))
    y = jnp.zeros(B, jnp.int32)  # x is class 0's corner

    def overshoot(logits_fn, x, y, key, *, eps, norm="linf", bounds=(0.0, 1.0)):
        # A "minimum-norm" style attack whose raw output ignores eps: go to class 1's corner.
        target = jnp.zeros((16,)).at[4:8].set(1.0).reshape(1, 4, 4, 1)
        x_adv = jnp.broadcast_to(target, x.shape)
        return AttackResult(x_adv, jnp.ones(x.shape[0], jnp.bool_), jnp.zeros(x.shape[0]))

    sw = S.attack_over_eps(overshoot, f, x, y, key, epsilons=[0.01, 1.0])
    np.testing.assert_allclose(sw.raw[0], sw.raw[1])
    assert float(jnp.max(jnp.abs(sw.clipped[0] - x))) <= 0.01 + 1e-7
    np.testing.assert_allclose(sw.clipped[1], sw.raw[1])
    # At 0.01 the clipped point is still class 0 (the attack's own success flag is not trusted).
    np.testing.assert_array_equal(sw.success, [[False] * B, [True] * B])


def test_eps_sweep_compiles_once_for_any_epsilon_values(key):
    f = mlp_model(1)
    x, y = data(1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def sweep(x, y, key, eps):
        return S.attack_over_eps(G.pgd, f, x, y, key, epsilons=eps, **PGD_KW)

    a = sweep(x, y, key, jnp.array([0.0, 0.1, 0.2]))
    b = sweep(x, y, key, jnp.array([0.05, 0.3, 0.4]))
    assert float(jnp.max(jnp.abs(a.raw[0] - x))) == 0.0
    assert float(jnp.max(jnp.abs(b.raw[0] - x))) > 0.0


def test_pgd_restarts_equal_the_best_of_a_restart_sweep(key):
    f = mlp_model(2)
    x, y = data(2)
    kw = dict(eps=0.1, loss_fn="cw", **PGD_KW)
    runs, best = S.attack_over_restarts(G.pgd, f, x, y, key, num_restarts=3, **kw)
    assert runs.x_adv.shape == (3,) + x.shape and runs.success.shape == (3, B)
    direct = G.pgd(f, x, y, key, num_restarts=3, **kw)
    np.testing.assert_allclose(best.x_adv, direct.x_adv, atol=1e-6)
    np.testing.assert_array_equal(best.success, direct.success)
    np.testing.assert_array_equal(best.success, np.any(np.asarray(runs.success), axis=0))
    # The best is the highest loss among runs with the best success status.
    for i in range(B):
        ok = np.asarray(runs.success[:, i]) == np.asarray(best.success[i])
        assert np.isclose(float(best.loss[i]), np.asarray(runs.loss[:, i])[ok].max())


def test_attack_over_all_targets_reaches_every_target_on_an_easy_problem(key):
    f = easy_linear_problem()
    y = jnp.arange(B, dtype=jnp.int32) % K
    # 0.5 everywhere, 0.6 on the label's block: a logit margin of 0.8, far beyond eps = 0.001.
    x = (0.5 + 0.1 * jnp.repeat(jax.nn.one_hot(y, K), 4, axis=1)).reshape(B, 4, 4, 1)
    np.testing.assert_array_equal(jnp.argmax(f(x), -1), y)
    runs, worst = S.attack_over_targets(G.pgd, f, x, y, key, eps=0.5, step_size=0.1,
                                        num_steps=10)
    assert runs.x_adv.shape == (K - 1,) + x.shape
    t = T.all_other_targets(y, K)
    pred = jnp.argmax(jax.vmap(f)(runs.x_adv), -1)
    np.testing.assert_array_equal(pred, t)
    assert np.all(runs.success) and np.all(worst.success)
    # A small budget reaches no target.
    runs_small, worst_small = S.attack_over_targets(G.pgd, f, x, y, key, eps=0.001,
                                                    step_size=0.001, num_steps=2)
    assert not np.any(runs_small.success) and not np.any(worst_small.success)


def test_attack_surface_shapes_and_consistency(key):
    f = mlp_model(4)
    x, y = data(4)
    eps = [0.0, 0.05, 0.2]
    surf = S.attack_surface(G.pgd, f, x, y, key, epsilons=eps, num_restarts=2, targets="all",
                            **PGD_KW)
    assert surf.runs.x_adv.shape == (3, 2, K - 1) + x.shape
    assert surf.runs.success.shape == (3, 2, K - 1, B)
    assert surf.worst.raw.shape == surf.worst.clipped.shape == (3,) + x.shape
    assert surf.worst.success.shape == (3, B)
    # Any successful targeted run makes the worst case misclassified.
    any_run = np.any(np.asarray(surf.runs.success), axis=(1, 2))
    assert np.all(np.asarray(surf.worst.success) >= any_run)
    # Each run equals the direct call with the same eps, restart key and target.
    keys = jax.random.split(key, 2)
    t = T.all_other_targets(y, K)
    one = G.pgd(f, x, y, keys[1], eps=0.05, targets=t[2], **PGD_KW)
    np.testing.assert_allclose(surf.runs.x_adv[1, 1, 2], one.x_adv, atol=1e-6)
    # An untargeted surface with one restart is the eps sweep.
    plain = S.attack_surface(G.pgd, f, x, y, key, epsilons=eps, **PGD_KW)
    sw = S.attack_over_eps(G.pgd, f, x, y, key, epsilons=eps, **PGD_KW)
    assert plain.runs.x_adv.shape == (3, 1, 1) + x.shape
    np.testing.assert_allclose(plain.worst.clipped, sw.clipped, atol=1e-6)
    np.testing.assert_array_equal(plain.worst.success, sw.success)


def test_best_over_prefers_success_then_loss():
    xs = jnp.arange(3.0)[:, None, None] * jnp.ones((3, 2, 1))
    res = AttackResult(xs, jnp.array([[False, True], [True, False], [True, False]]),
                       jnp.array([[5.0, 1.0], [1.0, 9.0], [2.0, 3.0]]))
    best = S.best_over(res)
    np.testing.assert_array_equal(best.success, [True, True])
    np.testing.assert_allclose(best.loss, [2.0, 1.0])
    np.testing.assert_allclose(best.x_adv[:, 0], [2.0, 0.0])


def test_target_helpers():
    y = jnp.array([0, 3, 2, 1, 3], jnp.int32)
    t = T.all_other_targets(y, K)
    assert t.shape == (K - 1, B)
    for i in range(B):
        assert sorted(np.asarray(t[:, i]).tolist() + [int(y[i])]) == list(range(K))
    r = T.random_targets(jax.random.key(0), jnp.zeros(400, jnp.int32), K)
    assert np.all((np.asarray(r) >= 1) & (np.asarray(r) < K))
    assert set(np.asarray(r).tolist()) == {1, 2, 3}
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 4.0, -1.0]])
    np.testing.assert_array_equal(T.least_likely_targets(logits), [0, 3])
    top = T.top_k_targets(logits, jnp.array([1, 0], jnp.int32), 2)
    np.testing.assert_array_equal(top, [[3, 2], [2, 1]])
    with pytest.raises(ValueError, match="num_classes >= 2"):
        T.all_other_targets(y, 1)
    with pytest.raises(ValueError, match="k must lie"):
        T.top_k_targets(logits, jnp.array([1, 0], jnp.int32), 4)


def test_sweep_argument_errors(key):
    f = mlp_model()
    x, y = data()
    with pytest.raises(ValueError, match="epsilons must be finite and >= 0"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.1, -0.1], **PGD_KW)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=0.1, **PGD_KW)
    with pytest.raises(ValueError, match="eps_batch_size"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.1], eps_batch_size=0, **PGD_KW)
    with pytest.raises(ValueError, match="eps_batch_size"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.1], eps_batch_size="all", **PGD_KW)
    with pytest.raises(ValueError, match="Unknown norm"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.1], norm="l0", **PGD_KW)
    with pytest.raises(ValueError, match="resolve targets"):
        S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.1], targets="random", **PGD_KW)
    with pytest.raises(ValueError, match="num_restarts"):
        S.attack_over_restarts(G.pgd, f, x, y, key, num_restarts=0, eps=0.1, **PGD_KW)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 4\)"):
        S.attack_over_targets(G.pgd, f, x, y, key, targets=jnp.full((2, B), 7, jnp.int32),
                              eps=0.1, **PGD_KW)
    with pytest.raises(ValueError, match="shape"):
        S.attack_over_targets(G.pgd, f, x, y, key, targets=jnp.zeros((B,), jnp.int32),
                              eps=0.1, **PGD_KW)


def test_attack_over_eps_auto_runs_one_radius_at_a_time_on_cpu(key, monkeypatch):
    """The default maps over the radii on CPU (faster there) and vmaps them elsewhere."""
    f = mlp_model()
    x, y = data()
    eps = [0.01, 0.02, 0.03, 0.04, 0.05]  # a length no loop inside the attack has

    def radius_map(**kw):
        jaxpr = jax.make_jaxpr(lambda x: S.attack_over_eps(G.pgd, f, x, y, key, epsilons=eps,
                                                           **kw, **PGD_KW).raw)(x)
        return any(e.primitive.name == "scan" and e.params["length"] == len(eps)
                   for e in jaxpr.eqns)

    assert radius_map() and radius_map(eps_batch_size=1) and not radius_map(eps_batch_size=None)
    monkeypatch.setattr(S.jax, "default_backend", lambda: "gpu")
    assert not radius_map()


@pytest.mark.parametrize("chunk", [2, 8])
def test_nested_eps_sweep_carries_broken_examples_and_stays_feasible(key, chunk):
    """``nested=True``: success is monotone in eps (given unsorted), an example broken at a
    smaller radius keeps that radius' example, every example lies in its ball and the bounds,
    and at the smallest radius the standing examples get the attack run on their chunk."""
    f = mlp_model()
    x, y = data()
    eps = [0.3, 0.0, 0.1, 0.02, 0.05]
    sw = jax.jit(lambda x, y, k: S.attack_over_eps(G.pgd, f, x, y, k, epsilons=eps, nested=True,
                                                   nested_chunk=chunk, **PGD_KW))(x, y, key)
    assert sw.raw.shape == sw.clipped.shape == (len(eps),) + x.shape
    order = np.argsort(eps)
    success = np.asarray(sw.success)[order]
    assert np.all(success[1:] >= success[:-1])
    np.testing.assert_array_equal(success[0], np.asarray(jnp.argmax(f(x), -1) != y))  # eps 0
    for k, e in enumerate(eps):
        delta = np.abs(np.asarray(sw.clipped[k] - x)).reshape(B, -1).max(-1)
        assert np.all(delta <= e + 1e-6)
        assert float(sw.clipped[k].min()) >= 0.0 and float(sw.clipped[k].max()) <= 1.0
    for j in range(1, len(order)):  # carried over: broken before -> same example
        before = success[j - 1]
        np.testing.assert_array_equal(np.asarray(sw.raw[order[j]])[before],
                                      np.asarray(sw.clipped[order[j - 1]])[before])
    # One radius, one chunk: the standing examples, gathered to the front, get the attack itself
    # (with the chunk's key).
    one = S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.05], nested=True,
                            nested_chunk=B, **PGD_KW)
    broken = np.asarray(jnp.argmax(f(x), -1) != y)
    perm = np.argsort(broken, kind="stable")
    ref = G.pgd(f, x[perm], y[perm], jax.random.fold_in(key, 0), eps=0.05, **PGD_KW)
    n = int((~broken).sum())
    np.testing.assert_allclose(np.asarray(one.raw[0])[perm][:n], np.asarray(ref.x_adv)[:n],
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(one.raw[0])[broken], np.asarray(x)[broken])


def test_nested_eps_sweep_gathers_per_example_targets(key):
    """Targets (B,) travel with their examples through the gather of the nested sweep: on the
    easy linear problem every example reaches its own target at the large radius."""
    f = easy_linear_problem()
    x, y = data()
    targets = (y + 1) % K
    sw = S.attack_over_eps(G.pgd, f, x, y, key, epsilons=[0.5, 0.01], nested=True,
                           nested_chunk=2, targets=targets, step_size=0.1,
                           num_steps=20)
    assert bool(jnp.all(sw.success[0]))
    np.testing.assert_array_equal(jnp.argmax(f(sw.clipped[0]), -1), targets)


def test_nested_eps_sweep_passes_a_shared_mask_unchanged(key):
    """A batch-wide (H, W, 1) mask whose H happens to equal B is not a per-example array: the
    nested sweep must not permute its rows with the examples (earlier it did, and the perturbation
    landed outside the mask; with smaller chunks it failed to broadcast)."""
    from jaxadv.attacks.masked import masked_pgd

    f = easy_linear_problem()
    x = jax.random.uniform(jax.random.key(3), (4, 4, 4, 1))
    y = jnp.arange(4, dtype=jnp.int32) % K
    mask = jnp.zeros((4, 4, 1)).at[0].set(1.0)   # only image row 0 may change; H == B == 4
    for chunk in (4, 2):
        sw = S.attack_over_eps(masked_pgd, f, x, y, key, epsilons=[0.3], nested=True,
                               nested_chunk=chunk, mask=mask, step_size=0.1, num_steps=5)
        moved = np.abs(np.asarray(sw.clipped[0] - x)).max(axis=(0, 2, 3))  # per image row
        assert moved[0] > 0 and np.all(moved[1:] == 0), (chunk, moved)


def test_restarts_refuse_target_choices(key):
    f = mlp_model()
    x, y = data()
    with pytest.raises(ValueError, match="attack_over_restarts needs the targets themselves"):
        S.attack_over_restarts(G.pgd, f, x, y, key, num_restarts=2, targets="random", **PGD_KW)


def test_surface_worst_case_counts_a_run_that_reaches_a_third_class(key):
    """Label 0, targets 1 and 3 on a linear model where pushing towards class 1 lands in class 2
    (same pixels, larger weight): that run misses its target but misclassifies inside the ball,
    and the other run stays correct with a higher targeted loss. The worst case must be the
    misclassified one (it used to follow the runs' targeted success and loss)."""
    w = np.zeros((8, 4), np.float32)
    w[0:2, 0] = 1.0
    w[2:4, 1] = 1.0
    w[2:4, 2] = 3.0
    w[4:6, 3] = 1.0
    wj, bj = jnp.asarray(w), jnp.asarray([0.0, 0.0, -0.5, 0.0], jnp.float32)

    def f(v):
        return v.reshape(v.shape[0], -1) @ wj + bj

    x = jnp.asarray([[0.5, 0.5, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0]], jnp.float32).reshape(1, 2, 4, 1)
    y = jnp.asarray([0], jnp.int32)
    surf = S.attack_surface(G.pgd, f, x, y, key, epsilons=[0.2], targets=jnp.asarray([[1], [3]]),
                            loss_fn="cw", step_size=0.04, num_steps=10, random_start=False)
    preds = [int(jnp.argmax(f(surf.runs.x_adv[0, 0, t]), -1)[0]) for t in range(2)]
    assert preds[0] == 2 and preds[1] == 0  # run 1 misclassified (third class), run 2 not
    assert not bool(surf.runs.success[0, 0, 0, 0])  # ... and did not reach its target
    assert bool(surf.worst.success[0, 0])
    assert int(jnp.argmax(f(surf.worst.clipped[0]), -1)[0]) == 2
