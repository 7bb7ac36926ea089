"""Host-device set-up for CPU runs: split batches over several XLA host devices.

On CPU, XLA runs one computation on one "device". Splitting the batch over several host devices
(``--xla_force_host_platform_device_count``) lets the same ``jax.jit`` + ``NamedSharding`` code that
scales to GPUs run the shards concurrently, which keeps every core busy in the parts of a step that
XLA:CPU runs on one thread (see ``experiments/benchmarks/step_speed.py`` for measurements). The count
must be chosen *before* JAX initialises its backends (before the first JAX operation).

In a notebook, first cell::

    from jaxadv.devices import use_host_devices
    use_host_devices(2)          # or use_host_devices() for one device per core
    import jax                   # any JAX work comes after

The command line (``jaxadv train ... --host_devices N``) calls the same function. XLA:CPU flags
(``xla_cpu_use_xnnpack``, ``xla_cpu_use_onednn``, ``xla_cpu_experimental_xnn_graph_fusion_mode``,
``xla_cpu_multi_thread_eigen``) were measured on the convolutions of jaxadv's models and gave no
change beyond noise, so none is set.

XLA:CPU aborts the process when a host device waits for the others at a collective (an
all-reduce of gradients or metrics) for 20 s + 40 s; ``collective_timeout_s`` changes the 40 s
(flag ``--xla_cpu_collective_call_terminate_timeout_seconds``) for workloads whose devices
genuinely run unevenly. It is left at XLA's value by default. Three such stops were seen here,
in 2-device Fashion-MNIST training; the two inspected (gdb, process idle for minutes) were not a
slow device but a deadlock: one device waited in the all-reduce while the
other device's launch of the same step waited for a launch slot (``xla::Semaphore::Acquire``),
and another launch, apparently of a later computation on the step's outputs, waited for its
inputs (jaxadv's training loop now sums the metrics inside the step itself,
:func:`jaxadv.training.accumulating`, so nothing else is dispatched between steps).
Aborting after a minute lets a resumable run restart; a long timeout would leave it hung.
"""

import os
import re
import sys

_FLAG = "--xla_force_host_platform_device_count"
_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"


def _with_count(xla_flags: str, n: int) -> str:
    kept = re.sub(rf"{_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{_FLAG}={n}"])


def _with_timeout(xla_flags: str, seconds: int | None) -> str:
    """Sets the collective abort timeout to ``seconds`` (replacing any value); None leaves
    ``xla_flags`` as they are."""
    if seconds is None:
        return xla_flags
    kept = re.sub(rf"{_TIMEOUT_FLAG}=\S*", "", xla_flags).split()
    return " ".join([*kept, f"{_TIMEOUT_FLAG}={seconds}"])


def use_host_devices(n: int | None = None, *, collective_timeout_s: int | None = None) -> int:
    """Makes JAX's CPU backend expose ``n`` host devices (default: one per core).

    Call before any JAX operation (importing jax is fine; creating an array is not). Sets
    ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` (inherited by subprocesses) and, if jax is
    already imported, the equivalent ``jax_num_cpu_devices`` config (and the collective abort
    timeout if given: module docstring). Calling it again with the count in effect is a no-op.

    Args:
      n: number of host devices, >= 1 (None: ``os.cpu_count()``).
      collective_timeout_s: seconds a device may wait at a collective, after XLA's 20 s warning,
        before XLA aborts the process (None: XLA's 40 s, or what XLA_FLAGS already sets).

    Returns:
      The number of host devices requested.

    Raises:
      ValueError: if ``n`` is not a positive integer.
      RuntimeError: if JAX's backends are already initialised with a different number of CPU
        devices (restart the process or kernel and call this first).
    """
    if n is None:
        n = os.cpu_count() or 1
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"use_host_devices needs a positive integer number of devices; got {n!r}.")
    if collective_timeout_s is not None and (isinstance(collective_timeout_s, bool) or not
                                             isinstance(collective_timeout_s, int)
                                             or collective_timeout_s < 1):
        raise ValueError("collective_timeout_s must be a positive integer number of seconds; got "
                         f"{collective_timeout_s!r}.")
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # raised once the backends exist
            have = len(jax.devices("cpu"))
            if have != n:
                raise RuntimeError(
                    f"JAX is already initialised with {have} CPU device(s), so use_host_devices({n}) "
                    "cannot take effect. Call it before any JAX operation: in a notebook, restart "
                    "the kernel and run it in the first cell; in a script, before creating arrays."
                ) from None
    os.environ["XLA_FLAGS"] = _with_timeout(_with_count(os.environ.get("XLA_FLAGS", ""), n),
                                            collective_timeout_s)
    return n


def use_host_devices_unless_set(n: int | None = None) -> int | None:
    """:func:`use_host_devices` (default: one host device per core) unless ``XLA_FLAGS`` already
    sets a host device count, which wins (e.g. the test suite's 8 devices, or a user's choice):
    what the experiment scripts call before JAX initialises.

    Returns:
      The count set, or None when ``XLA_FLAGS`` already chose one.
    """
    if _FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return use_host_devices(n)
