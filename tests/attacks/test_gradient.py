"""The gradient attack family: closed forms on a linear model (every norm), containment in the ball
and the box (hypothesis), batched == vmapped, jit == eager, no retrace across eps, PGD >= FGSM,
eps = 0, targeted success on an easy problem, step rules, and argument errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxadv.attacks import gradient as G
from jaxadv.attacks import losses, projections, step_rules

K = 5  # classes of the test models
SHAPE = (4, 4, 4, 1)  # (B, H, W, C)
D = 16


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    # Compilation dominates these tiny problems; XLA's optimisations buy nothing here.
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


def linear_model(seed=0, num_classes=K, dim=D):
    w = jax.random.normal(jax.random.key(seed), (dim, num_classes))
    b = 0.1 * jax.random.normal(jax.random.key(seed + 1), (num_classes,))

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w + b

    return logits_fn, np.asarray(w), np.asarray(b)


def mlp_model(seed=0, num_classes=K, dim=D, hidden=8):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (dim, hidden)) / np.sqrt(dim)
    w2 = jax.random.normal(k2, (hidden, num_classes))

    def logits_fn(x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ w1 * 4.0) @ w2

    return logits_fn


def interior_inputs(seed=1, shape=SHAPE):
    return jax.random.uniform(jax.random.key(seed), shape, minval=0.3, maxval=0.7)


def predicted(logits_fn, x):
    return jnp.argmax(logits_fn(x), axis=-1).astype(jnp.int32)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def analytic_grad(w, b, x, y, loss, targets=None):
    """Input gradient of the attack objective on logits = x W + b, in numpy, (B, D)."""
    xf = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    z = xf @ w + b
    lab = np.asarray(y if targets is None else targets)
    onehot = np.eye(w.shape[1])[lab]
    if loss == "ce":
        g = (_softmax(z) - onehot) @ w.T
    else:  # cw margin max_{j != lab} z_j - z_lab
        j = np.argmax(np.where(onehot > 0, -np.inf, z), axis=-1)
        g = w[:, j].T - w[:, lab].T
    return -g if targets is not None else g


# ---------------------------------------------------------------------------------------------
# Closed forms on a linear model.


@pytest.mark.parametrize("loss", ["ce", "cw"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.2), ("l1", 0.25)])
@pytest.mark.parametrize("targeted", [False, True])
def test_fgm_closed_form_on_linear_model(norm, eps, loss, targeted, key):
    logits_fn, w, b = linear_model()
    x = interior_inputs()
    y = predicted(logits_fn, x)  # correctly classified, so the stepped point is the best iterate
    t = (y + 1) % K if targeted else None
    res = G.fgsm(logits_fn, x, y, key, eps=eps, norm=norm, loss_fn=loss, targets=t)
    g = analytic_grad(w, b, x, y, loss, targets=t)
    xf = np.asarray(x).reshape(x.shape[0], -1)
    if norm == "linf":
        step = eps * np.sign(g)
    elif norm == "l2":
        step = eps * g / np.linalg.norm(g, axis=-1, keepdims=True)
    else:  # all of the l1 budget on the largest |g_i|
        i = np.argmax(np.abs(g), axis=-1)
        step = np.zeros_like(g)
        step[np.arange(len(i)), i] = eps * np.sign(g[np.arange(len(i)), i])
    expected = np.clip(xf + step, 0.0, 1.0).reshape(x.shape)
    np.testing.assert_allclose(res.x_adv, expected, atol=1e-5)
    # The linearised gain is exactly eps times the dual norm of the gradient.
    dual = {"linf": 1, "l2": 2, "l1": np.inf}[norm]
    gain = np.sum(g * (np.asarray(res.x_adv).reshape(len(g), -1) - xf), axis=-1)
    np.testing.assert_allclose(gain, eps * np.linalg.norm(g, ord=dual, axis=-1), rtol=1e-4)


def _l1_box_optimum(g, x, eps, lo=0.0, hi=1.0):
    """max g . delta over ||delta||_1 <= eps and lo <= x + delta <= hi, by scipy's LP solver
    (delta = p - n, 0 <= p <= hi - x, 0 <= n <= x - lo, sum(p + n) <= eps), per example."""
    from scipy.optimize import linprog
    out = []
    for gi, xi in zip(g, x, strict=True):
        d = len(gi)
        res = linprog(np.concatenate([-gi, gi]), A_ub=np.ones((1, 2 * d)), b_ub=[eps],
                      bounds=list(zip(np.zeros(2 * d), np.concatenate([hi - xi, xi - lo]),
                                      strict=True)), method="highs")
        out.append(-res.fun)
    return np.array(out)


@pytest.mark.parametrize("targeted", [False, True])
def test_fgm_l1_fills_the_budget_up_to_the_box(targeted, key):
    """Inputs whose largest-gradient coordinates sit close to the bound they move towards: FGM-l1
    reaches the LP optimum of the linearised loss over the l1 ball and the box (the top-1 step lost
    most of its budget to the clip), and stays inside both."""
    logits_fn, w, b = linear_model()
    x = np.array(interior_inputs(), np.float32).reshape(SHAPE[0], -1)
    y = predicted(logits_fn, jnp.asarray(x.reshape(SHAPE)))
    t = (y + 1) % K if targeted else None
    g = analytic_grad(w, b, x, y, "ce", targets=t)
    order = np.argsort(-np.abs(g), axis=-1)
    for i in range(len(x)):  # the top 3 coordinates get 0.02, 0.05 and 0.1 of room
        for j, r in zip(order[i, :3], (0.02, 0.05, 0.1), strict=True):
            x[i, j] = 1.0 - r if g[i, j] > 0 else r
    eps = 0.25
    xs = jnp.asarray(x.reshape(SHAPE), jnp.float32)
    g = analytic_grad(w, b, x, y, "ce", targets=t)  # at the moved inputs
    res = G.fgsm(logits_fn, xs, y, key, eps=eps, norm="l1", loss_fn="ce", targets=t)
    delta = np.asarray(res.x_adv, np.float64).reshape(len(x), -1) - x
    assert np.all(np.abs(delta).sum(-1) <= eps + 1e-6)
    assert np.all(np.asarray(res.x_adv) >= 0) and np.all(np.asarray(res.x_adv) <= 1)
    gain = np.sum(g * delta, axis=-1)
    optimum = _l1_box_optimum(g, x, eps)
    np.testing.assert_allclose(gain, optimum, rtol=1e-4)
    top1 = np.abs(g[np.arange(len(x)), order[:, 0]]) * 0.02
    assert np.all(gain > 2 * top1)  # the clipped top-1 step's gain, for scale
    # The direction on its own: a (B,) budget, budget 0, and the unconstrained case.
    d = step_rules.l1_box_fill_direction(jnp.asarray(g), jnp.asarray(x), budget=jnp.array(
        [0.0, eps, eps, 10.0]), bounds=(0.0, 1.0))
    d = np.asarray(d)
    assert np.all(d[0] == 0)
    np.testing.assert_allclose(np.sum(g[1:3] * d[1:3] * eps, -1), optimum[1:3], rtol=1e-4)
    room = np.where(g[3] > 0, 1 - x[3], np.where(g[3] < 0, x[3], 0))
    np.testing.assert_allclose(np.abs(d[3]) * 10.0, room, atol=1e-6)  # every coordinate full


def test_fgsm_with_random_start_is_start_plus_projected_step(key):
    logits_fn, w, b = linear_model()
    x = interior_inputs()
    y = predicted(logits_fn, x)
    eps = 0.05
    res = G.fgsm_rs(logits_fn, x, y, key, eps=eps, loss_fn="cw")
    x0 = projections.project_to_feasible(
        x + projections.random_start(key, x, eps, "linf"), x, eps, "linf", (0.0, 1.0))
    g = analytic_grad(w, b, x0, y, "cw").reshape(x.shape)
    expected = np.clip(np.clip(np.asarray(x0) + 1.25 * eps * np.sign(g), x - eps, x + eps), 0, 1)
    np.testing.assert_allclose(res.x_adv, expected, atol=1e-6)


def test_bim_and_mi_fgsm_reach_the_linf_corner_of_a_two_class_linear_model(key):
    # With two classes the CW margin of a linear model has a constant gradient, so every signed
    # step (with or without momentum) goes the same way and T steps of eps/T end at x + eps sign g.
    logits_fn, w, b = linear_model(num_classes=2)
    x = interior_inputs()
    y = predicted(logits_fn, x)
    g = analytic_grad(w, b, x, y, "cw").reshape(x.shape)
    expected = np.clip(np.asarray(x) + 0.1 * np.sign(g), 0, 1)
    for attack in (G.bim, G.mi_fgsm):
        res = attack(logits_fn, x, y, key, eps=0.1, num_steps=4, loss_fn="cw")
        np.testing.assert_allclose(res.x_adv, expected, atol=1e-5, err_msg=attack.__name__)


def test_pgd_objective_maximises_a_linear_objective_over_the_l2_ball(key):
    v = jax.random.normal(jax.random.key(3), SHAPE)
    x = interior_inputs()
    res = G.pgd_objective(lambda xa: jnp.sum((xa * v).reshape(len(xa), -1), -1), x, key,
                          eps=0.2, step_size=0.1, num_steps=5, norm="l2", random_start=False)
    vf = np.asarray(v).reshape(len(v), -1)
    expected = np.asarray(x) + 0.2 * (vf / np.linalg.norm(vf, axis=-1, keepdims=True)).reshape(
        x.shape)
    np.testing.assert_allclose(res.x_adv, expected, atol=1e-5)
    assert not np.any(res.success)  # no success signal without has_aux


# ---------------------------------------------------------------------------------------------
# Containment in the eps-ball and the box, for every attack and norm (hypothesis).

ATTACKS = {
    "fgsm": lambda f, x, y, k, eps, norm, bounds: G.fgsm(f, x, y, k, eps=eps, norm=norm,
                                                         bounds=bounds),
    "fgsm_rs": lambda f, x, y, k, eps, norm, bounds: G.fgsm_rs(f, x, y, k, eps=eps, norm=norm,
                                                               bounds=bounds),
    "bim": lambda f, x, y, k, eps, norm, bounds: G.bim(f, x, y, k, eps=eps, num_steps=3,
                                                       norm=norm, bounds=bounds),
    "pgd": lambda f, x, y, k, eps, norm, bounds: G.pgd(
        f, x, y, k, eps=eps, step_size=eps / 2, num_steps=3, norm=norm, bounds=bounds,
        num_restarts=2, loss_fn="cw"),
    "mi_fgsm": lambda f, x, y, k, eps, norm, bounds: G.mi_fgsm(f, x, y, k, eps=eps, num_steps=3,
                                                               norm=norm, bounds=bounds),
    "trades": lambda f, x, y, k, eps, norm, bounds: G.trades_kl_pgd(
        f, x, y, k, eps=eps, step_size=eps, num_steps=2, norm=norm, bounds=bounds),
    "pgd_adam": lambda f, x, y, k, eps, norm, bounds: G.pgd(
        f, x, y, k, eps=eps, step_size=eps, num_steps=2, norm=norm, bounds=bounds,
        step_rule=optax.adam(1.0), loss_fn="dlr"),
}


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(attack=st.sampled_from(sorted(ATTACKS)), norm=st.sampled_from(["linf", "l2", "l1"]),
       batch=st.integers(1, 3), side=st.integers(2, 4), channels=st.integers(1, 2),
       eps=st.floats(0.0, 2.0), seed=st.integers(0, 2**16),
       bounds=st.sampled_from([(0.0, 1.0), (-0.5, 0.5)]))
@pytest.mark.slow
def test_every_attack_stays_in_the_ball_and_the_box(attack, norm, batch, side, channels, eps,
                                                    seed, bounds):
    shape = (batch, side, side, channels)
    logits_fn = mlp_model(seed % 7, dim=side * side * channels)
    lo, hi = bounds
    x = jax.random.uniform(jax.random.key(seed), shape, minval=lo, maxval=hi)
    y = jax.random.randint(jax.random.key(seed + 1), (batch,), 0, K)
    # jit with eps traced: one compile per example (cheaper than eager dispatch) and it checks
    # that the attacks trace with a traced radius.
    run = jax.jit(ATTACKS[attack], static_argnums=(0, 5, 6))
    res = run(logits_fn, x, y, jax.random.key(seed + 2), jnp.float32(eps), norm, bounds)
    assert res.x_adv.shape == shape and res.success.shape == (batch,)
    assert res.loss.shape == (batch,) and res.success.dtype == jnp.bool_
    assert np.all(np.isfinite(res.x_adv))
    assert float(jnp.min(res.x_adv)) >= lo and float(jnp.max(res.x_adv)) <= hi
    dist = np.asarray(projections.norm_of(res.x_adv - x, norm))
    assert np.all(dist <= eps * (1 + 1e-5) + 1e-6), (dist, eps)
    # Success flags are those of x_adv (deterministic model): "broken" means broken by x_adv.
    pred = predicted(logits_fn, res.x_adv)
    if attack != "trades":
        assert np.all(np.asarray(res.success) <= np.asarray(pred != y))
    else:
        np.testing.assert_array_equal(res.success, pred != y)


# ---------------------------------------------------------------------------------------------
# Transformations: batched == vmapped, jit == eager, no retrace across eps and step size.


def test_batched_equals_vmapped(key):
    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32) % K
    attack = functools.partial(G.pgd, logits_fn, eps=0.1, step_size=0.03, num_steps=4,
                               random_start=False, loss_fn="ce")
    batched = attack(x, y, key)
    single = jax.vmap(lambda xi, yi: jax.tree.map(lambda a: a[0],
                                                  attack(xi[None], yi[None], key)))(x, y)
    np.testing.assert_allclose(batched.x_adv, single.x_adv, atol=1e-6)
    np.testing.assert_array_equal(batched.success, single.success)
    np.testing.assert_allclose(batched.loss, single.loss, rtol=1e-5, atol=1e-6)


def test_jit_equals_eager(key):
    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32) % K
    attack = functools.partial(G.pgd, logits_fn, step_size=0.03, num_steps=4, num_restarts=2,
                               norm="l2")
    eager = attack(x, y, key, eps=0.3)
    jitted = jax.jit(lambda x, y, k, e: attack(x, y, k, eps=e))(x, y, key, 0.3)
    np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
    np.testing.assert_array_equal(eager.success, jitted.success)


def test_no_retrace_across_eps_and_step_size(key):
    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32) % K

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(x, y, key, eps, step):
        return G.pgd(logits_fn, x, y, key, eps=eps, step_size=step, num_steps=3)

    outs = [run(x, y, key, jnp.float32(e), jnp.float32(e / 4)) for e in (0.0, 0.05, 0.1, 0.3)]
    dists = [float(jnp.max(projections.norm_of(o.x_adv - x, "linf"))) for o in outs]
    assert dists[0] == 0.0 and dists[-1] > 0.1  # the eps values really were used
    # Per-example eps (B,) is accepted as well (a new shape, so a new trace of a fresh function).
    per = G.pgd(logits_fn, x, y, key, eps=jnp.array([0.0, 0.1, 0.2, 0.3]), step_size=0.1,
                num_steps=3)
    np.testing.assert_array_less(projections.norm_of(per.x_adv - x, "linf"),
                                 jnp.array([0.0, 0.1, 0.2, 0.3]) + 1e-6)


# ---------------------------------------------------------------------------------------------
# Strength and semantics.


def test_pgd_is_at_least_as_strong_as_fgsm(key):
    # PGD whose first step is the FGSM step keeps its best iterate, so per example it succeeds
    # whenever FGSM does and, at equal success, reaches at least FGSM's loss.
    logits_fn = mlp_model(2)
    x = jax.random.uniform(jax.random.key(5), (8, 4, 4, 1))
    y = jnp.arange(8, dtype=jnp.int32) % K
    f = G.fgsm(logits_fn, x, y, key, eps=0.1)
    p = G.pgd(logits_fn, x, y, key, eps=0.1, step_size=0.1, num_steps=5, random_start=False)
    assert np.all(np.asarray(p.success) >= np.asarray(f.success))
    same = np.asarray(p.success == f.success)
    assert np.all(np.asarray(p.loss)[same] >= np.asarray(f.loss)[same] - 1e-6)
    # And standard PGD (random start, smaller steps) beats FGSM's mean CE on this model.
    p2 = G.pgd(logits_fn, x, y, key, eps=0.1, step_size=0.025, num_steps=10, num_restarts=2)
    assert float(jnp.mean(p2.loss)) >= float(jnp.mean(f.loss))


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_eps_zero_gives_clean_accuracy(norm, key):
    logits_fn = mlp_model(1)
    x = jax.random.uniform(jax.random.key(6), (8, 4, 4, 1))
    y = jnp.arange(8, dtype=jnp.int32) % K  # some right, some wrong
    clean_wrong = np.asarray(predicted(logits_fn, x) != y)
    assert 0 < clean_wrong.sum() < 8
    res = G.pgd(logits_fn, x, y, key, eps=0.0, step_size=0.1, num_steps=3, norm=norm)
    np.testing.assert_allclose(res.x_adv, x, atol=0)
    np.testing.assert_array_equal(res.success, clean_wrong)


def easy_linear_problem():
    """Class k scores block k of the 16 pixels: any class is reachable inside the linf 0.5 ball
    around x = 0.5 (set block k to 1 and the rest to 0)."""
    w = np.full((D, 4), -1.0, np.float32)
    for k in range(4):
        w[4 * k:4 * k + 4, k] = 1.0
    w = jnp.asarray(w)
    return lambda x: x.reshape(x.shape[0], -1) @ w


@pytest.mark.parametrize("loss,targets", [("ce", "random"), ("cw", "least_likely"),
                                          ("dlr", "given"), ("ce", "given")])
def test_targeted_attacks_reach_their_target(loss, targets, key):
    logits_fn = easy_linear_problem()
    x = 0.5 + 0.01 * jax.random.normal(jax.random.key(7), (6, 4, 4, 1))
    y = predicted(logits_fn, x)
    t = (y + 1 + jnp.arange(6, dtype=jnp.int32) % 3) % 4 if targets == "given" else targets
    res = G.pgd(logits_fn, x, y, key, eps=0.5, step_size=0.1, num_steps=10, loss_fn=loss,
                targets=t)
    pred = predicted(logits_fn, res.x_adv)
    if targets == "least_likely":
        t = jnp.argmin(logits_fn(x), axis=-1)
    if targets == "random":  # the drawn targets are never the label
        assert np.all(np.asarray(pred) != np.asarray(y))
    else:
        np.testing.assert_array_equal(pred, t)
    assert np.all(res.success)


def test_targeted_fgsm_and_bim_move_towards_the_target(key):
    logits_fn = easy_linear_problem()
    x = 0.5 + 0.01 * jax.random.normal(jax.random.key(8), (6, 4, 4, 1))
    y = predicted(logits_fn, x)
    t = (y + 2) % 4
    for attack in (G.fgsm, G.bim):
        res = attack(logits_fn, x, y, key, eps=0.5, targets=t)
        np.testing.assert_array_equal(predicted(logits_fn, res.x_adv), t)


def test_restarts_never_hurt(key):
    logits_fn = mlp_model(3)
    x = jax.random.uniform(jax.random.key(9), (8, 4, 4, 1))
    y = jnp.arange(8, dtype=jnp.int32) % K
    kw = dict(eps=0.05, step_size=0.02, num_steps=3, loss_fn="cw")
    one = G.pgd(logits_fn, x, y, jax.random.split(key, 4)[0], **kw)
    four = G.pgd(logits_fn, x, y, key, num_restarts=4, **kw)
    assert np.all(np.asarray(four.success) >= np.asarray(one.success))
    same = np.asarray(four.success == one.success)
    assert np.all(np.asarray(four.loss)[same] >= np.asarray(one.loss)[same] - 1e-6)


def test_trades_kl_attack_maximises_the_kl_to_the_clean_prediction(key):
    logits_fn = mlp_model(4)
    x = jax.random.uniform(jax.random.key(10), (4, 4, 4, 1))
    y = jnp.zeros(4, jnp.int32)
    res = G.trades_kl_pgd(logits_fn, x, y, key, eps=0.1, step_size=0.03, num_steps=5)
    kl = losses.kl_divergence(logits_fn(res.x_adv), logits_fn(x))
    np.testing.assert_allclose(res.loss, kl, rtol=1e-4, atol=1e-7)
    start = projections.project_to_feasible(x + projections.random_start(key, x, 0.1, "linf"),
                                            x, 0.1, "linf", (0.0, 1.0))
    assert np.all(np.asarray(res.loss) >= np.asarray(
        losses.kl_divergence(logits_fn(start), logits_fn(x))) - 1e-7)
    assert float(jnp.min(res.loss)) > 0.0


def test_boopathy_eval_preset_is_pgd_without_start_and_step_0_01(key):
    logits_fn = mlp_model(5)
    x = jax.random.uniform(jax.random.key(11), (4, 4, 4, 1))
    y = jnp.arange(4, dtype=jnp.int32)
    a = G.pgd_boopathy_eval(logits_fn, x, y, key, eps=0.1, num_steps=5)
    b = G.pgd(logits_fn, x, y, jax.random.key(123), eps=0.1, step_size=0.01, num_steps=5,
              random_start=False)
    np.testing.assert_allclose(a.x_adv, b.x_adv, atol=0)


# ---------------------------------------------------------------------------------------------
# Step rules.


def test_sparse_l1_direction_has_unit_l1_norm_on_the_top_coordinates():
    g = jax.random.normal(jax.random.key(12), (3, 10, 10, 1))
    d = step_rules.sparse_l1_direction(g, sparsity=0.95)
    flat, gf = np.asarray(d).reshape(3, -1), np.asarray(g).reshape(3, -1)
    np.testing.assert_allclose(np.abs(flat).sum(-1), 1.0, rtol=1e-6)
    for row, grow in zip(flat, gf, strict=True):
        top = np.argsort(-np.abs(grow))[:5]
        assert set(np.flatnonzero(row)) == set(top)
        np.testing.assert_array_equal(np.sign(row[top]), np.sign(grow[top]))
    # Coordinates stuck on a bound (gradient pointing out of the box) are skipped.
    x = jnp.ones_like(g)
    d = step_rules.sparse_l1_direction(jnp.abs(g), x, sparsity=0.95, bounds=(0.0, 1.0))
    assert float(jnp.sum(jnp.abs(d))) == 0.0


def test_momentum_rule_accumulates_l1_normalised_gradients():
    rule = step_rules.get_step_rule("momentum", "l2", momentum_decay=0.5)
    g1 = jnp.array([[1.0, -3.0]])
    g2 = jnp.array([[-2.0, 0.0]])
    state = rule.init(jnp.zeros((1, 2)))
    _, state = rule.update(g1, state, jnp.zeros((1, 2)))
    d, state = rule.update(g2, state, jnp.zeros((1, 2)))
    m = 0.5 * np.array([0.25, -0.75]) + np.array([-1.0, 0.0])
    np.testing.assert_allclose(state[0], m[None], rtol=1e-6)
    np.testing.assert_allclose(d, (m / np.linalg.norm(m))[None], rtol=1e-6)


def test_optax_step_rule_ascends(key):
    logits_fn = mlp_model(6)
    x = jax.random.uniform(jax.random.key(13), (4, 4, 4, 1))
    y = jnp.arange(4, dtype=jnp.int32)
    start = G.pgd(logits_fn, x, y, key, eps=0.2, step_size=0.0, num_steps=0)
    res = G.pgd(logits_fn, x, y, key, eps=0.2, step_size=0.02, num_steps=5,
                step_rule=optax.adam(1.0))
    assert np.all(np.asarray(res.loss) >= np.asarray(start.loss))
    assert float(jnp.mean(res.loss)) > float(jnp.mean(start.loss))


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_ball_start_sits_near_the_surface_and_radial_start_spreads_radii_evenly(norm, key):
    """'ball' is uniform in volume, so in d = 64 dimensions P(radius < 0.9 eps) = 0.9^64 ~ 1e-3;
    'radial' draws the radius uniformly from [0, eps] (mean eps/2, a quarter below eps/4)."""
    eps, n = 0.5, 4000
    x = jnp.zeros((n, 8, 8, 1))
    ball = projections.norm_of(projections.random_start(key, x, eps, norm), norm) / eps
    radial = projections.norm_of(
        projections.random_start(key, x, eps, norm, distribution="radial"), norm) / eps
    assert float(jnp.max(ball)) <= 1 + 1e-5 and float(jnp.max(radial)) <= 1 + 1e-5
    assert float(jnp.mean(ball < 0.9)) < 0.01
    assert abs(float(jnp.mean(radial)) - 0.5) < 0.02
    assert abs(float(jnp.mean(radial < 0.25)) - 0.25) < 0.03
    with pytest.raises(ValueError, match="Unknown start distribution"):
        projections.random_start(key, x, eps, norm, distribution="sphere")


@pytest.mark.parametrize("attack", ["pgd", "masked_pgd"])
def test_radial_random_start_reaches_the_attack(attack, key):
    """With no steps the attack returns its start: 'radial' starts lie at spread-out radii inside
    the ball (restarts allowed), 'ball' starts at the surface (l2, d = 64 per example)."""
    from jaxadv.attacks import masked

    n = 400
    x = jnp.full((n, 8, 8, 1), 0.5)
    y = jnp.zeros((n,), jnp.int32)
    eps = 0.3

    def radii(start, restarts=1):
        kw = dict(eps=eps, step_size=0.1, num_steps=0, norm="l2", random_start=start,
                  num_restarts=restarts)
        if attack == "pgd":
            out = G.pgd(linear_model(dim=64)[0], x, y, key, **kw)
        else:
            out = masked.masked_pgd(linear_model(dim=64)[0], x, y, key, mask=1.0, **kw)
        return np.asarray(projections.norm_of(out.x_adv - x, "l2")) / eps

    r = radii("radial")
    assert r.max() <= 1 + 1e-5 and 0.4 < r.mean() < 0.6 and (r < 0.5).mean() > 0.3
    assert radii(True).min() > 0.85
    assert radii("radial", restarts=2).max() <= 1 + 1e-5


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_given_start_is_projected_and_is_the_only_randomness(norm, key):
    """x_init replaces the random start: the random start passed as x_init reproduces the seeded
    attack exactly (so a paired comparison with another library's start is the same attack), and
    a start outside the ball or the box is projected first (no steps: the start is returned)."""
    logits_fn = mlp_model()
    x = interior_inputs()
    y = predicted(logits_fn, x)
    eps = 0.2
    kw = dict(eps=eps, step_size=0.05, norm=norm)
    start = projections.project_to_feasible(
        x + projections.random_start(key, x, eps, norm), x, eps, norm, (0.0, 1.0))
    seeded = G.pgd(logits_fn, x, y, key, num_steps=5, **kw)
    given_start = G.pgd(logits_fn, x, y, jax.random.key(123), num_steps=5, x_init=start, **kw)
    np.testing.assert_array_equal(np.asarray(seeded.x_adv), np.asarray(given_start.x_adv))
    far = x + 3.0 * eps * jnp.sign(jax.random.normal(key, x.shape))  # outside ball and box
    out = G.pgd(logits_fn, x, y, key, num_steps=0, x_init=far, **kw).x_adv
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(projections.project_to_feasible(far, x, eps, norm,
                                                                     (0.0, 1.0))), atol=1e-6)
    assert float(jnp.max(projections.norm_of(out - x, norm))) <= eps * (1 + 1e-5)
    with pytest.raises(ValueError, match="x_init is one start per example"):
        G.pgd(logits_fn, x, y, key, num_steps=1, num_restarts=2, x_init=start, **kw)
    with pytest.raises(ValueError, match="x_init must have the shape of x"):
        G.pgd(logits_fn, x, y, key, num_steps=1, x_init=start[:2], **kw)
    with pytest.raises(ValueError, match="x_init contains NaN"):
        G.pgd(logits_fn, x, y, key, num_steps=1, x_init=start.at[0, 0, 0, 0].set(jnp.nan), **kw)


# Bad arguments raise ValueErrors that name the problem.


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps must be finite and >= 0"),
    ({"eps": float("nan")}, "eps must be finite"),
    ({"step_size": -1.0}, "step_size"),
    ({"norm": "l3"}, "Unknown norm 'l3'"),
    ({"loss_fn": "hinge"}, "Unknown attack loss 'hinge'"),
    ({"step_rule": "newton"}, "Unknown step rule 'newton'"),
    ({"num_steps": 2.5}, "num_steps must be an int"),
    ({"num_restarts": 0}, "num_restarts must be an int >= 1"),
    ({"num_restarts": 2, "random_start": False}, "without random_start"),
    ({"random_start": "uniform"}, "random_start must be True, False or one of"),
    ({"bounds": (1.0, 0.0)}, "bounds must be"),
    ({"targets": jnp.array([0, 1, 2, 9])}, r"targets must lie in \[0, 5\)"),
    ({"targets": jnp.array([0, 1])}, "targets must have shape"),
    ({"targets": "most_likely"}, "Unknown target choice"),
    ({"loss_fn": "kl", "targets": "random"}, "untargeted"),
    ({"l1_sparsity": 1.5, "norm": "l1"}, "l1_sparsity"),
])
def test_bad_arguments_raise(kwargs, match, key):
    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32)
    kw = dict(eps=0.1, step_size=0.01, num_steps=1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        G.pgd(logits_fn, x, y, key, **kw)


@pytest.mark.parametrize("x_shape,y,match", [
    ((4, 4, 4, 1), [0, 1, 2, 7], r"labels must lie in \[0, 5\)"),
    ((4, 4, 4, 1), [0, 1, 2, -1], r"labels must lie in \[0, 5\)"),
    ((4, 4, 4, 1), [0, 1, 2], "labels must have shape"),
    ((4,), [0, 1, 2, 3], "x must be a batch"),
])
def test_bad_inputs_raise(x_shape, y, match, key):
    logits_fn = mlp_model()
    x = jnp.full(x_shape, 0.5)
    with pytest.raises(ValueError, match=match):
        G.fgsm(logits_fn, x, jnp.asarray(y, jnp.int32), key, eps=0.1)


def test_float_labels_and_wrong_logits_shape_raise(key):
    x = interior_inputs()
    with pytest.raises(ValueError, match="labels must be integers"):
        G.fgsm(mlp_model(), x, jnp.zeros(4), key, eps=0.1)
    with pytest.raises(ValueError, match="logits_fn must map"):
        G.fgsm(lambda x: x.reshape(-1), x, jnp.zeros(4, jnp.int32), key, eps=0.1)


def test_unrolled_loop_equals_fori_loop():
    """Unrolled steps (``unroll=True``) give the fori_loop's results (a linear model:
    no gradient coordinate near zero, so no sign flips from rounding)."""
    w = jax.random.normal(jax.random.key(0), (48, 5))
    fn = lambda z: z.reshape(z.shape[0], -1) @ w
    x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 3))
    y = jnp.argmax(fn(x), -1)
    kw = dict(eps=0.05, step_size=0.01, num_steps=7, random_start=True)
    rolled = G.pgd(fn, x, y, jax.random.key(2), unroll=False, **kw)
    unrolled = G.pgd(fn, x, y, jax.random.key(2), unroll=True, **kw)
    np.testing.assert_allclose(unrolled.x_adv, rolled.x_adv, atol=1e-6)
    np.testing.assert_array_equal(unrolled.success, rolled.success)
    assert G.resolve_unroll(None, 7) == (jax.default_backend() == "cpu"
                                         and 7 <= G.UNROLL_MAX_STEPS)
    assert G.resolve_unroll(True, 1000) and not G.resolve_unroll(False, 1)


def _attack_calls():
    from jaxadv.attacks.apgd import apgd_ce
    from jaxadv.attacks.cw import cw_l2
    from jaxadv.attacks.square import square

    return {
        "fgsm": lambda f, x, y, k, **kw: G.fgsm(f, x, y, k, eps=8.0, **kw),
        "pgd": lambda f, x, y, k, **kw: G.pgd(f, x, y, k, eps=8.0, step_size=2.0, num_steps=1,
                                              **kw),
        "apgd_ce": lambda f, x, y, k, **kw: apgd_ce(f, x, y, k, eps=8.0, num_steps=2, **kw),
        "square": lambda f, x, y, k, **kw: square(f, x, y, k, eps=8.0, num_queries=2, **kw),
        "cw_l2": lambda f, x, y, k, **kw: cw_l2(f, x, y, k, num_binary_steps=1, num_steps=1,
                                                **kw),
    }


@pytest.mark.parametrize("name", sorted(_attack_calls()))
def test_inputs_outside_the_box_are_refused(name, key):
    """x in [0, 255] with the default bounds (0, 1): every iterate is clipped to the box, which
    moves x itself, so the 'adversarial example' would leave B(x, eps) by about 250."""
    logits_fn = mlp_model()
    x = interior_inputs() * 255.0
    y = jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"x must lie in bounds \(0, 1\); got values in "
                                         r"\[76.*bounds=\(0, 255\)"):
        _attack_calls()[name](logits_fn, x, y, key)
    # With the data's range as bounds the same call runs.
    _attack_calls()[name](logits_fn, x, y, key, bounds=(0.0, 255.0))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "cw_l2"])
def test_targets_equal_to_the_labels_are_refused(name, key):
    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"targets equal the labels for examples \[0, 1, 2, 3\]"):
        _attack_calls()[name](logits_fn, x, y, key, targets=y)



def test_per_example_eps_of_the_wrong_length_is_refused(key):
    from jaxadv.attacks.apgd import apgd_ce

    logits_fn = mlp_model()
    x = interior_inputs()
    y = jnp.arange(4, dtype=jnp.int32)
    with pytest.raises(ValueError, match=r"eps must be a number or one radius per example, shape "
                                         r"\(4,\); got shape \(3,\)"):
        apgd_ce(logits_fn, x, y, key, eps=jnp.full((3,), 0.1), num_steps=2)
    with pytest.raises(ValueError, match="eps must be a number or one radius per example"):
        G.pgd(logits_fn, x, y, key, eps=jnp.full((3,), 0.1), step_size=0.01, num_steps=1)


def test_fgsm_returns_the_stepped_point_even_where_the_step_lowers_the_loss(key):
    """One pixel at 0.5, label 0, logits (50 (x - 0.4)^2, 0): the CE gradient points down, and the
    sign step of 0.3 lands at 0.2, where the loss is lower than at the start. FGSM is defined as
    that stepped point (it used to return x, delta = 0, by best-so-far); PGD keeps best-so-far,
    and FGSM with random start lets its start compete."""
    def f(v):
        u = 50.0 * (v.reshape(v.shape[0], -1)[:, :1] - 0.4) ** 2
        return jnp.concatenate([u, jnp.zeros_like(u)], -1)

    x = jnp.full((1, 1, 1, 1), 0.5)
    y = jnp.zeros(1, jnp.int32)
    res = G.fgsm(f, x, y, key, eps=0.3)
    np.testing.assert_allclose(res.x_adv, 0.2, atol=1e-6)
    ce = lambda z: float(losses.cross_entropy(f(z), y)[0])  # noqa: E731
    assert ce(res.x_adv) < ce(x)
    np.testing.assert_allclose(res.loss, ce(res.x_adv), rtol=1e-5)
    kept = G.pgd(f, x, y, key, eps=0.3, step_size=0.3, num_steps=1, random_start=False)
    np.testing.assert_allclose(kept.x_adv, 0.5)  # best-so-far: the start had the higher loss
