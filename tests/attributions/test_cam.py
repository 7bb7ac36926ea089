"""CAM family: mean(CAM_c) == logit_c on GAP heads, agreement with the model's own CAM, Grad-CAM and
CAM++ closed forms, Grad-CAM++ against its formula, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import cam, cam_plus_plus, grad_cam, grad_cam_plus_plus
from tests.attributions.helpers import tiny_mlp, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("build", [tiny_smallgap, tiny_mlp])
def test_mean_cam_equals_logit_and_matches_model_cam(build):
    _, v, f = build("relu")
    shape = (12, 12, 1) if build is tiny_smallgap else (6, 6, 1)
    x = uniform_images(3, shape)
    t = jnp.array([0, 1, 4])
    c = cam(f.features, f.head, x, t)
    logits = np.asarray(f.logits(x))[np.arange(3), np.asarray(t)]
    np.testing.assert_allclose(np.asarray(c).mean((1, 2)), logits, rtol=1e-5, atol=1e-6)
    own = np.asarray(f.cam(f.features(x)))[np.arange(3), :, :, np.asarray(t)]
    np.testing.assert_allclose(c, own, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cam(f.features, None, x, t, cam_fn=f.cam), own, rtol=1e-6)


def test_grad_cam_and_cam_plus_plus_closed_forms_on_gap_head():
    _, v, f = tiny_smallgap("relu")
    x = uniform_images(2, (12, 12, 1))
    t = jnp.array([2, 7])
    a = np.asarray(f.features(x))
    w = np.asarray(v["params"]["head"]["kernel"])
    cam_t = np.stack([a[i] @ w[:, c] for i, c in enumerate([2, 7])])
    hw = a.shape[1] * a.shape[2]
    np.testing.assert_allclose(grad_cam(f.features, f.head, x, t, relu=False), cam_t / hw,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_cam(f.features, f.head, x, t), np.maximum(cam_t / hw, 0),
                               rtol=1e-5, atol=1e-6)
    cpp = np.stack([a[i] @ np.maximum(w[:, c], 0) for i, c in enumerate([2, 7])])
    np.testing.assert_allclose(cam_plus_plus(f.features, f.head, x, t), cpp, rtol=1e-5,
                               atol=1e-6)
    # Grad-CAM++ general form with g = W / (h w), constant over locations.
    g = w / hw
    expected = []
    for i, c in enumerate([2, 7]):
        gk = g[:, c]
        alpha = gk**2 / (2 * gk**2 + a[i].sum((0, 1)) * gk**3)
        wk = hw * alpha * np.maximum(gk, 0)
        expected.append(np.maximum(a[i] @ wk, 0))
    np.testing.assert_allclose(grad_cam_plus_plus(f.features, f.head, x, t), np.stack(expected),
                               rtol=1e-4, atol=1e-6)


def test_any_layer_split():
    _, v, f = tiny_smallgap("softplus")
    x = uniform_images(2, (12, 12, 1))
    p = v["params"]

    def conv(h, layer, stride):
        out = jax.lax.conv_general_dilated(h, p[layer]["kernel"], (stride, stride), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + p[layer]["bias"]

    features_fn = lambda z: conv(jax.nn.softplus(conv(z, "conv1", 2)), "conv2", 2)  # noqa: E731
    head_fn = lambda a: f.head(conv(jax.nn.softplus(a), "conv3", 1))  # noqa: E731
    np.testing.assert_allclose(head_fn(features_fn(x)), f.logits(x), rtol=1e-5, atol=1e-6)
    gc = grad_cam(features_fn, head_fn, x, 3, relu=False)
    a = features_fn(x)
    g = jax.grad(lambda z: jnp.sum(head_fn(z)[:, 3]))(a)
    np.testing.assert_allclose(gc, jnp.sum(g.mean((1, 2), keepdims=True) * a, -1), rtol=1e-5,
                               atol=1e-7)


def test_errors():
    _, _, f = tiny_smallgap("relu")
    x = uniform_images(1, (12, 12, 1))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        grad_cam(f.features, f.head, x, 10)
    with pytest.raises(ValueError, match="feature map"):
        grad_cam(lambda z: z.reshape(1, -1), f.head, x, 0)
