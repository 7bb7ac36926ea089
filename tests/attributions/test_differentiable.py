"""Every map is differentiable in the inputs and the parameters: one optax step on a tiny model
whose loss includes the map lowers it, and double backprop w.r.t. the input gives finite, non-zero
gradients (all under jit)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxadv.attributions as A
from tests.attributions.helpers import tiny_mlp, tiny_smallgap, uniform_images, x64

KEY = jax.random.key(11)
REFS = uniform_images(3, (6, 6, 1), seed=21)

# name -> (uses CAM-type signature, map(fns, x, t))
INPUT_METHODS = {
    "saliency": lambda f, x, t: A.saliency(f.logits, x, t),
    "gradient_x_input": lambda f, x, t: A.gradient_x_input(f.logits, x, t),
    "integrated_gradients": lambda f, x, t: A.integrated_gradients(f.logits, x, t, num_steps=3,
                                                                   chunk_size=2),
    "smooth_grad": lambda f, x, t: A.smooth_grad(f.logits, x, t, KEY, num_samples=2, stdev=0.1),
    "var_grad": lambda f, x, t: A.var_grad(f.logits, x, t, KEY, num_samples=3, stdev=0.1),
    "expected_gradients": lambda f, x, t: A.expected_gradients(f.logits, x, t, KEY,
                                                               references=REFS, num_samples=2),
    "blur_ig": lambda f, x, t: A.blur_integrated_gradients(f.logits, x, t, max_sigma=1.0,
                                                           num_steps=3),
    "guided_ig": lambda f, x, t: A.guided_integrated_gradients(f.logits, x, t, num_steps=3),
    "occlusion": lambda f, x, t: A.occlusion(f.logits, x, t, window=3, strides=3),
    "asm": lambda f, x, t: A.adversarial_saliency_map(f.logits, x, t, direction="both"),
    "promotion": lambda f, x, t: A.promotion_suppression_maps(f.logits, x, (t + 1) % 5, t)[0],
    "path_ig": lambda f, x, t: A.path_ig(f.logits, x, jnp.clip(x + 0.1, 0, 1), t, num_steps=2),
    "smooth_grad_squared": lambda f, x, t: A.smooth_grad_squared(f.logits, x, t, KEY,
                                                                 num_samples=2, stdev=0.1),
    "gradient_shap": lambda f, x, t: A.gradient_shap(f.logits, x, t, KEY, references=REFS,
                                                     num_samples=2),
    "noise_tunnel_ig": lambda f, x, t: A.noise_tunnel(
        lambda z: A.integrated_gradients(f.logits, z, t, num_steps=2), x, KEY, num_samples=2,
        stdev=0.1),
    "path_integrated_gradients": lambda f, x, t: A.path_integrated_gradients(
        lambda z: jnp.take_along_axis(f.logits(z), t[:, None], -1)[:, 0], jnp.zeros_like(x), x,
        num_steps=3),
}
CAM_METHODS = {
    "cam": A.cam,
    "grad_cam": A.grad_cam,
    "grad_cam_plus_plus": A.grad_cam_plus_plus,
    "cam_plus_plus": A.cam_plus_plus,
}


class _Fns:
    def __init__(self, model, variables):
        self.logits = lambda x: model.apply(variables, x)
        self.features = lambda x: model.apply(variables, x, method="features")
        self.head = lambda a: model.apply(variables, a, method="head")


def _check(model, variables, x, t, map_fn, *, piecewise_linear=False):
    def loss(params):  # a training loss that includes the map (as Int / IG-Norm training does)
        fns = _Fns(model, {"params": params})
        ce = optax.softmax_cross_entropy_with_integer_labels(fns.logits(x), t).mean()
        return 1e-3 * ce + jnp.mean(map_fn(fns, x, t) ** 2)

    params = variables["params"]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1e-3))
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.any(g != 0) for g in leaves), "some parameter gets no gradient"
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jax.jit(loss)(optax.apply_updates(params, updates))) < float(value)

    fns = _Fns(model, variables)
    gx = jax.jit(jax.grad(lambda z: jnp.sum(map_fn(fns, z, t) ** 2)))(x)
    assert gx.shape == x.shape and np.all(np.isfinite(gx))
    # a ReLU network's guided gradient is piecewise constant in x: zero input gradient is exact
    assert piecewise_linear or np.any(np.asarray(gx) != 0)


@pytest.mark.parametrize("name", sorted(INPUT_METHODS))
def test_one_training_step_through_input_space_maps(name):
    model, v, _ = tiny_mlp("softplus")
    x = uniform_images(2, (6, 6, 1))
    _check(model, v, x, jnp.array([1, 3]), INPUT_METHODS[name])


def test_one_training_step_through_guided_backprop():
    model, v, _ = tiny_mlp("relu")
    x = uniform_images(2, (6, 6, 1))
    _check(model, v, x, jnp.array([0, 2]), lambda f, x, t: A.guided_backprop(f.logits, x, t),
           piecewise_linear=True)


@pytest.mark.parametrize("name", sorted(CAM_METHODS))
def test_one_training_step_through_cam_maps(name):
    model, v, _ = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    method = CAM_METHODS[name]
    _check(model, v, x, jnp.array([4, 5]), lambda f, x, t: method(f.features, f.head, x, t))


def _stacked_params(model_fn, seeds):
    variables = [model_fn(seed=s)[1] for s in seeds]
    return variables[0], jax.tree.map(lambda *a: jnp.stack(a), *[v["params"] for v in variables])


@pytest.mark.parametrize("name", sorted(INPUT_METHODS) + sorted(CAM_METHODS))
def test_vmap_over_parameters_equals_a_loop(name):
    """Several models' parameters in one vmapped call (an ensemble, a population of runs) give
    each model's own map."""
    cam = name in CAM_METHODS
    make = (lambda seed: tiny_smallgap("softplus", seed=seed)) if cam else (
        lambda seed: tiny_mlp("softplus", seed=seed))
    model, _, _ = make(0)
    x = uniform_images(2, (12, 12, 1) if cam else (6, 6, 1))
    t = jnp.array([1, 3])
    _, stacked = _stacked_params(make, (0, 1, 2))

    def one(params):
        f = _Fns(model, {"params": params})
        return (CAM_METHODS[name](f.features, f.head, x, t) if cam
                else INPUT_METHODS[name](f, x, t))

    batched = np.asarray(jax.jit(jax.vmap(one))(stacked))
    for i in range(3):
        single = np.asarray(jax.jit(one)(jax.tree.map(lambda a, i=i: a[i], stacked)))
        np.testing.assert_allclose(batched[i], single, rtol=2e-5,
                                   atol=2e-6 * max(np.abs(single).max(), 1e-12))


