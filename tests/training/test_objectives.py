"""Every training objective: trains (finite, params move), matches its formula on a tiny model,
stop-gradients the adversarial example, keeps the double backprop of interpretation terms, and
gives the same step on 8 devices as on one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxadv import sharding
from jaxadv.models import get_model
from jaxadv.training import create_train_state, get_objective, make_train_step, summarize
from jaxadv.training.adversarial import pgd_example
from jaxadv.training.forward import pair_batch, unpair
from jaxadv.training.interpretability import (
    label_free_discrepancy,
    path_integrated_gradients_ce,
    true_class_discrepancy,
)
from tests.conftest import most_optimizations_off


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """These tests are dominated by compile time: compile with most XLA optimisations off."""
    with most_optimizations_off():
        yield


FAST = {"eps": 0.1, "step_size": 0.05, "num_steps": 2}
OBJECTIVES = {
    "cross_entropy": {}, "pgd_at": FAST, "trades": dict(FAST, beta=3.0), "fast_at": {"eps": 0.1},
    "input_gradient": {"weight": 0.5}, "int": FAST, "int_one": FAST, "int_adv": FAST,
    "int2": FAST, "int2_adv": FAST, "ig_norm": dict(FAST, ig_steps=3),
    "ig_sum_norm": dict(FAST, ig_steps=3), "int_ig": dict(FAST, ig_steps=3),
    "int_ig_adv": dict(FAST, ig_steps=3),
}


@pytest.fixture(scope="module")
def setup():
    model = get_model("mlp", hidden=(16,), activation="softplus", num_classes=4)
    x = jax.random.uniform(jax.random.key(1), (16, 4, 4, 1))
    y = jax.random.randint(jax.random.key(2), (16,), 0, 4)
    batch = {"image": x, "label": y, "mask": jnp.ones(16, bool)}
    state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), x.shape)
    return model, state, batch


def _jitted(objective, apply_fn, params, batch_stats, batch, key):
    """``objective(...)`` at ``step=None`` under one jit (op-by-op dispatch of the eager call
    compiles every primitive separately and dominated these tests)."""
    return jax.jit(lambda p, b, k: objective(apply_fn, p, batch_stats, b, k, step=None))(
        params, batch, key)


def _ce(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_trains(setup, name):
    _, state, batch = setup
    step = jax.jit(make_train_step(objective=get_objective(name, **OBJECTIVES[name])))
    losses = []
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.key(3))
        losses.append(summarize(metrics)["loss"])
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


def test_zero_eps_reduces_to_clean_objectives(setup):
    model, state, batch = setup
    args = (state.apply_fn, state.params, {}, batch, jax.random.key(4))
    ce = float(jnp.mean(_ce(model.apply({"params": state.params}, batch["image"]),
                            batch["label"])))
    zero = dict(FAST, eps=0.0)
    for name in ("pgd_at", "int", "int2", "int_one", "int_adv", "int2_adv", "ig_norm"):
        loss, _ = _jitted(get_objective(name, **zero), *args)
        assert float(loss) == pytest.approx(ce, rel=1e-5), name
    loss, _ = _jitted(get_objective("trades", **zero), *args)
    assert float(loss) == pytest.approx(ce, rel=1e-5)
    loss, _ = _jitted(get_objective("trades", **zero, batch_sum=True, beta=1.0), *args)
    assert float(loss) == pytest.approx(16 * ce, rel=1e-5)


def test_label_free_discrepancy_matches_loops():
    rng = np.random.default_rng(0)
    cam0, cam1 = rng.normal(size=(2, 3, 3, 5)), rng.normal(size=(2, 3, 3, 5))
    logits, y = rng.normal(size=(2, 5)), np.array([1, 4])
    got = np.asarray(label_free_discrepancy(jnp.asarray(cam0), jnp.asarray(cam1),
                                            jnp.asarray(logits), jnp.asarray(y)))
    for b in range(2):
        p = np.exp(logits[b]) / np.exp(logits[b]).sum()
        others = [i for i in range(5) if i != y[b]]
        want = np.abs(cam1[b, ..., y[b]] - cam0[b, ..., y[b]]).sum()
        for i in others:
            want += p[i] / p[others].sum() * np.abs(cam1[b, ..., i] - cam0[b, ..., i]).sum()
        assert got[b] == pytest.approx(want, rel=1e-5)
    one = np.asarray(true_class_discrepancy(jnp.asarray(cam0), jnp.asarray(cam1), jnp.asarray(y)))
    assert one[1] == pytest.approx(np.abs(cam1[1, ..., 4] - cam0[1, ..., 4]).sum(), rel=1e-5)


def test_int2_formula_and_stop_gradient(setup):
    model, state, batch = setup
    key = jax.random.key(5)
    x, y = batch["image"], batch["label"]
    obj = get_objective("int2", **FAST)
    x_adv = pgd_example(state.apply_fn, state.params, {}, batch, key, **FAST)

    def by_hand(params):
        def lc(z):
            v = {"params": params}
            a = model.apply(v, z, method="features")
            return model.apply(v, a, method="head"), model.apply(v, a, method="cam")
        logits, cam = lc(x)
        logits_adv, cam_adv = lc(x_adv)
        return jnp.mean(_ce(logits, y) + 0.01 * label_free_discrepancy(cam, cam_adv, logits_adv,
                                                                         y))

    loss_fn = lambda p: obj(state.apply_fn, p, {}, batch, key, step=None)[0]  # noqa: E731
    loss = jax.jit(loss_fn)(state.params)  # jitted: op-by-op dispatch dominated this test
    assert float(loss) == pytest.approx(float(jax.jit(by_hand)(state.params)), rel=1e-5)
    # The adversarial example is a constant: the gradient equals that of the loss at fixed x'.
    g_obj = jax.jit(jax.grad(loss_fn))(state.params)
    g_hand = jax.jit(jax.grad(by_hand))(state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_obj,
                 g_hand)


def test_pgd_at_gradient_is_that_of_ce_at_fixed_example(setup):
    model, state, batch = setup
    key = jax.random.key(6)
    obj = get_objective("pgd_at", **FAST)
    x_adv = pgd_example(state.apply_fn, state.params, {}, batch, key, **FAST)
    g_obj = jax.jit(jax.grad(lambda p: obj(state.apply_fn, p, {}, batch, key,
                                           step=None)[0]))(state.params)
    g_hand = jax.jit(jax.grad(lambda p: jnp.mean(_ce(model.apply({"params": p}, x_adv),
                                                     batch["label"]))))(state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g_obj,
                 g_hand)


def test_ig_norm_keeps_double_backprop(setup):
    model, state, batch = setup
    key = jax.random.key(7)
    obj = get_objective("ig_norm", **dict(FAST, ig_steps=3))
    g = jax.jit(jax.grad(lambda p: obj(state.apply_fn, p, {}, batch, key,
                                       step=None)[0]))(state.params)
    x, y = batch["image"], batch["label"]
    # Recover the objective's adversarial example by evaluating its loss decomposition.
    _, (metrics, _) = _jitted(obj, state.apply_fn, state.params, {}, batch, key)

    def ce_only(p):
        return jnp.mean(_ce(model.apply({"params": p}, x), y))

    g_ce = jax.grad(ce_only)(state.params)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g, g_ce)
    assert max(jax.tree.leaves(diff)) > 1e-6  # the IG term contributes a parameter gradient
    assert float(jnp.mean(metrics["ig_norm"])) > 0


@pytest.mark.parametrize("name,base", [("intig", "ig_norm"), ("intigadv", "ig_sum_norm")])
def test_int_ig_is_the_ig_objective_at_weight_002(setup, name, base):
    """Int-IG / Int-IG-Adv (methods.md 1.6, quirk 2 of 1.10): Boopathy et al.'s code collapses the
    2-class weighting to 0.02 ||IG||_1, so each is its IG objective at weight 0.02 (inner
    maximisation included), and the loss is CE + 0.02 ||IG||_1 per example."""
    _, state, batch = setup
    args = (state.apply_fn, state.params, {}, batch, jax.random.key(9))
    hp = dict(FAST, ig_steps=3)
    loss, (metrics, _) = _jitted(get_objective(name, **hp), *args)
    ref, (ref_metrics, _) = _jitted(get_objective(base, **hp, weight=0.02), *args)
    assert float(loss) == float(ref)
    np.testing.assert_allclose(metrics["loss"], metrics["ce"] + 0.02 * metrics["ig_norm"],
                               rtol=1e-6)
    other, _ = _jitted(get_objective(base, **hp), *args)  # weight 1
    assert float(other) > float(loss)


def test_path_ig_completeness_on_smooth_model(setup):
    model, state, batch = setup
    fn = functools.partial(model.apply, {"params": state.params})
    x, y = batch["image"], batch["label"]
    x2 = jnp.clip(x + 0.2 * jax.random.normal(jax.random.key(8), x.shape), 0, 1)
    ig = path_integrated_gradients_ce(fn, x, x2, y, num_steps=256)
    delta = _ce(fn(x2), y) - _ce(fn(x), y)
    np.testing.assert_allclose(ig.reshape(16, -1).sum(-1), delta, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_path_ig_chunking_does_not_change_it(setup, chunk):
    """All path points at once (vmap) or ``chunk`` at a time (lax.map): the same IG."""
    model, state, batch = setup
    fn = functools.partial(model.apply, {"params": state.params})
    x, y = batch["image"], batch["label"]
    x2 = jnp.clip(x + 0.2, 0, 1)
    whole = path_integrated_gradients_ce(fn, x, x2, y, num_steps=5)
    part = path_integrated_gradients_ce(fn, x, x2, y, num_steps=5, path_chunk=chunk)
    np.testing.assert_allclose(part, whole, rtol=1e-5, atol=1e-7)


def test_input_gradient_formula(setup):
    model, state, batch = setup
    x, y = batch["image"], batch["label"]
    loss, _ = get_objective("input_gradient", weight=0.5)(state.apply_fn, state.params, {}, batch,
                                                          jax.random.key(0), step=None)
    fn = functools.partial(model.apply, {"params": state.params})
    gx = jax.grad(lambda z: jnp.sum(_ce(fn(z), y)))(x)
    want = jnp.mean(_ce(fn(x), y) + 0.5 * jnp.sum(gx.reshape(16, -1) ** 2, -1))
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_eps_ramp_inside_objective(setup):
    _, state, batch = setup
    obj = get_objective("pgd_at", eps=0.3, step_size=0.01, num_steps=1, ramp_start=10,
                        ramp_end=20)
    for step, want in ((0, 0.0), (15, 0.15), (30, 0.3)):
        _, (m, _) = obj(state.apply_fn, state.params, {}, batch, jax.random.key(0),
                        step=jnp.asarray(step))
        assert float(m["eps"][0]) == pytest.approx(want)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_mesh_step_equals_single_device(setup, name):
    _, state, batch = setup
    step = make_train_step(objective=get_objective(name, **OBJECTIVES[name]))
    single_state, single_m = jax.jit(step)(state, batch, jax.random.key(9))
    mesh = sharding.data_mesh()
    assert mesh.devices.size == 8
    sharded_batch = sharding.shard_batch(jax.device_get(batch), mesh)
    mesh_state, mesh_m = jax.jit(step)(sharding.replicate(state, mesh), sharded_batch,
                                       jax.random.key(9))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
                 jax.device_get(single_state.params), jax.device_get(mesh_state.params))
    s1, s2 = summarize(single_m), summarize(mesh_m)
    for k in s1:
        assert s1[k] == pytest.approx(s2[k], rel=1e-4, abs=1e-6), k


def test_pair_batch_interleaves_and_unpair_inverts():
    x, x_adv = jnp.arange(6.0).reshape(3, 2), -jnp.arange(6.0).reshape(3, 2)
    both = pair_batch(x, x_adv)
    np.testing.assert_array_equal(both[::2], x)
    np.testing.assert_array_equal(both[1::2], x_adv)
    a, b = unpair(both)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(b, x_adv)


@pytest.mark.parametrize("name", ["trades", "int2", "ig_norm"])
def test_mesh_step_moves_no_batch_shards(name):
    """On a batch-sharded mesh the only collectives of a step are the all-reduces of gradients
    and metrics: the clean/adversarial pair and IG's path points stay on each example's device
    (concatenating along the sharded axis, or merging IG's points K-major, made XLA move shards
    with all-to-alls / all-gathers, and such collectives deadlocked a long run on host devices)."""
    model = get_model("smallgap", widths=(2, 2, 4))
    x = jax.random.uniform(jax.random.key(1), (16, 8, 8, 1))
    batch = {"image": x, "label": jnp.arange(16) % 10, "mask": jnp.ones(16, bool)}
    state = create_train_state(model, optax.sgd(0.1), jax.random.key(0), x.shape)
    mesh = sharding.data_mesh()
    step = make_train_step(objective=get_objective(name, **OBJECTIVES[name]))
    hlo = jax.jit(step).lower(sharding.replicate(state, mesh),
                              sharding.shard_batch(jax.device_get(batch), mesh),
                              jax.random.key(9)).compile().as_text()
    assert " all-reduce(" in hlo  # the test sees the collectives it looks for
    for op in ("all-to-all", "all-gather", "collective-permute"):
        assert f" {op}(" not in hlo, op



@pytest.mark.parametrize("name, kwargs, match", [
    ("pgd_at", {"eps": -0.1}, "pgd_at: eps must be finite and >= 0"),
    ("fast_at", {"eps": float("nan")}, "fast_at: eps must be finite"),
    ("int", {"gamma": -1.0}, "int: gamma must be finite and >= 0"),
    ("ig_norm", {"ig_steps": 0}, "ig_norm: ig_steps must be an int >= 1"),
    ("trades", {"beta": -6.0}, "trades: beta must be finite and >= 0"),
    ("trades", {"batch_sum": True}, "pass beta=1.0 with it"),
    ("pgd_at", {"num_steps": 2.5}, "pgd_at: num_steps must be an int >= 0"),
])
def test_bad_hyperparameters_are_refused_before_tracing(name, kwargs, match):
    """Inside the jitted step they are traced and fail silently: a negative eps collapses the
    projection onto x - |eps|, zero IG steps make the loss NaN."""
    with pytest.raises(ValueError, match=match):
        get_objective(name, **kwargs)
    get_objective("trades", batch_sum=True, beta=1.0)  # the code-compatible setting is fine
