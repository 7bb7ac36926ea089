"""The AutoAttack-protocol evaluator: worst case over its attacks (it equals the AND of the attacks
run alone with the same keys, so robust accuracy <= every component's), masks freeze points,
per-point evaluation counts in closed form, eps = 0 gives clean accuracy, every gradient-masking
flag fires on a model built to trigger it and stays off on a normal model, streaming over padded
batches, and argument errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attacks import ensemble as E
from jaxadv.attacks.fab import fab_t
from tests.attacks.test_apgd import K, trained_mlp

N, Q, T = 10, 50, 3  # APGD/FAB iterations, Square queries, targets: small, shared (one compile)
SMALL = {"num_steps": N, "num_queries": Q, "num_targets": T, "large_eps_steps": N}
EPS = 0.125


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def data16():
    f, x, y = trained_mlp()
    return f, x[:16], y[:16]


@pytest.fixture(scope="module")
def standard_result():
    """Fixed shapes (compact=False): every stage sees the batch at the same positions as the
    attack run alone, so the two draw the same random numbers per point."""
    f, x, y = data16()
    return E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=EPS, compact=False, **SMALL)


# ----------------------------------------------------------------------------------------------
# Worst case and masks.


def test_equals_and_of_components_run_alone(standard_result):
    f, x, y = data16()
    res = standard_result
    key = jax.random.key(0)
    clean = np.asarray(jnp.argmax(f(x), -1) == y)
    np.testing.assert_array_equal(np.asarray(res.clean_correct), clean)
    robust_alone = {}
    for stage in E.version_stages("standard", num_steps=N, num_queries=Q, num_targets=T):
        _, broken, _, _ = E.run_stage(x, y, E.stage_key(key, stage.name), jnp.float32(EPS),
                                      jnp.asarray(clean), logits_fn=f, stage=stage, norm="linf",
                                      bounds=(0.0, 1.0))
        robust_alone[stage.name] = clean & ~np.asarray(broken)
    want = np.logical_and.reduce(list(robust_alone.values()))
    np.testing.assert_array_equal(np.asarray(res.robust), want)
    for name, r in robust_alone.items():
        assert np.asarray(res.robust).sum() <= r.sum(), name
    # cumulative per-attack flags are nonincreasing and end at the final verdict
    seq = [np.asarray(v) for v in res.per_attack_robust.values()]
    assert list(res.per_attack_robust) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    for a, b in zip(seq[:-1], seq[1:], strict=True):
        assert np.all(b <= a)
    np.testing.assert_array_equal(seq[-1], np.asarray(res.robust))
    # the attacks do break something at this radius, and not everything
    assert 0 < np.asarray(res.robust).sum() < clean.sum()


def test_broken_points_have_valid_adversarial_examples(standard_result):
    f, x, y = data16()
    res = standard_result
    broken = np.asarray(res.clean_correct & ~res.robust)
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.all(pred[broken] != np.asarray(y)[broken])
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= EPS + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0


def test_stage_mask_freezes_points():
    f, x, y = data16()
    active = jnp.arange(16) < 8
    stage = E.StageConfig("apgd-t", num_steps=N, num_targets=T)
    xa, broken, ng, nf = E.run_stage(x, y, jax.random.key(1), jnp.float32(0.2), active,
                                     logits_fn=f, stage=stage, norm="linf", bounds=(0.0, 1.0))
    a = np.asarray(active)
    assert not np.any(np.asarray(broken)[~a])
    assert np.all(np.asarray(ng)[~a] == 0) and np.all(np.asarray(nf)[~a] == 0)
    np.testing.assert_array_equal(np.asarray(xa)[~a], np.asarray(x)[~a])
    assert np.asarray(broken)[a].any()


def test_counts_closed_form(standard_result):
    res = standard_result
    rob = np.asarray(res.robust)
    assert rob.any()
    # APGD-CE: N + 1; APGD-T: T (N + 1); FAB-T: T N gradients
    assert np.all(np.asarray(res.num_grad)[rob] == (N + 1) + T * (N + 1) + T * N)
    # clean pass; APGD-CE check; APGD-T targets + check; FAB-T targets + T N + check;
    # Square start + Q queries + check
    assert np.all(np.asarray(res.num_forward)[rob] == 1 + 1 + 2 + (T * N + 2) + (Q + 2))
    wrong = ~np.asarray(res.clean_correct)
    assert np.all(np.asarray(res.num_grad)[wrong] == 0)
    assert np.all(np.asarray(res.num_forward)[wrong] == 1)
    broken = np.asarray(res.clean_correct) & ~rob
    assert np.all(np.asarray(res.num_grad)[broken] >= 1)


def test_padding_mask_and_eps_zero():
    f, x, y = data16()
    mask = jnp.arange(16) < 11
    res = E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=0.0, mask=mask, check_flags=False,
                              **{k: v for k, v in SMALL.items() if k != "large_eps_steps"})
    clean = np.asarray(jnp.argmax(f(x), -1) == y) & np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(res.robust), clean)
    np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
    pad = ~np.asarray(mask)
    assert not np.asarray(res.robust)[pad].any()
    assert np.all(np.asarray(res.num_grad)[pad] == 0) and np.all(np.asarray(res.num_forward)[pad] == 0)


def test_fab_t_alone_in_ball(key):
    f, x, y = data16()
    res = fab_t(f, x, y, key, eps=EPS, num_steps=N, num_targets=T)
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= EPS + 1e-6


# ----------------------------------------------------------------------------------------------
# Compaction: stages run on buckets of the points still robust.


def test_bucket_sizes():
    assert [E.bucket_size(n, 500) for n in (1, 63, 64, 250, 251, 499, 500)] == [
        63, 63, 125, 250, 313, 500, 500]
    assert E.bucket_size(1, 500, multiple=8) == 64 and E.bucket_size(300, 500, 8) == 320
    assert E.bucket_size(0, 16) == 2 and E.bucket_size(16, 16, 8) == 16


def test_compaction_moves_every_point_back_to_its_place(monkeypatch):
    """With a stage that treats each point on its own (no random draws), compact and fixed-shape
    runs agree exactly, and the later stages see smaller batches."""
    f, x, y = data16()
    seen = []

    def per_point_stage(x_, y_, key, eps, active, *, logits_fn, stage, **_):
        seen.append((stage.name, x_.shape[0]))
        k = E.ATTACKS.index(stage.name)
        score = jnp.sum(x_.reshape(x_.shape[0], -1), axis=-1) + y_ * 0.37 + k
        broken = active & (jnp.mod(jnp.floor(score * 7.0), 4) == 0)
        x_adv = jnp.where(active[:, None, None, None], x_ + 0.01 * (k + 1), x_)
        n = active.astype(jnp.int32) * (k + 2)
        return x_adv, broken, n, 2 * n

    monkeypatch.setattr(E, "run_stage", per_point_stage)
    kw = {k: v for k, v in SMALL.items() if k != "large_eps_steps"}
    fixed = E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=EPS, check_flags=False,
                                compact=False, **kw)
    assert all(size == 16 for _, size in seen)
    seen.clear()
    compact = E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=EPS, check_flags=False, **kw)
    for a, b in zip(fixed[:2] + fixed[4:6], compact[:2] + compact[4:6], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in fixed.per_attack_robust:
        np.testing.assert_array_equal(np.asarray(fixed.per_attack_robust[name]),
                                      np.asarray(compact.per_attack_robust[name]))
    sizes = [size for _, size in seen]
    assert sizes[-1] < 16 and sizes == sorted(sizes, reverse=True), seen
    assert 0 < int(np.asarray(compact.robust).sum()) < int(np.asarray(compact.clean_correct).sum())


def test_compact_run_is_valid_and_counts_hold():
    f, x, y = data16()
    res = E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=EPS, check_flags=False,
                              **{k: v for k, v in SMALL.items() if k != "large_eps_steps"})
    broken = np.asarray(res.clean_correct & ~res.robust)
    assert broken.any() and np.asarray(res.robust).any()
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.all(pred[broken] != np.asarray(y)[broken])
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= EPS + 1e-6
    rob = np.asarray(res.robust)
    assert np.all(np.asarray(res.num_grad)[rob] == (N + 1) + T * (N + 1) + T * N)
    assert np.all(np.asarray(res.num_forward)[rob] == 1 + 1 + 2 + (T * N + 2) + (Q + 2))


# ----------------------------------------------------------------------------------------------
# Gradient-masking flags.


def test_flags_off_for_normal_model(standard_result):
    flags = standard_result.flags
    assert set(E.FLAGS) <= set(flags)
    assert not any(flags[name] for name in E.FLAGS), flags


def test_flag_probability_outputs():
    f, x, y = data16()

    def probs(v):
        return jax.nn.softmax(f(v), axis=-1)

    flags = E.gradient_masking_flags(probs, x, y, jax.random.key(0), eps=EPS, large_eps_steps=N)
    assert flags["probability_outputs"]
    assert not E.gradient_masking_flags(f, x, y, jax.random.key(0), eps=EPS,
                                        large_eps_steps=N)["probability_outputs"]


def test_flags_zero_gradients_and_black_box_beats_white_box():
    f, x, y = data16()

    def masked(v):
        return f(jax.lax.stop_gradient(v))

    res = E.evaluate_ensemble(masked, x, y, jax.random.key(0), eps=0.2, **(SMALL | {"num_queries": 300}))
    assert res.flags["zero_gradients"] and res.flags["num_zero_gradients"] == 16
    # only Square (values, no gradients) breaks points beyond APGD's random start
    assert res.flags["black_box_beats_white_box"], res.per_attack_robust


def test_flag_randomized_keyed_model_in_rand_version():
    f, x, y = data16()

    def noisy(v, k):
        return f(v) + jax.random.normal(k, (v.shape[0], K))

    res = E.evaluate_ensemble(noisy, x, y, jax.random.key(0), eps=EPS, version="rand",
                              randomized=True, eot_iter=2, num_steps=N, large_eps_steps=N)
    assert res.flags["randomized"]
    assert list(res.per_attack_robust) == ["apgd-ce", "apgd-dlr"]
    # at most two attacks x EOT 2 x (N + 1) iterates; fewer where a noisy forward pass inside
    # APGD already misclassified the point (the final check draws fresh noise)
    ng = np.asarray(res.num_grad)[np.asarray(res.clean_correct)]
    assert np.all((ng >= 2) & (ng <= 2 * 2 * (N + 1))) and np.all(ng % 2 == 0)


def test_flag_randomized_host_randomness():
    f, x, y = data16()
    rng = np.random.default_rng(0)

    def host_random(v):  # a new draw each time the function is traced or called eagerly
        return f(v) + jnp.asarray(rng.normal(size=(v.shape[0], K)), jnp.float32)

    flags = E.gradient_masking_flags(host_random, x, y, jax.random.key(0), eps=EPS,
                                     large_eps_steps=N)
    assert flags["randomized"]


def test_flag_accuracy_not_zero_at_large_eps():
    f, x, y = data16()
    bias = 50.0 * jax.nn.one_hot(int(y[0]), K)

    def stubborn(v):  # input-dependent (non-zero gradients) but the prediction never moves
        return 1e-3 * f(v) + bias

    flags = E.gradient_masking_flags(stubborn, x, y, jax.random.key(0), eps=EPS,
                                     large_eps_steps=N)
    assert flags["accuracy_not_zero_at_large_eps"] and flags["robust_at_large_eps"] >= 1
    assert not flags["zero_gradients"]


# ----------------------------------------------------------------------------------------------
# Streaming and errors.


def test_streaming_over_padded_batches():
    f, x, y = data16()
    x13, y13 = np.asarray(x[:13]), np.asarray(y[:13])
    batches = []
    for start in (0, 8):
        idx = np.arange(start, start + 8)
        m = idx < 13
        idx = np.where(m, idx, 0)
        batches.append({"image": x13[idx], "label": y13[idx], "mask": m})
    kw = {k: v for k, v in SMALL.items() if k != "large_eps_steps"}
    out = E.evaluate_ensemble_batches(f, batches, jax.random.key(5), eps=EPS, check_flags=False,
                                      **kw)
    assert out["n"] == 13
    rob = 0
    for i, b in enumerate(batches):
        r = E.evaluate_ensemble(f, b["image"], b["label"], jax.random.fold_in(jax.random.key(5), i),
                                eps=EPS, mask=b["mask"], check_flags=False, **kw)
        rob += int(np.asarray(r.robust).sum())
    assert out["robust_acc"] == pytest.approx(rob / 13)
    assert out["robust_acc"] <= out["per_attack_robust_acc"]["apgd-ce"] <= out["clean_acc"]


@pytest.mark.parametrize("kwargs, match", [
    ({"version": "fast"}, "version"), ({"norm": "l1"}, "norm"), ({"eps": -0.1}, "eps"),
    ({"eps": np.array([0.1, 0.2])}, "eps"), ({"attacks": ("pgd",)}, "Unknown attacks"),
    ({"attacks": ("apgd-dlr",)}, "not part of version"), ({"randomized": True}, "randomized"),
    ({"mask": np.ones(3, bool)}, "mask"), ({"num_targets": 0}, "num_targets"),
])
def test_bad_arguments(kwargs, match):
    f, x, y = data16()
    with pytest.raises(ValueError, match=match):
        E.evaluate_ensemble(f, x, y, jax.random.key(0), **({"eps": 0.1} | kwargs))


def test_bad_labels():
    f, x, y = data16()
    with pytest.raises(ValueError, match="labels"):
        E.evaluate_ensemble(f, x, jnp.full(16, K, jnp.int32), jax.random.key(0), eps=0.1)


def test_new_eps_does_not_recompile(standard_result):
    f, x, y = data16()
    kw = {k: v for k, v in SMALL.items() if k != "large_eps_steps"}
    E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=0.1, check_flags=False, compact=False,
                        **kw)
    size = E.run_stage._cache_size()
    E.evaluate_ensemble(f, x, y, jax.random.key(1), eps=0.11, check_flags=False, compact=False,
                        **kw)
    assert E.run_stage._cache_size() == size


def test_plus_version_attacks():
    """The two attacks only 'plus' has (APGD-DLR and untargeted FAB, 5 restarts each)."""
    f, x, y = data16()
    kw = {k: v for k, v in SMALL.items() if k != "large_eps_steps"}
    res = E.evaluate_ensemble(f, x, y, jax.random.key(0), eps=EPS, version="plus",
                              attacks=("fab", "apgd-dlr"), check_flags=False, **kw)
    assert list(res.per_attack_robust) == ["apgd-dlr", "fab"]  # the version's order
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= EPS + 1e-6
    broken = np.asarray(res.clean_correct & ~res.robust)
    assert broken.any()
    assert np.all(np.asarray(jnp.argmax(f(res.x_adv), -1))[broken] != np.asarray(y)[broken])
    # a point that survives: 5 restarts of N + 1 gradients (APGD-DLR), 5 x N Jacobians of K
    # gradients each (FAB)
    rob = np.asarray(res.robust)
    assert rob.any() and np.all(np.asarray(res.num_grad)[rob] == 5 * (N + 1) + 5 * N * K)