FD_METHODS = ("saliency", "integrated_gradients", "smooth_grad", "expected_gradients",
              "occlusion", "blur_ig", "path_integrated_gradients")


@pytest.mark.parametrize("name", FD_METHODS + ("grad_cam",))
def test_gradients_match_finite_differences_in_float64(name):
    """d <r, map> along a random direction of the parameters and of the input, by autodiff and by
    central differences (float64, softplus models): the maps' derivatives are right, not only
    finite."""
    with x64():
        cam = name == "grad_cam"
        model, v, _ = (tiny_smallgap if cam else tiny_mlp)("softplus", dtype=jnp.float64)
        x = uniform_images(2, (12, 12, 1) if cam else (6, 6, 1), dtype=jnp.float64)
        t = jnp.array([1, 3])

        def map_of(params, z):
            f = _Fns(model, {"params": params})
            if cam:
                return A.grad_cam(f.features, f.head, z, t)
            refs = REFS.astype(jnp.float64)
            if name == "expected_gradients":
                return A.expected_gradients(f.logits, z, t, KEY, references=refs, num_samples=2)
            return INPUT_METHODS[name](f, z, t)

        params = v["params"]
        r = jax.random.normal(jax.random.key(7), jax.eval_shape(map_of, params, x).shape,
                              jnp.float64)

        def loss(params, z):
            return jnp.sum(r * map_of(params, z))

        gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        f = jax.jit(loss)
        dp = jax.tree.map(lambda a: jax.random.normal(jax.random.key(a.size), a.shape,
                                                      jnp.float64), params)
        dx = jax.random.normal(jax.random.key(8), x.shape, jnp.float64)
        h = 1e-6
        along_p = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree.leaves(gp),
                                                            jax.tree.leaves(dp), strict=True))
        plus = jax.tree.map(lambda a, d: a + h * d, params, dp)
        minus = jax.tree.map(lambda a, d: a - h * d, params, dp)
        fd_p = (float(f(plus, x)) - float(f(minus, x))) / (2 * h)
        assert fd_p == pytest.approx(along_p, rel=1e-5, abs=1e-10)
        along_x = float(jnp.sum(gx * dx))
        fd_x = (float(f(params, x + h * dx)) - float(f(params, x - h * dx))) / (2 * h)
        assert fd_x == pytest.approx(along_x, rel=1e-5, abs=1e-10)
