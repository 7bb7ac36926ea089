"""``jaxadv.interop.torch_port`` helpers that the parity tests and benchmarks share."""

import numpy as np
import pytest

from tests.conftest import torch_or_skip


def test_nchw_to_nhwc_takes_tensors_and_arrays_and_keeps_the_dtype():
    torch = torch_or_skip()
    from jaxadv.interop.torch_port import nchw_to_nhwc, nhwc_to_nchw

    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)  # NHWC
    t = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))).requires_grad_()
    np.testing.assert_array_equal(nchw_to_nhwc(t), x)
    assert nchw_to_nhwc(t).dtype == np.float64
    np.testing.assert_array_equal(nchw_to_nhwc(t.detach().numpy()), x)
    np.testing.assert_array_equal(nchw_to_nhwc(nhwc_to_nchw(x)), x.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*\(5, 3, 4\)"):
        nchw_to_nhwc(t[0])


def test_with_feature_layer_gives_the_twins_logits_and_its_feature_map():
    torch = torch_or_skip()
    import jax

    from jaxadv.interop.torch_port import WithFeatureLayer, nhwc_to_nchw, to_torch
    from jaxadv.models import get_model, init_variables

    variables = init_variables(get_model("smallgap"), jax.random.key(0), (1, 28, 28, 1))
    twin = to_torch("smallgap", variables)
    wrapped = WithFeatureLayer(twin)
    x = nhwc_to_nchw(np.asarray(jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))))
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), twin(x), rtol=0, atol=0)
        torch.testing.assert_close(wrapped.feat(x), twin.features(x), rtol=0, atol=0)
    assert wrapped.feat(x).shape[:2] == (3, 100)
