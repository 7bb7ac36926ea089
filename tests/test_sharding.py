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


def test_a_mesh_with_a_model_axis_splits_the_batch_over_data_only():
    """A (data=4, model=2) mesh: a batch of 12 splits over the 4 data devices (3 rows each), so
    it is accepted and sharded; a mesh without a 'data' axis, or a batch the data axis does not
    divide, is an error that names the fix (not JAX's own)."""
    from jax.sharding import Mesh
    devices = np.asarray(jax.devices()).reshape(4, 2)
    mesh = Mesh(devices, ("data", "model"))
    sharding.check_divisible(12, mesh)
    assert sharding.mesh_for_batch(12, mesh) is mesh
    x = sharding.shard_batch(np.zeros((12, 3), np.float32), mesh)
    assert x.sharding.shard_shape(x.shape) == (3, 3)
    with pytest.raises(ValueError, match="not divisible by the 4 devices.*'data' axis"):
        sharding.check_divisible(6, mesh)
    with pytest.raises(ValueError, match="axis named 'data'.*data_mesh"):
        sharding.batch_sharding(Mesh(np.asarray(jax.devices()), ("batch",)))
    with pytest.raises(ValueError, match="batch 12 is not divisible by the 8 devices"):
        sharding.shard_batch({"image": np.zeros((12, 2), np.float32)}, sharding.data_mesh())


def test_loops_wait_between_steps_only_on_several_cpu_devices(monkeypatch):
    """Several CPU devices: XLA:CPU deadlocks with several steps in flight, so loops wait for each
    (tests/test_cli.py has the 3,000-step run that aborted before); one device does not wait."""
    cpus = jax.devices("cpu")
    assert len(cpus) >= 2  # conftest's fake host devices
    two, one = sharding.data_mesh(cpus[:2]), sharding.data_mesh(cpus[:1])
    assert sharding.waits_between_steps(two) and not sharding.waits_between_steps(one)
    waited = []
    monkeypatch.setattr(jax, "block_until_ready", lambda t: waited.append(t) or t)
    tree = {"a": np.ones(2)}
    assert sharding.wait_between_steps(tree, one) is tree and not waited
    assert sharding.wait_between_steps(tree, two) is tree and waited == [tree]
