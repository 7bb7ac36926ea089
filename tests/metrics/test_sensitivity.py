"""Max-/avg-sensitivity and local Lipschitz estimate (equal to Quantus's on the same perturbation
samples, PyTorch twin and Captum saliency), closed forms, and the worst-case version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import saliency
from jaxadv.metrics.sensitivity import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    worst_case_sensitivity,
)
from tests.attributions.helpers import (  # noqa: F401
    TINY_WIDTHS,
    fast_compile,
    linear_model,
    tiny_smallgap,
    uniform_images,
)
from tests.conftest import torch_or_skip

S = 4


def _setup(activation="relu"):
    _, v, f = tiny_smallgap(activation)
    x = uniform_images(3, (12, 12, 1))
    y = jnp.array([1, 2, 3])
    explain = lambda z, t: saliency(f.logits, z, t)  # noqa: E731
    return v, f, x, y, explain


def _numpy_values(explain, x, y, noise, lipschitz):
    a0 = np.asarray(explain(x, y)).reshape(3, -1)
    out = []
    for d in noise:
        a = np.asarray(explain(x + d, y)).reshape(3, -1)
        num = np.linalg.norm(a0 - a, axis=-1)
        den = (np.linalg.norm(np.asarray(d).reshape(3, -1), axis=-1) + 1e-10 if lipschitz
               else np.linalg.norm(a0, axis=-1))
        out.append(num / den)
    return np.array(out)


def test_explicit_perturbations_follow_the_formulas():
    _, _, x, y, explain = _setup()
    noise = jax.random.uniform(jax.random.key(3), (S,) + x.shape, minval=-0.2, maxval=0.2)
    vals = _numpy_values(explain, x, y, noise, lipschitz=False)
    np.testing.assert_allclose(max_sensitivity(explain, x, y, None, perturbations=noise),
                               vals.max(0), rtol=1e-4)
    np.testing.assert_allclose(avg_sensitivity(explain, x, y, None, perturbations=noise,
                                               chunk_size=3), vals.mean(0), rtol=1e-4)
    lip = _numpy_values(explain, x, y, noise, lipschitz=True)
    np.testing.assert_allclose(local_lipschitz_estimate(explain, x, y, None, normalize=False,
                                                        perturbations=noise), lip.max(0),
                               rtol=1e-4)
    scaled = lambda z, t: explain(z, t) / jnp.max(  # noqa: E731
        jnp.abs(explain(z, t)), axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(max_sensitivity(explain, x, y, None, perturbations=noise[:1],
                                               normalize=True),
                               _numpy_values(scaled, x, y, noise[:1], lipschitz=False)[0],
                               rtol=1e-4)


def test_sampled_noise_is_in_range_and_reproducible():
    _, _, x, y, explain = _setup()
    key = jax.random.key(0)
    a = max_sensitivity(explain, x, y, key, num_samples=5, radius=0.1)
    np.testing.assert_allclose(a, max_sensitivity(explain, x, y, key, num_samples=5,
                                                  radius=0.1, chunk_size=2), rtol=1e-5)
    assert np.all(np.asarray(a) >= np.asarray(avg_sensitivity(explain, x, y, key, num_samples=5,
                                                              radius=0.1)))


def test_linear_model_saliency_is_insensitive():
    logits_fn, _, _ = linear_model()
    x = uniform_images(2, (4, 4, 2))
    explain = lambda z, t: saliency(logits_fn, z, t)  # noqa: E731
    key = jax.random.key(1)
    np.testing.assert_allclose(max_sensitivity(explain, x, 0, key, num_samples=3), 0.0,
                               atol=1e-6)
    np.testing.assert_allclose(local_lipschitz_estimate(explain, x, 0, key, num_samples=3), 0.0,
                               atol=1e-5)
    np.testing.assert_allclose(worst_case_sensitivity(explain, x, 0, key, num_steps=2), 0.0,
                               atol=1e-6)


@pytest.mark.parametrize("normalize", [None, False, True])
@pytest.mark.parametrize("measure", ["sensitivity", "lipschitz"])
def test_worst_case_beats_random_sampling(measure, normalize):
    """With the same ``normalize`` as the sampled estimate; by default (None) each function's
    own default, which for the worst case follows the sampled estimate of its measure."""
    _, f, x, y, explain = _setup("softplus")
    key = jax.random.key(4)
    norm = {} if normalize is None else {"normalize": normalize}
    if measure == "sensitivity":
        sampled = max_sensitivity(explain, x, y, key, num_samples=16, radius=0.1, **norm)
    else:
        sampled = local_lipschitz_estimate(explain, x, y, key, num_samples=16, stdev=0.05, **norm)
    worst, delta = worst_case_sensitivity(explain, x, y, key, radius=0.1, num_steps=10,
                                          measure=measure, return_delta=True, **norm)
    assert float(jnp.max(jnp.abs(delta))) <= 0.1 + 1e-7
    assert np.all(np.asarray(worst) > np.asarray(sampled)), (worst, sampled)


def test_errors():
    _, _, x, y, explain = _setup()
    with pytest.raises(ValueError, match="key"):
        max_sensitivity(explain, x, y, None)
    with pytest.raises(ValueError, match="perturbations"):
        max_sensitivity(explain, x, y, None, perturbations=jnp.zeros((2,) + x.shape[1:]))
    with pytest.raises(ValueError, match="radius"):
        avg_sensitivity(explain, x, y, jax.random.key(0), radius=0.0)
    with pytest.raises(ValueError, match="measure"):
        worst_case_sensitivity(explain, x, y, jax.random.key(0), measure="entropy")
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        worst_case_sensitivity(explain, x, y, jax.random.key(0), step_size=-0.01)
    with pytest.raises(ValueError, match=r"needs a key \(jax.random.key"):
        worst_case_sensitivity(explain, x, y, None)
    with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
        max_sensitivity(explain, x, y, jax.random.key(0), num_samples=0)
    # NumPy integers are integers.
    np.testing.assert_array_equal(
        max_sensitivity(explain, x, y, jax.random.key(0), num_samples=np.int64(3)),
        max_sensitivity(explain, x, y, jax.random.key(0), num_samples=3))


def test_worst_case_ascent_stays_finite_where_the_map_does_not_move():
    """A ReLU network's saliency map is piecewise constant: at the random start it may not move at
    all, where ||a - a0||_2 has no slope. The ascent must keep a finite perturbation (gradient 0
    there), not turn it into NaN, and keep the value of its start."""
    logits_fn, _, _ = linear_model(shape=(4, 4, 1), num_classes=3)
    x = uniform_images(2, (4, 4, 1))
    explain = lambda z, t: saliency(logits_fn, z, t)  # noqa: E731
    value, delta = worst_case_sensitivity(explain, x, 0, jax.random.key(0), radius=0.1,
                                          num_steps=3, return_delta=True)
    np.testing.assert_array_equal(value, 0.0)
    assert np.all(np.isfinite(delta)) and float(jnp.max(jnp.abs(delta))) <= 0.1 + 1e-7


@pytest.mark.peer
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("metric, normalise, batch", [
    ("MaxSensitivity", False, 3), ("AvgSensitivity", False, 3),
    ("LocalLipschitzEstimate", False, 3),
    # Quantus normalises by one maximum over the whole batch: equal to ours per example at B = 1.
    ("LocalLipschitzEstimate", True, 1), ("MaxSensitivity", True, 1)])
def test_equals_quantus_with_the_same_perturbations(metric, normalise, batch):
    torch = torch_or_skip()
    quantus = pytest.importorskip("quantus")
    captum = pytest.importorskip("captum.attr")
    from jaxadv.interop.torch_port import to_torch

    v, f, x, y, explain = _setup()
    x, y = x[:batch], y[:batch]
    tmodel = to_torch("smallgap", v, widths=TINY_WIDTHS)
    if metric == "LocalLipschitzEstimate":
        noise = 0.1 * jax.random.normal(jax.random.key(3), (S,) + x.shape)
    else:
        noise = jax.random.uniform(jax.random.key(3), (S,) + x.shape, minval=-0.2, maxval=0.2)
    noise = noise[:, :batch]
    noise_nchw = np.transpose(np.asarray(noise), (0, 1, 4, 2, 3)).reshape(S, batch, -1)
    calls = []

    def perturb(arr, indices, **kwargs):  # Quantus's perturb_func signature; our samples in order
        calls.append(1)
        return arr + noise_nchw[len(calls) - 1]

    def explain_torch(model, inputs, targets, **kwargs):
        xt = torch.tensor(np.asarray(inputs, np.float32))
        return captum.Saliency(model).attribute(xt, target=torch.as_tensor(targets),
                                                abs=False).detach().numpy()

    m = getattr(quantus, metric)(nr_samples=S, perturb_func=perturb, disable_warnings=True,
                                 display_progressbar=False, normalise=normalise)
    x_nchw = np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2)))
    theirs = m(model=tmodel, x_batch=x_nchw, y_batch=np.asarray(y), a_batch=None,
               explain_func=explain_torch, channel_first=True, device="cpu", batch_size=batch)
    assert len(calls) == S
    fn = {"MaxSensitivity": max_sensitivity, "AvgSensitivity": avg_sensitivity,
          "LocalLipschitzEstimate": local_lipschitz_estimate}[metric]
    ours = fn(explain, x, y, None, perturbations=noise, normalize=normalise)
    np.testing.assert_allclose(ours, np.asarray(theirs, np.float64), rtol=1e-4)
