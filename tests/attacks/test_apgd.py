"""APGD (Croce & Hein 2020): the checkpoint schedule against its closed form, containment in the
ball and the box (hypothesis), strength against a 100-step PGD on a trained model, masks, cost
counts, eps = 0, targeted success, EOT on a randomised model, no retrace across eps, and errors."""

import functools
import math
from fractions import Fraction

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxadv.attacks import apgd as A
from jaxadv.attacks import losses, projections

K = 10
D = 64  # 8 x 8 x 1 inputs


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def synthetic(seed: int, n: int):
    """A separable 10-class problem on 8x8x1 images: noisy copies of fixed prototypes."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(123).uniform(0.2, 0.8, (K, D)).astype(np.float32)
    y = rng.integers(0, K, n)
    x = np.clip(protos[y] + 0.12 * rng.standard_normal((n, D)), 0.0, 1.0).astype(np.float32)
    return x.reshape(n, 8, 8, 1), y.astype(np.int32)


def mlp_apply(p, x):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])
    h = jax.nn.relu(h @ p["w2"] + p["b2"])
    return h @ p["w3"] + p["b3"]


@functools.cache
def trained_mlp():
    """(logits_fn, x_test (64, 8, 8, 1), y_test (64,)): a 64-64 ReLU MLP after 400 steps of
    FGSM-with-random-start adversarial training at eps 0.1 (Wong et al. 2020; a few seconds).

    Adversarially trained, because robust models are what APGD is for: on a plainly trained tiny
    MLP, PGD with a tuned fixed step matches APGD (within 1% of runs either way)."""
    x, y = synthetic(0, 2000)
    ks = jax.random.split(jax.random.key(0), 3)
    p = {"w1": jax.random.normal(ks[0], (D, 64)) / 8, "b1": jnp.zeros(64),
         "w2": jax.random.normal(ks[1], (64, 64)) / 8, "b2": jnp.zeros(64),
         "w3": jax.random.normal(ks[2], (64, K)) / 8, "b3": jnp.zeros(K)}
    tx = optax.adam(3e-3)
    state = tx.init(p)

    def ce(p, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_apply(p, xb), yb).mean()

    @jax.jit
    def step(p, state, xb, yb, k):
        e = 0.1
        xa = jnp.clip(xb + jax.random.uniform(k, xb.shape, minval=-e, maxval=e), 0.0, 1.0)
        g = jax.grad(lambda v: ce(p, v, yb))(xa)
        xa = jnp.clip(jnp.clip(xa + 1.25 * e * jnp.sign(g), xb - e, xb + e), 0.0, 1.0)
        u, state = tx.update(jax.grad(ce)(p, xa, yb), state)
        return optax.apply_updates(p, u), state

    for i in range(400):
        idx = np.random.default_rng(i).integers(0, 2000, 128)
        p, state = step(p, state, x[idx], y[idx], jax.random.key(i))
    p = jax.tree.map(np.asarray, p)

    def logits_fn(v):
        return mlp_apply(p, v)

    xt, yt = synthetic(1, 64)
    logits_fn.params = p
    return logits_fn, jnp.asarray(xt), jnp.asarray(yt)


def random_mlp(seed=0, num_classes=K, dim=16):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (dim, 12)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (12, num_classes))

    def logits_fn(v):
        return jnp.tanh(v.reshape(v.shape[0], -1) @ w1 * 3.0) @ w2

    return logits_fn


RANDOM_MLP = random_mlp()


# ----------------------------------------------------------------------------------------------
# Step-size schedule.


def closed_form_checkpoints(n: int) -> list[int]:
    """w_j = ceil(p_j N) with p_j = sum_{i=1}^{j} max(0.22 - 0.03 (i - 1), 0.06) (exact)."""
    out, p, j = [], Fraction(0), 1
    while True:
        p += max(Fraction(22, 100) - Fraction(3, 100) * (j - 1), Fraction(6, 100))
        w = math.ceil(p * n)
        if w > n:
            return out
        if not out or w > out[-1]:
            out.append(w)
        j += 1


def test_checkpoints_published_values():
    assert A.apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert A.apgd_checkpoints(1000) == (220, 410, 570, 700, 800, 870, 930, 990)


@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 13, 20, 37, 50, 99, 100, 101, 250, 1000, 1234])
def test_checkpoints_closed_form(n):
    got = A.apgd_checkpoints(n)
    assert list(got) == closed_form_checkpoints(n)
    assert all(0 < w <= n for w in got) and list(got) == sorted(set(got))


def test_schedule_tables_match_checkpoints():
    is_ckpt, length = A._schedule_tables(100)
    assert list(np.flatnonzero(is_ckpt)) == list(A.apgd_checkpoints(100))
    assert list(length[is_ckpt]) == [22, 19, 16, 13, 10, 7, 6, 6]


# ----------------------------------------------------------------------------------------------
# Threat model.


@functools.cache
def _jitted(kind: str, norm: str):
    f = RANDOM_MLP

    def attack(x, y, key, eps):
        if kind == "ce":
            return A.apgd_ce(f, x, y, key, eps=eps, norm=norm, num_steps=6)
        if kind == "dlr":
            return A.apgd_dlr(f, x, y, key, eps=eps, norm=norm, num_steps=6, num_restarts=2)
        if kind == "t":
            return A.apgd_t(f, x, y, key, eps=eps, norm=norm, num_steps=4, num_targets=3)
        return A.apgd(f, x, y, key, eps=eps, norm=norm, num_steps=5, loss="ce",
                      targets=(y + 1) % K)

    return jax.jit(attack)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["ce", "dlr", "t", "targeted"]), norm=st.sampled_from(["linf", "l2"]),
       batch=st.sampled_from([1, 3]), eps=st.floats(0.0, 1.5), seed=st.integers(0, 2**16))
def test_containment_ball_and_box(kind, norm, batch, eps, seed, strict_promotion):
    rng = np.random.default_rng(seed)
    # Pixels at the box faces as well as inside, so the box clip matters.
    x = rng.choice([0.0, 1.0, 0.5], size=(batch, 4, 4, 1)) * rng.uniform(0.0, 1.0, (batch, 4, 4, 1))
    x = jnp.asarray(np.where(rng.uniform(size=x.shape) < 0.3, 1.0, x), jnp.float32)
    y = jnp.asarray(rng.integers(0, K, batch), jnp.int32)
    res = _jitted(kind, norm)(x, y, jax.random.key(seed), jnp.float32(eps))
    dist = np.asarray(projections.norm_of(res.x_adv - x, norm))
    assert np.all(dist <= eps * (1 + 1e-5) + 1e-6), (dist, eps)
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    assert res.success.shape == (batch,) and res.loss.shape == (batch,)
    # success is what it claims: misclassified (or the target reached) at x_adv
    pred = np.asarray(jnp.argmax(RANDOM_MLP(res.x_adv), -1))
    want = (np.asarray(y) + 1) % K if kind == "targeted" else None
    ok = pred == want if want is not None else pred != np.asarray(y)
    assert np.all(np.asarray(res.success) == ok)


def test_eps_zero_gives_clean_accuracy(key):
    f, x, y = trained_mlp()
    for norm in ("linf", "l2"):
        res = A.apgd_ce(f, x, y, key, eps=0.0, norm=norm, num_steps=5)
        np.testing.assert_array_equal(np.asarray(res.x_adv), np.asarray(x))
        clean_wrong = np.asarray(jnp.argmax(f(x), -1)) != np.asarray(y)
        np.testing.assert_array_equal(np.asarray(res.success), clean_wrong)


# ----------------------------------------------------------------------------------------------
# Strength.


def pgd_linf(f, x, y, key, eps, step, num_steps):
    """Plain l-inf PGD on CE with a uniform random start, best iterate kept (reference)."""
    x0 = jnp.clip(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps), 0.0, 1.0)

    def body(_, carry):
        xa, broken = carry
        loss_fn = lambda v: losses.cross_entropy(f(v), y).sum()  # noqa: E731
        g = jax.grad(loss_fn)(xa)
        broken = broken | (jnp.argmax(f(xa), -1) != y)
        xa = jnp.clip(jnp.clip(xa + step * jnp.sign(g), x - eps, x + eps), 0.0, 1.0)
        return xa, broken

    xa, broken = jax.lax.fori_loop(0, num_steps, body, (x0, jnp.zeros(y.shape, bool)))
    return broken | (jnp.argmax(f(xa), -1) != y)


def test_apgd_at_least_as_strong_as_pgd100():
    """Over 4 radii x 8 seeds, APGD-CE (100 iterations) leaves no more points robust than
    100-step PGD with any of three usual step sizes (eps/4, eps/10, 2.5 eps/100)."""
    f, x, y = trained_mlp()
    clean_ok = np.asarray(jnp.argmax(f(x), -1)) == np.asarray(y)
    assert clean_ok.mean() > 0.95
    keys = jax.random.split(jax.random.key(7), 8)
    run_apgd = jax.jit(jax.vmap(lambda k, e: A.apgd_ce(f, x, y, k, eps=e).success, (0, None)))
    run_pgd = jax.jit(jax.vmap(lambda k, e, s: pgd_linf(f, x, y, k, e, s, 100), (0, None, None)))
    rob_apgd, rob_pgd = 0, np.zeros(3, int)
    for eps in (0.1, 0.125, 0.15, 0.175):
        rob_apgd += int(np.sum(clean_ok & ~np.asarray(run_apgd(keys, eps))))
        for i, step in enumerate((eps / 4, eps / 10, 2.5 * eps / 100)):
            rob_pgd[i] += int(np.sum(clean_ok & ~np.asarray(run_pgd(keys, eps, step))))
    assert np.all(rob_apgd <= rob_pgd), (rob_apgd, rob_pgd)
    # the attack does real work
    assert rob_apgd < 0.75 * 4 * 8 * clean_ok.sum()


@pytest.mark.peer
def test_same_start_same_outcome_as_autoattack():
    """From the same starting points, jaxadv's APGD-CE and AutoAttack's APGD (on a PyTorch twin
    of the MLP) break the same points (the schedules, momentum and restarts agree)."""
    torch = pytest.importorskip("torch")
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    f, x, y = trained_mlp()
    p = f.params

    w = {k: torch.from_numpy(np.array(v)) for k, v in p.items()}

    class Twin(torch.nn.Module):
        def forward(self, v):  # NCHW (B, 1, 8, 8) -> logits; same pixel order as NHWC with C = 1
            h = v.reshape(v.shape[0], -1)
            for i in (1, 2):
                h = torch.relu(h @ w[f"w{i}"] + w[f"b{i}"])
            return h @ w["w3"] + w["b3"]

    eps, n_iter = 0.125, 100
    k_start = jax.random.key(3)
    u = jax.random.uniform(k_start, x.shape, minval=-1.0, maxval=1.0)
    u = u / jnp.max(jnp.abs(u.reshape(u.shape[0], -1)), -1)[:, None, None, None]
    x0 = jnp.clip(x + eps * u, 0.0, 1.0)
    res, _ = A._apgd_run(f, x, y, None, jax.random.key(0), eps, jnp.ones(y.shape, bool),
                         norm="linf", num_steps=n_iter, loss="ce", rho=0.75, bounds=(0.0, 1.0),
                         eot_iter=1, randomized=False, success_on_target=False, x_init=x0)
    atk = autopgd.APGDAttack(Twin(), n_iter=n_iter, norm="Linf", n_restarts=1, eps=eps, seed=0,
                             loss="ce", device="cpu")
    to_t = lambda a: torch.from_numpy(np.transpose(np.asarray(a), (0, 3, 1, 2)).copy())  # noqa: E731
    xt = to_t(x)
    atk.init_hyperparam(xt)
    _, acc, _, _ = atk.attack_single_run(xt, torch.from_numpy(np.asarray(y).astype(np.int64)),
                                         x_init=to_t(x0))
    ours = ~np.asarray(res.success)
    theirs = acc.numpy().astype(bool)
    assert 0 < ours.sum() < len(ours)  # a radius where the outcome is not trivial
    assert np.sum(ours != theirs) <= 2, (ours.sum(), theirs.sum(), np.flatnonzero(ours != theirs))


def test_x_init_is_the_start_of_the_run(key):
    """``x_init`` replaces the random start: given the very start the key would draw, the result
    is identical; a start outside the ball is projected, and the outcome no longer depends on the
    key (a deterministic model)."""
    f, x, y = trained_mlp()
    eps = 0.1
    _, k_runs = jax.random.split(key)
    k_start, _ = jax.random.split(jax.random.fold_in(k_runs, 0))
    u = jax.random.uniform(k_start, x.shape, x.dtype, -1.0, 1.0)
    u = u / jnp.max(jnp.abs(u.reshape(u.shape[0], -1)), -1)[:, None, None, None]
    x0 = jnp.clip(x + eps * u, 0.0, 1.0)
    drawn = A.apgd_ce(f, x, y, key, eps=eps, num_steps=20)
    given = A.apgd_ce(f, x, y, key, eps=eps, num_steps=20, x_init=x0)
    chex.assert_trees_all_equal(drawn, given)
    far = x + 3 * eps * u  # outside the ball and the box
    a = A.apgd_ce(f, x, y, jax.random.key(1), eps=eps, num_steps=5, x_init=far)
    b = A.apgd_ce(f, x, y, jax.random.key(2), eps=eps, num_steps=5, x_init=far)
    chex.assert_trees_all_equal(a, b)
    assert float(jnp.max(jnp.abs(a.x_adv - x))) <= eps + 1e-6
    assert float(jnp.min(a.x_adv)) >= 0.0 and float(jnp.max(a.x_adv)) <= 1.0


def test_x_init_bad_input(key):
    f, x, y = trained_mlp()
    with pytest.raises(ValueError, match="num_restarts=2"):
        A.apgd_ce(f, x, y, key, eps=0.1, num_restarts=2, x_init=x)
    with pytest.raises(ValueError, match="shape of x"):
        A.apgd_ce(f, x, y, key, eps=0.1, x_init=x[:3])
    with pytest.raises(ValueError, match="NaN"):
        A.apgd_ce(f, x, y, key, eps=0.1, x_init=np.full(x.shape, np.nan, np.float32))


def test_apgd_t_breaks_no_fewer_than_its_first_target(key):
    f, x, y = trained_mlp()
    t1 = A.top_k_other_classes(f(x), y, 1)[0]
    one = A.apgd(f, x, y, key, eps=0.1, loss="dlr", targets=t1, num_steps=30)
    # success of the targeted run means reaching t1, which is a misclassification
    many = A.apgd_t(f, x, y, key, eps=0.1, num_steps=30, num_targets=4)
    assert np.sum(np.asarray(many.success)) >= np.sum(np.asarray(one.success)) - 1
    assert np.sum(np.asarray(many.success)) > 0


def test_targeted_reaches_target(key):
    f, x, y = trained_mlp()
    t = (y + 3) % K
    res = A.apgd(f, x, y, key, eps=0.4, targets=t, loss="ce", num_steps=50)
    pred = np.asarray(jnp.argmax(f(res.x_adv), -1))
    assert np.mean(np.asarray(res.success)) > 0.9
    np.testing.assert_array_equal(pred[np.asarray(res.success)], np.asarray(t)[np.asarray(res.success)])


# ----------------------------------------------------------------------------------------------
# Masks and per-point cost.


def test_masks_freeze_points_and_counts(key):
    f, x, y = trained_mlp()
    x, y = x[:16], y[:16]
    active = jnp.arange(16) % 2 == 0
    n_steps, n_restarts = 7, 2
    res, num_grad = A.apgd_runs(f, x, y, key, eps=0.1, active=active, num_steps=n_steps,
                                num_restarts=n_restarts)
    a = np.asarray(active)
    np.testing.assert_array_equal(np.asarray(res.x_adv)[~a], np.asarray(x)[~a])
    assert not np.any(np.asarray(res.success)[~a])
    assert np.all(np.asarray(num_grad)[~a] == 0)
    unbroken = a & ~np.asarray(res.success)
    assert np.all(np.asarray(num_grad)[unbroken] == (n_steps + 1) * n_restarts)
    broken = a & np.asarray(res.success)
    assert np.all((np.asarray(num_grad)[broken] >= 1)
                  & (np.asarray(num_grad)[broken] <= (n_steps + 1) * n_restarts))
    # the active points' outcome does not depend on the frozen ones
    full, _ = A.apgd_runs(f, x, y, key, eps=0.1, active=jnp.ones(16, bool), num_steps=n_steps,
                          num_restarts=n_restarts)
    np.testing.assert_array_equal(np.asarray(full.x_adv)[a], np.asarray(res.x_adv)[a])


def test_eot_on_randomised_model(key):
    f, x, y = trained_mlp()
    x, y = x[:8], y[:8]

    def noisy(v, k):
        return f(v) + 0.5 * jax.random.normal(k, (v.shape[0], K))

    res = A.apgd_ce(noisy, x, y, key, eps=0.1, num_steps=5, randomized=True, eot_iter=3)
    assert float(jnp.max(jnp.abs(res.x_adv - x))) <= 0.1 + 1e-6
    _, num_grad = A.apgd_runs(noisy, x, y, key, eps=0.0, active=jnp.ones(8, bool), num_steps=5,
                              eot_iter=3, randomized=True)
    # robust points pay (N + 1) * eot_iter gradient evaluations
    assert int(jnp.max(num_grad)) == 6 * 3


def test_no_retrace_across_eps(key):
    f, x, y = trained_mlp()
    x, y = x[:4], y[:4]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def attack(x, y, key, eps):
        return A.apgd_ce(f, x, y, key, eps=eps, num_steps=3).x_adv

    outs = [attack(x, y, key, jnp.float32(e)) for e in (0.0, 0.05, 0.2)]
    assert float(jnp.max(jnp.abs(outs[1] - x))) <= 0.05 + 1e-6
    eager = A.apgd_ce(f, x, y, key, eps=0.05, num_steps=3).x_adv
    np.testing.assert_allclose(np.asarray(eager), np.asarray(outs[1]), atol=1e-6)


def test_per_example_eps(key):
    f, x, y = trained_mlp()
    eps = jnp.linspace(0.0, 0.2, 8)
    res = A.apgd_ce(f, x[:8], y[:8], key, eps=eps, num_steps=4)
    dist = np.asarray(projections.norm_of(res.x_adv - x[:8], "linf"))
    assert np.all(dist <= np.asarray(eps) + 1e-6)


# ----------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("kwargs, match", [
    ({"norm": "l1"}, "norm"), ({"eps": -0.1}, "eps"), ({"loss": "hinge"}, "loss"),
    ({"num_steps": 0}, "num_steps"), ({"num_restarts": 0}, "num_restarts"),
    ({"rho": 0.0}, "rho"), ({"eot_iter": 0}, "eot_iter"),
    ({"targets": jnp.zeros(3, jnp.int32)}, "targets"),
    ({"targets": jnp.full(4, K, jnp.int32)}, "targets"),
])
def test_bad_arguments(kwargs, match, key):
    f, x, y = trained_mlp()
    args = {"eps": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        A.apgd(f, x[:4], y[:4], key, **args)


def test_bad_labels_and_classes(key):
    f, x, y = trained_mlp()
    with pytest.raises(ValueError, match="labels"):
        A.apgd_ce(f, x[:4], jnp.array([0, 1, 2, K], jnp.int32), key, eps=0.1)
    with pytest.raises(ValueError, match="labels"):
        A.apgd_ce(f, x[:4], y[:3], key, eps=0.1)
    with pytest.raises(ValueError, match="num_targets"):
        A.apgd_t(f, x[:4], y[:4], key, eps=0.1, num_targets=K)
    three = lambda v: f(v)[:, :3]  # noqa: E731
    with pytest.raises(ValueError, match="4 classes"):
        A.apgd_t(three, x[:4], y[:4] % 3, key, eps=0.1)
