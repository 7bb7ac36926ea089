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

The command line (``jaxadv train ... --host_devices N``) calls the same function.

Convolutions on one thread. XLA:CPU (jaxlib 0.10) hands every convolution to YNNPACK
(``__ynn_fusion``), which runs it on one thread; with YNNPACK's convolutions off
(``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``) XLA runs them with Eigen on
its intra-op thread pool, every core. :func:`set_cpu_convolution_flags` adds that flag where a
host device has at least two cores to itself (one device on a 2-core machine), and leaves YNNPACK
where the devices already take every core (there each device's convolutions run on one core, and
Eigen's threads would compete). ``import jaxadv`` and :func:`use_host_devices` call it, so
import jaxadv before JAX's first computation (XLA reads ``XLA_FLAGS`` once, when its backend
starts). Measured on a 2-core EPYC VM, batch 128, the same programs compiled with either library
in one run (``python -m experiments.benchmarks.step_speed --models smallgap,poolgap --repeats 7
--host_devices N --compare_conv_backend``, results/step_speed_conv_Ndev_fixed.json;
docs/performance.md, "Convolutions on every core"): on one device PoolGAP's PGD step 1.67x
faster with Eigen (67.6 -> 40.3 ms), PGD-10 1.62x, train step 1.59x (106.1 -> 66.9 ms),
forward pass 0.99x; SmallGAP's small convolutions 0.77x on the forward pass, 1.01-1.18x on the
others; on two devices YNNPACK is the faster (PoolGAP 1.08-1.19x, SmallGAP 0.97-1.43x).
:func:`convolution_backend` says which one compiled code uses. A user's own
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is left as it is, and
``JAXADV_FASTPATH=0`` leaves XLA's default. Other XLA:CPU flags (``xla_cpu_use_xnnpack``,
``xla_cpu_use_onednn``, ``xla_cpu_experimental_xnn_graph_fusion_mode``,
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
inputs. Summing the metrics inside the step (:func:`jaxadv.training.accumulating`), so that
nothing else is dispatched between steps, was not enough: on 2026-12-07 the README's 10-epoch
``jaxadv train`` on two host devices still aborted in 3 of 3 runs. jaxadv's loops over several
CPU devices (training, evaluation, robust-accuracy curves) now let each step finish before
launching the next (:func:`jaxadv.sharding.waits_between_steps`: 5 of 5 runs finished, at the
same speed). Aborting after a minute lets a resumable run restart; a long timeout would leave it
hung.
"""

import os
import re
import sys
import warnings

_FLAG = "--xla_force_host_platform_device_count"
_TIMEOUT_FLAG = "--xla_cpu_collective_call_terminate_timeout_seconds"
_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_EIGEN_CONVOLUTIONS = f"{_CONV_FLAG}=-individual_convolution"


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
    set_cpu_convolution_flags()
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


# Models whose CPU steps were faster on one XLA host device than split over one device per core
# (see :func:`default_host_device_count`).
ONE_HOST_DEVICE_MODELS = frozenset({"preact_resnet18"})


def default_host_device_count(model_name: str | None) -> int | None:
    """The host device count for a CPU run of ``model_name`` when the user chose none: 1 for the
    models in :data:`ONE_HOST_DEVICE_MODELS`, None (one device per core) for the others. What
    ``jaxadv train`` / ``jaxadv eval --config`` use without ``--host_devices``.

    Splitting the batch pays for jaxadv's small CNNs, whose single-device steps leave cores idle,
    but not for PreAct ResNet-18: on the 2-core EPYC VM (batch 128) its train step took 2,052-2,272
    ms on two host devices (``python -m experiments.benchmarks.host_memory --models
    preact_resnet18 --ops forward,train_step --rounds 2 --repeats 3 --host_devices 2 --settings
    reuse,no_reuse --out results/host_memory_inline_resnet_2dev.json``) and 1,130-1,200 ms on one
    (results/step_speed_winograd_1dev.json, step_speed_winograd_resnet_1dev.json), whose
    computations run inline and use the fast path's Winograd convolutions (jaxadv.host_memory,
    jaxadv.models.fastpath); its forward pass 383-398 ms against 329-355 ms."""
    if model_name is not None and model_name.lower() in ONE_HOST_DEVICE_MODELS:
        return 1
    return None


def env_switch(name: str, *, usage: str, automatic: tuple[str, ...] = ("",)) -> bool | None:
    """A jaxadv switch read from the environment variable ``name``: True (1 / true / on / yes),
    False (0 / false / off / no), None for the ``automatic`` values (unset or empty by default);
    anything else raises ValueError naming the variable, its value and ``usage``."""
    value = os.environ.get(name, "").strip().lower()
    if value in automatic:
        return None
    if value in ("0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes"):
        return True
    raise ValueError(f"{name}={value!r} is not understood; {usage}")


def fastpath_env_setting() -> bool | None:
    """The CPU fast path's setting from ``JAXADV_FASTPATH`` (``jaxadv.models.fastpath``): True
    (1), False (0: standard lowerings and XLA's default convolution library), None (unset or
    "auto": on for CPU)."""
    return env_switch("JAXADV_FASTPATH", automatic=("", "auto"),
                      usage="use 0 (standard lowerings), 1 (fast path everywhere it applies) or "
                            "leave it unset (fast path on CPU).")


def _host_device_count(xla_flags: str) -> int:
    """The host device count ``xla_flags`` asks for (XLA's default: 1)."""
    found = re.findall(rf"{_FLAG}=(\d+)", xla_flags)
    return int(found[-1]) if found else 1


def _with_convolution_flags(xla_flags: str, *, cores: int, fastpath_off: bool = False) -> str:
    """``xla_flags`` with YNNPACK's convolutions off (:data:`_EIGEN_CONVOLUTIONS`) when each host
    device has >= 2 cores, without it otherwise. That exact flag is jaxadv's to add and take out;
    any other setting of ``--xla_cpu_experimental_ynn_fusion_type`` is the user's and is kept."""
    kept = [f for f in xla_flags.split() if f != _EIGEN_CONVOLUTIONS]
    if any(f.startswith(_CONV_FLAG) for f in kept):
        return xla_flags
    if not fastpath_off and cores >= 2 * _host_device_count(xla_flags):
        kept.append(_EIGEN_CONVOLUTIONS)
    return " ".join(kept)


def set_cpu_convolution_flags() -> bool:
    """Adds ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to ``XLA_FLAGS``
    where each host device has at least two cores (module docstring: XLA:CPU's convolutions then
    run with Eigen on every core instead of YNNPACK on one), and takes it out again where
    :func:`use_host_devices` gives every core its own device.

    Called by ``import jaxadv`` and :func:`use_host_devices`; it takes effect only before JAX's
    backends start. Any other value of that flag in ``XLA_FLAGS`` is the user's and is kept
    (``=+individual_convolution`` keeps YNNPACK's convolutions everywhere);
    ``JAXADV_FASTPATH=0`` leaves XLA's default. Called after JAX's backend has started, when
    the flag would be added, it warns: it can no longer take effect (the attributions benchmark
    did this until 2026-12-06: it measured the matmul peak first, and its one-device runs timed
    YNNPACK's convolutions; docs/performance.md, "Correction (2026-12-06)").

    Returns:
      Whether ``XLA_FLAGS`` now holds jaxadv's flag.
    """
    before = os.environ.get("XLA_FLAGS")
    flags = _with_convolution_flags(before or "", cores=os.cpu_count() or 1,
                                    fastpath_off=fastpath_env_setting() is False)
    if flags != (before or ""):
        os.environ["XLA_FLAGS"] = flags
    wanted = _EIGEN_CONVOLUTIONS in flags.split()
    if wanted and _EIGEN_CONVOLUTIONS not in (before or "").split() and _backends_started():
        warnings.warn(
            "JAX's CPU backend started before jaxadv set XLA_FLAGS' "
            f"{_EIGEN_CONVOLUTIONS} (XLA:CPU convolutions on every core instead of one), so "
            "the flag cannot take effect in this process: convolutions run on one core each (see "
            "jaxadv.devices). Import jaxadv before the first JAX operation: in a notebook, "
            "restart the kernel and import it in the first cell; in a script, at the top.",
            stacklevel=2)
    return wanted


def _backends_started() -> bool:
    """Whether JAX has started its backends in this process (False if jax is not imported, or
    if this JAX version does not say)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


# XLA:CPU's convolution library -> the compile options that select it for one program
# (``jax.jit(f).lower(...).compile(compiler_options=...)``), whatever ``XLA_FLAGS`` say. The rest
# of XLA's default library fusions (jaxlib 0.10: YNNPACK's dots and reductions) stays on in both,
# so each equals what a process with that library compiles by default (tested). Until
# 2026-12-05 (afternoon) both left YNNPACK's reductions out, so the other library's contestant of
# ``step_speed --compare_conv_backend`` ran without them: the comparisons of that morning
# (results/step_speed_conv_{1,2}dev.json) are superseded by results/step_speed_conv_*_fixed.json.
_DEFAULT_LIBRARY_FUSIONS = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "LIBRARY_FUSION_TYPE_REDUCE")
CONVOLUTION_BACKEND_OPTIONS = {
    "ynnpack": {"xla_cpu_experimental_ynn_fusion_type": ",".join(
        _DEFAULT_LIBRARY_FUSIONS + ("LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",))},
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ",".join(_DEFAULT_LIBRARY_FUSIONS)},
}


def convolution_backend() -> str:
    """Which library XLA:CPU runs convolutions with in this process: ``"ynnpack"`` (one thread
    per convolution) or ``"eigen"`` (XLA's intra-op thread pool); ``"none"`` when JAX's default
    backend is not the CPU. Compiles (does not run) a 3x3 convolution of 2x8x8x32 zeros, a size
    YNNPACK takes (XLA leaves the smallest convolutions to Eigen either way); this starts JAX's
    backends."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    if jax.default_backend() != "cpu":
        return "none"
    x, k = jnp.zeros((2, 8, 8, 32)), jnp.zeros((3, 3, 32, 32))
    conv = jax.jit(lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return "ynnpack" if "__ynn_fusion" in conv.lower(x, k).compile().as_text() else "eigen"
