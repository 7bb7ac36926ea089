"""Guided IG: exact on a linear model (any path), completeness, adaptivity, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import guided_integrated_gradients, integrated_gradients
from tests.attributions.helpers import linear_model, rel_err, tiny_smallgap, uniform_images, x64

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_linear_model_gives_weight_times_difference():
    logits_fn, w, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    b = uniform_images(2, (4, 4, 2), seed=4)
    out = guided_integrated_gradients(logits_fn, x, 2, baseline=b, num_steps=10)
    np.testing.assert_allclose(out, np.asarray(w)[:, 2].reshape(4, 4, 2) * np.asarray(x - b),
                               rtol=1e-4, atol=1e-6)


def test_completeness_and_an_adaptive_path():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    t = np.array([3, 9])
    gap = (np.asarray(f.logits(x))[np.arange(2), t]
           - np.asarray(f.logits(jnp.zeros_like(x)))[np.arange(2), t])
    errs = []
    for n in (8, 64):
        out = guided_integrated_gradients(f.logits, x, t, num_steps=n)
        errs.append(np.max(np.abs(np.asarray(out).sum((1, 2, 3)) - gap) / np.abs(gap)))
    assert errs[1] < errs[0] and errs[1] < 2e-2, errs
    ig = integrated_gradients(f.logits, x, t, num_steps=64)
    assert not np.allclose(out, ig, rtol=1e-2)  # the path is not the straight line


class _NumpyWithLegacyQuantile:
    """numpy for PAIR's ``saliency`` 0.2.1, whose Guided IG calls ``np.quantile(...,
    interpolation=)``, a keyword numpy 2.4 removed (now ``method=``): the same computation."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation="linear", **kw):
        return np.quantile(a, q, method=interpolation, **kw)


@pytest.mark.peer
@pytest.mark.parametrize("fraction", [0.25, 0.6])
def test_equals_pair_saliency(monkeypatch, fraction):
    """PAIR ``saliency``'s own Guided IG (``guided_ig_impl``) on the same softplus SmallGAP, float64:
    the same path (its feature selection: the ``fraction`` quantile over all features, the
    non-movable ones infinite) and the same map."""
    guided_ig = pytest.importorskip("saliency.core.guided_ig")
    monkeypatch.setattr(guided_ig, "np", _NumpyWithLegacyQuantile())
    with x64():
        _, _, f = tiny_smallgap("softplus", dtype=jnp.float64)
        x = uniform_images(2, (12, 12, 1), dtype=jnp.float64)
        t = np.array([3, 9])
        ours = np.asarray(guided_integrated_gradients(f.logits, x, t, num_steps=16,
                                                      fraction=fraction, max_dist=0.1,
                                                      num_inner=64))
        for i in range(2):
            grad = jax.jit(jax.grad(lambda z, c=int(t[i]): f.logits(z[None])[0, c]))
            ref = guided_ig.guided_ig_impl(np.asarray(x[i]), np.zeros(x.shape[1:]),
                                           lambda z, g=grad: np.asarray(g(jnp.asarray(z))),
                                           steps=16, fraction=fraction, max_dist=0.1)
            np.testing.assert_allclose(ours[i], ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


def test_non_finite_baseline_is_an_error():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    bad = np.zeros((4, 4, 2), np.float32)
    bad[0, 0, 0] = np.nan
    for baseline in (jnp.asarray(bad), float("inf")):
        with pytest.raises(ValueError, match="baseline"):
            guided_integrated_gradients(logits_fn, x, 0, baseline=baseline, num_steps=4)


@pytest.mark.parametrize("kwargs, match", [({"fraction": 0.0}, "fraction"),
                                           ({"max_dist": 2.0}, "max_dist"),
                                           ({"num_steps": 0}, "num_steps")])
def test_bad_arguments_raise(kwargs, match):
    logits_fn, _, _ = linear_model()
    with pytest.raises(ValueError, match=match):
        guided_integrated_gradients(logits_fn, uniform_images(1, (4, 4, 2)), 0, **kwargs)


def _softplus_mlp(seed=0, shape=(12, 12, 2), k=10, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.key(seed))
    n = int(np.prod(shape))
    params = {"w1": 0.1 * jax.random.normal(k1, (n, 16), dtype),
              "w2": 0.3 * jax.random.normal(k2, (16, k), dtype)}

    def logits(p, z):
        return jax.nn.softplus(z.reshape(z.shape[0], -1) @ p["w1"]) @ p["w2"]

    return params, logits


def test_vmap_over_parameters_equals_the_single_call():
    """The path's 'still movable' test used the rounded ratio (z - b) / (x - b): a feature set to
    exactly its upper limit could test as movable under one compilation (vmapped) and not under
    another, and the path and the map changed (up to 6e-2 relative). Positions decide now."""
    with x64():
        params, logits = _softplus_mlp()
        x = uniform_images(3, (12, 12, 2), dtype=jnp.float64)
        t = jnp.array([1, 4, 7])
        for kwargs in ({"num_steps": 3}, {"num_steps": 3, "max_dist": 1.0}, {"num_steps": 4}):
            def gig(p, x, t, kwargs=kwargs):
                return guided_integrated_gradients(lambda z: logits(p, z), x, t, **kwargs)

            single = jax.jit(gig)(params, x, t)
            stacked = jax.tree.map(lambda a: jnp.stack([a, a]), params)
            batched = jax.jit(jax.vmap(gig, in_axes=(0, None, None)))(stacked, x, t)
            for i in range(2):
                assert rel_err(batched[i], single) < 1e-12, kwargs


def test_input_gradient_matches_finite_differences():
    """d <r, GuidedIG(x)> / dx against central differences (float64): the map is piecewise smooth
    in x, and the old ratio test made it jump under perturbations of any size (differences from
    -3e-2 to 9.5 as h went from 1e-4 to 1e-7, autodiff -2.1e-2)."""
    with x64():
        params, logits = _softplus_mlp(seed=1)
        x = uniform_images(3, (12, 12, 2), dtype=jnp.float64)
        t = jnp.array([1, 4, 7])
        r = jax.random.normal(jax.random.key(100), x.shape, jnp.float64)

        def loss(z):
            return jnp.sum(r * guided_integrated_gradients(lambda u: logits(params, u), z, t,
                                                           num_steps=4))

        g = jax.jit(jax.grad(loss))(x)
        f = jax.jit(loss)
        for d in range(2):
            v = jax.random.normal(jax.random.key(60 + d), x.shape, jnp.float64)
            auto = float(jnp.sum(g * v))
            for h in (1e-5, 1e-6, 1e-7):
                fd = (float(f(x + h * v)) - float(f(x - h * v))) / (2 * h)
                assert fd == pytest.approx(auto, rel=1e-5, abs=1e-9), (d, h, fd, auto)


def test_traced_fraction_and_max_dist():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    ref = guided_integrated_gradients(logits_fn, x, 1, num_steps=6, fraction=0.5, max_dist=0.1)
    out = jax.jit(lambda fr, md: guided_integrated_gradients(logits_fn, x, 1, num_steps=6,
                                                             fraction=fr, max_dist=md))(0.5, 0.1)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
