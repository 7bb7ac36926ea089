"""Mesh and ``NamedSharding`` helpers for data parallelism (no pmap).

One mesh axis, ``"data"``: batches are split along their leading axis over every device of every
process; parameters and optimiser state are replicated. The same code runs on 8 fake CPU devices,
one GPU, a TPU pod slice, or several hosts joined by ``jax.distributed.initialize()``.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_axis_size(mesh: Mesh) -> int:
    """The number of devices the batch splits over: the size of the mesh's ``"data"`` axis.
    ValueError naming the fix when the mesh has no such axis."""
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"The mesh's axes are {tuple(mesh.axis_names)}; jaxadv splits batches over "
                         f"an axis named {DATA_AXIS!r}. Build the mesh with "
                         "jaxadv.sharding.data_mesh(), or name its batch axis 'data'.")
    return int(mesh.shape[DATA_AXIS])


def waits_between_steps(mesh: Mesh) -> bool:
    """Whether a loop that launches one computation over ``mesh`` after another (train steps,
    evaluation batches) must let each finish before launching the next: where the mesh spans
    several CPU devices (host devices of one process, or CPU processes joined by
    ``jax.distributed``).

    There XLA:CPU deadlocks with several computations in flight: one device waits at the step's
    all-reduce while the other device's launch of the same step waits for a launch slot
    (``jaxadv.devices`` module docstring), and XLA aborts the process after a minute. Measured on
    the 2-core EPYC VM, 2026-12-07, with the README's ``jaxadv train --config
    experiments/configs/fashion_mnist_smallgap.py --workdir W`` (10 epochs, 4,680 steps, two host
    devices): without the wait 3 of 3 runs aborted (after 79 to 3,684 steps; 1 of 3 with
    ``JAX_CPU_ENABLE_ASYNC_DISPATCH=1``), with it 5 of 5 finished, at 29,900 examples/s against
    29,800 before the aborts. The next batch is still prepared while a step runs. Accelerators
    and a single device keep asynchronous dispatch."""
    devices = list(mesh.devices.flat)
    return len(devices) > 1 and all(d.platform == "cpu" for d in devices)


def wait_between_steps(tree, mesh: Mesh):
    """``tree`` once its computations have finished where :func:`waits_between_steps` says so
    (else at once): call it on a step's outputs before launching the next step."""
    if waits_between_steps(mesh):
        jax.block_until_ready(tree)
    return tree


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (batch) axis over the mesh's ``"data"`` axis."""
    data_axis_size(mesh)
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    """Raises a ValueError naming the fix when ``batch_size`` does not split over the mesh's
    ``"data"`` axis."""
    n = data_axis_size(mesh)
    if batch_size % n:
        raise ValueError(
            f"The global {what} {batch_size} is not divisible by the {n} devices of the mesh's "
            f"'data' axis; "
            f"use a multiple of {n} (e.g. {(batch_size // n + 1) * n}), or run on fewer devices.")


def mesh_for_batch(batch_size: int, mesh: Mesh | None = None) -> Mesh | None:
    """The mesh (default :func:`data_mesh`) to split a host batch of ``batch_size`` over, or None
    to keep it on one device: None with one device, a size the devices do not divide, or
    several processes (a host array is then not the global batch; use :func:`shard_batch`)."""
    if jax.process_count() > 1:
        return None
    mesh = data_mesh() if mesh is None else mesh
    n = data_axis_size(mesh)
    return mesh if n > 1 and batch_size % n == 0 else None


def shard_batch(batch, mesh: Mesh):
    """Places a host batch (this process's slice of the global batch, a pytree of numpy arrays) on
    the mesh, sharded along the leading axis. Works single- and multi-process."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        for leaf in jax.tree.leaves(batch):
            check_divisible(leaf.shape[0], mesh, "batch")
        return jax.device_put(batch, sharding)

    def put(x):
        global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
