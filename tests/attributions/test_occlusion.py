"""Occlusion: patch layout (Captum's), closed form on a linear model, chunking, fills, errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import occlusion, occlusion_masks
from tests.attributions.helpers import linear_model, tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


def test_masks_cover_every_pixel_with_a_cropped_last_patch():
    m = occlusion_masks(12, 12, window=5, strides=3)
    assert m.shape == (16, 12, 12)  # ceil((12 - 5) / 3) + 1 = 4 positions per axis
    assert m.sum(0).min() >= 1
    assert m[3].sum() == 5 * 3  # last column patch starts at 9 and is cropped to width 3


def test_single_pixel_occlusion_of_linear_model():
    logits_fn, w, _ = linear_model(shape=(4, 4, 2))
    x = uniform_images(2, (4, 4, 2))
    out = occlusion(logits_fn, x, 1, window=1, strides=1, fill=0.25)
    per_pixel = (np.asarray(w)[:, 1].reshape(4, 4, 2) * (np.asarray(x) - 0.25)).sum(-1)
    np.testing.assert_allclose(out, np.repeat(per_pixel[..., None], 2, -1), rtol=1e-4,
                               atol=1e-6)


def test_overlapping_patches_average_the_drops():
    logits_fn, w, _ = linear_model(shape=(4, 4, 1))
    x = uniform_images(1, (4, 4, 1))
    out = occlusion(logits_fn, x, 0, window=2, strides=1)
    contrib = (np.asarray(w)[:, 0] * np.asarray(x).ravel()).reshape(4, 4)
    masks = occlusion_masks(4, 4, window=2, strides=1)
    drops = np.array([(contrib * m).sum() for m in masks])
    expected = np.einsum("p,phw->hw", drops, masks) / masks.sum(0)
    np.testing.assert_allclose(out[0, ..., 0], expected, rtol=1e-4, atol=1e-6)


def test_chunking_and_array_fill():
    _, _, f = tiny_smallgap("relu")
    x = uniform_images(2, (12, 12, 1))
    ref = occlusion(f.logits, x, 4, window=4, strides=2)
    np.testing.assert_allclose(occlusion(f.logits, x, 4, window=4, strides=2, chunk_size=7), ref,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(occlusion(f.logits, x, 4, window=4, strides=2,
                                         fill=jnp.zeros((12, 12, 1))), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"window": 9}, "larger than the image"),
    ({"window": 2, "strides": 3}, "uncovered"),
    ({"window": (2, 0)}, "window"),
    ({"window": 2, "fill": jnp.zeros((3, 3))}, "fill"),
])
def test_bad_arguments_raise(kwargs, match):
    logits_fn, _, _ = linear_model(shape=(4, 4, 2))
    with pytest.raises(ValueError, match=match):
        occlusion(logits_fn, uniform_images(1, (4, 4, 2)), 0, **kwargs)
