"""Non-finite inputs: every public map and sensitivity metric refuses a concrete batch holding NaN
or infinities with an error that names the examples and the fix (the brief: bad input gets a clear
error), while traced inputs are left alone so the maps stay jit/vmap/grad-able."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv.attributions as A
import jaxadv.metrics as M
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")

KEY = jax.random.key(0)


def _bad_batch(value=np.nan, row=2):
    x = np.array(uniform_images(4, (4, 4, 2)))
    x[row, 1, 1, 0] = value
    return jnp.asarray(x)


def _linear_calls():
    logits_fn, _, _ = linear_model()
    t = jnp.array([0, 1, 2, 0])
    sal = lambda v, c: A.saliency(logits_fn, v, c)  # noqa: E731
    return {
        "saliency": lambda x: A.saliency(logits_fn, x, t),
        "gradient_x_input": lambda x: A.gradient_x_input(logits_fn, x, t),
        "integrated_gradients": lambda x: A.integrated_gradients(logits_fn, x, t, num_steps=4),
        "smooth_grad": lambda x: A.smooth_grad(logits_fn, x, t, KEY, num_samples=2),
        "noise_tunnel": lambda x: A.noise_tunnel(lambda v: A.saliency(logits_fn, v, t), x, KEY,
                                                 num_samples=2),
        "expected_gradients": lambda x: A.expected_gradients(
            logits_fn, x, t, KEY, references=uniform_images(3, (4, 4, 2)), num_samples=2),
        "blur_ig": lambda x: A.blur_integrated_gradients(logits_fn, x, t, num_steps=4),
        "guided_ig": lambda x: A.guided_integrated_gradients(logits_fn, x, t, num_steps=4),
        "occlusion": lambda x: A.occlusion(logits_fn, x, t, window=(2, 2), strides=2),
        "asm": lambda x: A.adversarial_saliency_map(logits_fn, x, t),
        "path_integrated_gradients": lambda x: A.path_integrated_gradients(
            lambda v: logits_fn(v)[:, 0], jnp.zeros_like(x), x, num_steps=4),
        "deletion_auc": lambda x: M.deletion_auc(logits_fn, x, t, jnp.ones_like(x)),
        "max_sensitivity": lambda x: M.max_sensitivity(sal, x, t, KEY, num_samples=2),
        "local_lipschitz_estimate": lambda x: M.local_lipschitz_estimate(sal, x, t, KEY,
                                                                         num_samples=2),
        "worst_case_sensitivity": lambda x: M.worst_case_sensitivity(sal, x, t, KEY, num_steps=1),
    }


@pytest.mark.parametrize("name", sorted(_linear_calls()))
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_batch_raises_naming_the_examples(name, value):
    with pytest.raises(ValueError,
                       match=r"NaN or infinite values \(1 of them, in examples \[2\]\).*nan_to_num"):
        _linear_calls()[name](_bad_batch(value))


def test_finite_batch_passes_the_check():
    """The check itself on finite batches (every other attribution test calls it on finite
    inputs too): extreme but finite values, float64 and integer images pass."""
    from jaxadv.attributions import _common

    for x in (_bad_batch(0.5), _bad_batch(np.finfo(np.float32).max),
              np.zeros((2, 3), np.float64), np.ones((2, 3), np.uint8)):
        assert _common.check_finite(x) is None


@pytest.mark.parametrize("name", ["cam", "grad_cam", "guided_backprop"])
def test_nonfinite_batch_raises_for_feature_maps(name):
    _, _, f = tiny_smallgap("relu")
    x = np.array(uniform_images(3, (12, 12, 1)))
    x[0, 0, 0, 0] = np.nan
    calls = {"cam": lambda: A.cam(f.features, f.head, jnp.asarray(x), 0),
             "grad_cam": lambda: A.grad_cam(f.features, f.head, jnp.asarray(x), 0),
             "guided_backprop": lambda: A.guided_backprop(f.logits, jnp.asarray(x), 0)}
    with pytest.raises(ValueError, match=r"examples \[0\]"):
        calls[name]()


def test_nonfinite_baseline_raises():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    baseline = jnp.full((4, 4, 2), jnp.nan)
    with pytest.raises(ValueError,
                       match=r"start \(baseline\) contains NaN or infinite values \(64 of them"):
        A.integrated_gradients(logits_fn, x, jnp.array([0, 1]), baseline=baseline, num_steps=4)


def test_traced_inputs_are_not_inspected():
    """Inside jit the values are unknown: the map of a NaN input is NaN, with no error."""
    logits_fn, _, _ = linear_model()
    t = jnp.array([0, 1, 2, 0])
    out = jax.jit(lambda x: A.integrated_gradients(logits_fn, x, t, num_steps=4))(_bad_batch())
    assert np.isnan(np.asarray(out)[2]).any()
    assert np.all(np.isfinite(np.asarray(out)[[0, 1, 3]]))


def test_nonfinite_path_end_of_path_ig_raises():
    """path_ig checks its clean inputs through prepare and its end point on its own."""
    logits_fn, _, _ = linear_model()
    x = uniform_images(4, (4, 4, 2))
    with pytest.raises(ValueError, match=r"^x_end contains NaN or infinite values \(1 of them, in "
                                         r"examples \[2\]\)"):
        A.path_ig(logits_fn, x, _bad_batch(), jnp.array([0, 1, 2, 0]))


@pytest.mark.parametrize("name", ["saliency", "integrated_gradients", "smooth_grad",
                                  "noise_tunnel", "path_integrated_gradients"])
def test_each_input_is_checked_once(name, monkeypatch):
    """The finite check reads a concrete batch back to the host: each array is checked where it
    enters, once (smooth_grad's noise tunnel does not check x again after smooth_grad did)."""
    from jaxadv import validation

    seen = []
    real = validation.check_finite

    def counting(x, name="x", **kw):
        if validation.is_concrete(x):  # traced values (the maps of the noisy copies) pass through
            seen.append(name)
        return real(x, name, **kw)

    monkeypatch.setattr(validation, "check_finite", counting)
    _linear_calls()[name](uniform_images(4, (4, 4, 2)))
    expected = {"integrated_gradients": ["x", "the path's start (baseline)"],
                "path_integrated_gradients": ["start", "end"]}
    assert seen == expected.get(name, ["x"])
