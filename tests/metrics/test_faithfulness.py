"""Deletion / insertion AUC (closed forms on a linear model) and the completeness error."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import gradient_x_input, integrated_gradients, saliency
from jaxadv.metrics.faithfulness import completeness_error, deletion_auc, insertion_auc
from tests.attributions.helpers import (  # noqa: F401
    fast_compile,
    linear_model,
    tiny_smallgap,
    uniform_images,
)

pytestmark = pytest.mark.usefixtures("strict_promotion")


def _numpy_curve(contrib, bias, scores, num_steps, insertion):
    order = np.argsort(-scores.ravel(), kind="stable")
    n = order.size
    out = []
    for k in range(num_steps + 1):
        m = np.zeros(n, bool)
        m[order[: int(np.round(k * n / num_steps))]] = True
        kept = m if insertion else ~m
        out.append(bias + contrib.ravel()[kept].sum())
    return np.array(out)


def test_logit_curves_on_linear_model():
    logits_fn, w, b = linear_model(shape=(4, 4, 1), num_classes=2)
    x = uniform_images(2, (4, 4, 1))
    attr = gradient_x_input(logits_fn, x, 1)
    auc, curve = deletion_auc(logits_fn, x, 1, attr, num_steps=8, output="logit",
                              return_curve=True)
    contrib = np.asarray(w)[None, :, 1] * np.asarray(x).reshape(2, 16)
    for i in range(2):
        ref = _numpy_curve(contrib[i], float(b[1]), np.asarray(attr[i]), 8, insertion=False)
        np.testing.assert_allclose(curve[i], ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(auc[i], (ref.sum() - 0.5 * (ref[0] + ref[-1])) / 8, rtol=1e-5)
    ins, ins_curve = insertion_auc(logits_fn, x, 1, attr, num_steps=8, output="logit",
                                   baseline="zero", return_curve=True)
    # With a zero baseline, inserted + remaining pixels make up the whole image.
    full = np.asarray(logits_fn(x))[:, 1]
    np.testing.assert_allclose(ins_curve + curve,
                               np.broadcast_to(full[:, None] + float(b[1]), curve.shape),
                               rtol=1e-5, atol=1e-5)


def test_a_faithful_map_beats_its_reverse():
    logits_fn, _, _ = linear_model(shape=(6, 6, 1), num_classes=2)
    x = uniform_images(3, (6, 6, 1))
    attr = gradient_x_input(logits_fn, x, 0)
    good = deletion_auc(logits_fn, x, 0, attr, output="logit")
    bad = deletion_auc(logits_fn, x, 0, -attr, output="logit")
    assert np.all(np.asarray(good) < np.asarray(bad))
    good_i = insertion_auc(logits_fn, x, 0, attr, output="logit")
    bad_i = insertion_auc(logits_fn, x, 0, -attr, output="logit")
    assert np.all(np.asarray(good_i) > np.asarray(bad_i))


def test_probability_output_chunking_and_pixel_maps():
    _, _, f = tiny_smallgap("relu")
    x = uniform_images(2, (12, 12, 1))
    attr = saliency(f.logits, x, 3)
    ref = deletion_auc(f.logits, x, 3, attr, num_steps=12)
    assert np.all((np.asarray(ref) >= 0) & (np.asarray(ref) <= 1))
    np.testing.assert_allclose(deletion_auc(f.logits, x, 3, attr, num_steps=12, chunk_size=5),
                               ref, rtol=1e-5)
    np.testing.assert_allclose(deletion_auc(f.logits, x, 3, attr[..., 0], num_steps=12), ref,
                               rtol=1e-6)


def test_completeness_error():
    _, _, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    ig = integrated_gradients(f.logits, x, 5, num_steps=64)
    assert np.all(np.asarray(completeness_error(f.logits, x, 5, ig)) < 1e-3)
    sal = saliency(f.logits, x, 5)
    assert np.all(np.asarray(completeness_error(f.logits, x, 5, sal)) > 1e-3)
    gap = np.asarray(f.logits(x))[:, 5] - np.asarray(f.logits(jnp.zeros_like(x)))[:, 5]
    np.testing.assert_allclose(completeness_error(f.logits, x, 5, sal, relative=False),
                               np.abs(np.asarray(sal).sum((1, 2, 3)) - gap), rtol=1e-5)


def test_errors():
    logits_fn, _, _ = linear_model(shape=(4, 4, 1), num_classes=2)
    x = uniform_images(1, (4, 4, 1))
    with pytest.raises(ValueError, match="attribution"):
        deletion_auc(logits_fn, x, 0, jnp.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="output"):
        deletion_auc(logits_fn, x, 0, x, output="entropy")
    with pytest.raises(ValueError, match="num_steps"):
        insertion_auc(logits_fn, x, 0, x, num_steps=0)
    with pytest.raises(ValueError, match="attribution"):
        completeness_error(logits_fn, x, 0, x[..., 0])
    with pytest.raises(ValueError, match=r"attribution contains NaN.*examples \[0\]"):
        deletion_auc(logits_fn, x, 0, x.at[0, 1, 1, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="blur_sigma >= 0"):
        insertion_auc(logits_fn, x, 0, x, blur_sigma=-1.0)
    # NumPy integers are integers.
    np.testing.assert_array_equal(deletion_auc(logits_fn, x, 0, x, num_steps=np.int64(4)),
                                  deletion_auc(logits_fn, x, 0, x, num_steps=4))
