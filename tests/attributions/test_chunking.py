"""``chunk_size="auto"``: the rule per platform, the memory estimate, and that every method using it
gives the all-at-once result while evaluating its points in bounded chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.attributions import (
    _common,
    auto_chunk_size,
    blur_integrated_gradients,
    expected_gradients,
    integrated_gradients,
    path_ig,
    smooth_grad,
)
from jaxadv.models import fastpath
from tests.attributions.helpers import tiny_smallgap, uniform_images

pytestmark = pytest.mark.usefixtures("strict_promotion")


@pytest.mark.parametrize("total, batch, expected", [
    (50, 16, 1),     # PreAct ResNet-18 at batch 16: 16 images per call
    (50, 4, 4),      # at batch 4: 16 images, spread over 13 calls of 4 (the last 2 padding)
    (50, 128, 1),    # a large batch: one point per call
    (50, 1, 13),     # one image: at most 16 points per call, spread evenly over four calls
    (64, 1, 16),
    (40, 2, 8),      # at most 8, so five calls of 8
    (5, 1, 5),       # never more points than there are
    (50, 17, 1),
])
def test_auto_on_cpu_takes_about_16_images_per_call(total, batch, expected):
    assert auto_chunk_size(total, batch=batch, platform="cpu") == expected
    assert _common.CPU_IMAGES_PER_CALL == 16


def test_auto_on_accelerators_bounds_the_memory_estimate():
    one_point = lambda: jnp.ones((1000,), jnp.float32) * 2.0  # noqa: E731  2 arrays of 4000 B
    assert _common.traced_bytes(one_point) == 8000
    # Half of 80 kB holds 5 such points (10 calls of 5); half of 96 kB 6, so 9 calls of 6.
    assert auto_chunk_size(50, batch=4, platform="gpu", one_point=one_point,
                           bytes_limit=80_000) == 5
    assert auto_chunk_size(50, batch=4, platform="gpu", one_point=one_point,
                           bytes_limit=96_000) == 6
    # Everything fits: all at once (one call, the fastest on accelerators).
    assert auto_chunk_size(50, batch=4, platform="gpu", one_point=one_point,
                           bytes_limit=10**9) == 50
    # Not even one point fits: one per call rather than none.
    assert auto_chunk_size(50, batch=4, platform="tpu", one_point=one_point,
                           bytes_limit=100) == 1
    # No memory statistics or no estimate: all at once, as before "auto".
    assert auto_chunk_size(50, batch=4, platform="gpu", one_point=None, bytes_limit=100) == 50


def test_traced_bytes_counts_nested_programs():
    inner = jax.jit(lambda v: jnp.sin(v) + 1.0)
    flat = _common.traced_bytes(lambda: jnp.sin(jnp.ones((10,))) + 1.0)
    nested = _common.traced_bytes(lambda: inner(jnp.ones((10,))))
    # ones, sin, add = 3 x 40 B; the nested version adds the jit call's own output (40 B).
    assert flat == 120 and nested == 160


def _scan_lengths(fn, *args):
    return [eqn.params["length"] for eqn in _common._traced_eqns(lambda: fn(*args))
            if eqn.primitive.name == "scan"]


@pytest.fixture(scope="module")
def model_and_batch():
    _, _, f = tiny_smallgap("softplus")
    return f, uniform_images(2, (12, 12, 1))


def test_auto_evaluates_integrated_gradients_in_chunks_with_the_same_result(model_and_batch):
    f, x = model_and_batch
    if not fastpath.is_enabled():
        pytest.skip("JAXADV_FASTPATH=0: XLA's own convolutions, no loop (next test)")
    ig = lambda v, c: integrated_gradients(f.logits, v, 1, num_steps=64, chunk_size=c)  # noqa: E731
    # Batch 2 on CPU: 8 points per call, so an 8-trip loop; None: one call, no loop.
    assert _scan_lengths(lambda v: ig(v, "auto"), x) == [8]
    assert _scan_lengths(lambda v: ig(v, None), x) == []
    np.testing.assert_allclose(ig(x, "auto"), ig(x, None), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(integrated_gradients(f.logits, x, 1, num_steps=64), ig(x, None),
                               rtol=2e-5, atol=1e-6)  # "auto" is the default


@pytest.mark.parametrize("method", ["smooth_grad", "expected_gradients", "blur_ig", "path_ig"])
def test_auto_is_the_default_and_matches_all_at_once(model_and_batch, method, fast_compile):
    f, x = model_and_batch
    key = jax.random.key(0)
    calls = {
        "smooth_grad": lambda c: smooth_grad(f.logits, x, 1, key, num_samples=40, chunk_size=c),
        "expected_gradients": lambda c: expected_gradients(f.logits, x, 1, key, references=x,
                                                           num_samples=40, chunk_size=c),
        "blur_ig": lambda c: blur_integrated_gradients(f.logits, x, 1, num_steps=39,
                                                       max_sigma=2.0, chunk_size=c),
        "path_ig": lambda c: path_ig(f.logits, x, x + 0.1, np.array([1, 2]), num_steps=40,
                                     chunk_size=c),
    }
    default = {
        "smooth_grad": lambda: smooth_grad(f.logits, x, 1, key, num_samples=40),
        "expected_gradients": lambda: expected_gradients(f.logits, x, 1, key, references=x,
                                                         num_samples=40),
        "blur_ig": lambda: blur_integrated_gradients(f.logits, x, 1, num_steps=39, max_sigma=2.0),
        "path_ig": lambda: path_ig(f.logits, x, x + 0.1, np.array([1, 2]), num_steps=40),
    }
    # 40 points at batch 2 (Blur IG: 39): at most 8 per call on CPU, so 5 chunks of 8 (with
    # jaxadv's fast path; with XLA's own convolutions all at once, next test).
    assert _scan_lengths(lambda: calls[method]("auto")) == ([5] if fastpath.is_enabled() else [])
    ref = calls[method](None)
    np.testing.assert_allclose(calls[method]("auto"), ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(default[method](), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["big", "AUTO", 0, -1, 2.5, True])
def test_bad_chunk_size_names_the_choices(model_and_batch, bad):
    f, x = model_and_batch
    with pytest.raises(ValueError, match="chunk_size"):
        integrated_gradients(f.logits, x, 1, num_steps=8, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size"):
        smooth_grad(f.logits, x, 1, jax.random.key(0), num_samples=4, chunk_size=bad)


def test_auto_keeps_all_points_in_one_call_for_xla_convolutions_on_cpu(model_and_batch):
    """A model traced with XLA's own convolution (here jaxadv's with its fast path off, as a model
    of one's own) gets every point in one call on CPU: XLA:CPU runs convolution gradients
    inside a loop several times slower. The result is the same either way."""
    f, x = model_and_batch
    t = np.array([1, 1], np.int32)
    one_point = lambda: _common.stacked_grad(f.logits, jnp.asarray(t), x[None])  # noqa: E731
    with fastpath.enabled(False):
        assert _common.has_xla_convolution(one_point)
        assert auto_chunk_size(64, batch=2, one_point=one_point, platform="cpu") == 64
        ig = lambda c: integrated_gradients(f.logits, x, 1, num_steps=64, chunk_size=c)  # noqa: E731
        assert _scan_lengths(lambda: ig("auto")) == []
        np.testing.assert_allclose(ig("auto"), ig(4), rtol=2e-5, atol=1e-6)
    with fastpath.enabled(True):
        assert not _common.has_xla_convolution(one_point)
        assert auto_chunk_size(64, batch=2, one_point=one_point, platform="cpu") == 8
    # Accelerators keep the memory rule either way.
    with fastpath.enabled(False):
        assert auto_chunk_size(64, batch=2, one_point=one_point, platform="gpu",
                               bytes_limit=10**12) == 64
