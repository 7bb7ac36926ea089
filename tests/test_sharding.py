"""jaxadv.sharding on the 8 host devices the test session runs with (tests/conftest.py)."""

import jax
import numpy as np
import pytest

from jaxadv import sharding


def test_mesh_for_batch_splits_only_divisible_batches():
    assert len(jax.devices()) == 8
    mesh = sharding.data_mesh()
    assert sharding.mesh_for_batch(16) is not None
    assert sharding.mesh_for_batch(16).size == 8
    assert sharding.mesh_for_batch(12) is None  # 12 does not split over 8 devices
    one = sharding.data_mesh(jax.devices()[:1])
    assert sharding.mesh_for_batch(16, one) is None  # one device: nothing to split
    two = sharding.data_mesh(jax.devices()[:2])
    assert sharding.mesh_for_batch(6, two) is two
    x = jax.device_put(np.zeros((16, 3)), sharding.batch_sharding(mesh))
    assert len(x.sharding.device_set) == 8


def test_check_divisible_names_the_fix():
    with pytest.raises(ValueError, match="not divisible by the 8 devices.*multiple of 8"):
        sharding.check_divisible(12, sharding.data_mesh())
