"""Host memory reuse on CPU: keep the memory XLA frees in the process, so the next call does not
page-fault it in again.

XLA:CPU allocates the buffers of every call of a compiled function with ``malloc``: its outputs,
one block for all of its temporaries, and the scratch space of its convolutions, and frees them
when the call ends. glibc's ``malloc`` serves blocks above a threshold (128 KiB, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns them with ``munmap``, and it gives the
freed top of its heaps back to the kernel. The next call then touches new pages, and the kernel
zeroes each 4 KiB page at its first touch (a minor page fault): a PoolGAP train step (batch 128)
faulted 8,860 pages (35 MiB) per call, every call.

:func:`reuse_freed_memory` sets ``mallopt`` so that glibc keeps what it frees and serves it
again: no block is mapped on its own while a heap can hold it (``M_MMAP_MAX=0``), heaps are never
trimmed (``M_TRIM_THRESHOLD`` off) and grow 256 MiB at a time (``M_TOP_PAD``; address space, not
resident memory, until used). After the first call of a step the process's resident memory stays
at its high-water mark (as PyTorch's and JAX's own accelerator allocators keep theirs) and calls
fault almost no pages. Peak memory changes little (the attribution benchmark's IG with 200 points
at batch 128 on SmallGAP: 50 MB above its baseline process with the setting, 31 MB in an earlier
run without).

Blocks of more than 64 MiB need one more step. glibc gives every thread that allocates its own
arena, and an arena other than the main one holds at most 64 MiB, so larger blocks are mapped and
unmapped every call whatever the settings. JAX's CPU client runs each computation on a worker
thread by default (asynchronous dispatch), so PreAct ResNet-18's 900 MiB of temporaries were
faulted in again every train step (229,000 faults). :func:`run_cpu_computations_inline` runs
single-device CPU computations in the thread that calls them (``jax_cpu_enable_async_dispatch``
off), whose main arena grows without bound: ResNet-18's train step faulted 869 pages per call
instead of 228,964, and its forward pass, PGD step and train step ran 1.17x, 1.21x and 1.25x
faster; PoolGAP's forward pass and PGD step ran 5-6 % slower, for reasons not known (the
benchmark below, ``results/host_memory_inline_*_1dev.json``, 2026-12-06). A call then returns
when its result is ready, as with ``block_until_ready``; computations over several devices
(:func:`jaxadv.devices.use_host_devices`) stay asynchronous, and their large blocks are still
mapped every call (ResNet-18 on two host devices: 500,737 faults per train step). Making every
thread share the main arena (``M_ARENA_MAX=1``) removed most faults too but made SmallGAP's and
PoolGAP's ops take up to 14 % longer (threads contending for one arena;
``results/host_memory_one_arena_gap_1dev.json``), and on two host devices it grew the heap
(``results/host_memory_one_arena_resnet_2dev.json``), so it is not set; glibc's transparent huge
pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, only at process start) are left to the user
(docs/performance.md, "Computations run in the calling thread").

``import jaxadv`` calls both on Linux with glibc unless ``JAXADV_REUSE_HOST_MEMORY=0`` (or an
accelerator plugin is installed and the variable is unset: :func:`accelerator_installed`); the
malloc settings apply to the whole process (PyTorch or NumPy in it too), from the call on; inline
dispatch only where JAX's backends have not started yet, and not where the user has set
``JAX_CPU_ENABLE_ASYNC_DISPATCH``.

Measured: ``python -m experiments.benchmarks.host_memory`` (each setting in its own process,
alternating over rounds); docs/performance.md ("Freed host memory kept for reuse",
"Computations run in the calling thread") has the figures.
"""

import ctypes
import ctypes.util
import os
import sys

from jaxadv import devices

ENV = "JAXADV_REUSE_HOST_MEMORY"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
TOP_PAD_BYTES = 256 * 2**20

_applied = False
_inline = False
ASYNC_DISPATCH_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"


def env_setting() -> bool | None:
    """``JAXADV_REUSE_HOST_MEMORY``: True (1 / true / on / yes), False (0 / false / off / no),
    None (unset: automatic, :func:`reuse_freed_memory_unless_disabled`), as
    :func:`jaxadv.devices.fastpath_env_setting` reads ``JAXADV_FASTPATH``; anything else raises
    ValueError naming the choices (:func:`jaxadv.devices.env_switch`)."""
    return devices.env_switch(ENV, usage="use 0 (leave malloc as it is) or 1 / unset (keep freed "
                                         "host memory for reuse).")


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def reuse_freed_memory() -> bool:
    """Sets glibc's ``mallopt`` so freed memory stays in the process for reuse (module
    docstring). Idempotent.

    Returns:
      True if the settings are in effect, False where this is not Linux with glibc (nothing
      changed).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        return False
    # -1 is SIZE_MAX once glibc takes the int as a size_t: never trim.
    for param, value in ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1), (_M_TOP_PAD, TOP_PAD_BYTES)):
        if libc.mallopt(param, value) != 1:
            return False
    _applied = True
    return True


def is_applied() -> bool:
    """Whether :func:`reuse_freed_memory` has set the allocator in this process."""
    return _applied


def run_cpu_computations_inline() -> bool:
    """Turns JAX's asynchronous CPU dispatch off (``jax_cpu_enable_async_dispatch=False``) so that
    single-device CPU computations run in the calling thread and their blocks of more than 64 MiB
    come from glibc's main arena, which :func:`reuse_freed_memory` keeps (module docstring).
    Idempotent.

    JAX reads the option when it starts its CPU backend, so this does nothing once the backends
    have started, nor where the user has set ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` (their choice
    stands).

    Returns:
      True if this process's CPU computations run inline from the backend's start on.
    """
    global _inline
    if _inline:
        return True
    if os.environ.get(ASYNC_DISPATCH_ENV, "").strip() or devices._backends_started():
        return False
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    _inline = True
    return True


def runs_inline() -> bool:
    """Whether :func:`run_cpu_computations_inline` has turned asynchronous CPU dispatch off."""
    return _inline


_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def accelerator_installed() -> bool:
    """Whether a JAX accelerator plugin (CUDA, ROCm, TPU) is installed and ``JAX_PLATFORMS`` does
    not restrict JAX to the CPU: there the host holds few large buffers, and a process that keeps
    all it frees would hold memory a data pipeline may need."""
    import importlib.util

    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms == "cpu":
        return False
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def reuse_freed_memory_unless_disabled() -> bool:
    """:func:`reuse_freed_memory` and then :func:`run_cpu_computations_inline`, unless
    ``JAXADV_REUSE_HOST_MEMORY=0``, or unless it is unset and an accelerator plugin is installed
    (:func:`accelerator_installed`): what ``import jaxadv`` calls. ``JAXADV_REUSE_HOST_MEMORY=1``
    applies them in any case. Returns whether the malloc settings are in effect."""
    setting = env_setting()
    if setting is False or (setting is None and accelerator_installed()):
        return False
    if not reuse_freed_memory():
        return False
    run_cpu_computations_inline()
    return True
