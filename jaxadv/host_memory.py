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

Not covered: blocks of more than 64 MiB that XLA's worker threads allocate (PreAct ResNet-18's
900 MiB of temporaries and its convolutions' scratch: 229,000 faults per train step). glibc's
per-thread arenas hold at most 64 MiB, so those are mapped and unmapped every call whatever the
settings, unless every thread shares the main arena (``M_ARENA_MAX=1``): that took ResNet-18's
steps 1.07-1.13x faster but made SmallGAP's and PoolGAP's ops other than PoolGAP's train step
2-15 % slower (SmallGAP PGD-10 0.90x, train step 0.85x; threads contending for one arena), so it
is not set (development runs of the benchmark below with that setting added, 2026-12-06).

``import jaxadv`` calls it on Linux with glibc unless ``JAXADV_REUSE_HOST_MEMORY=0`` (or an
accelerator plugin is installed and the variable is unset: :func:`accelerator_installed`); it
applies to the whole process (PyTorch or NumPy in it too), from the call on.

Measured: ``python -m experiments.benchmarks.host_memory`` (each setting in its own process,
alternating over rounds); README, "Speed against PyTorch", has the figures.
"""

import ctypes
import ctypes.util
import os
import sys

ENV = "JAXADV_REUSE_HOST_MEMORY"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
TOP_PAD_BYTES = 256 * 2**20

_applied = False


def env_setting() -> bool | None:
    """``JAXADV_REUSE_HOST_MEMORY``: True (1 / true / on / yes), False (0 / false / off / no),
    None (unset: automatic, :func:`reuse_freed_memory_unless_disabled`), as
    :func:`jaxadv.devices.fastpath_env_setting` reads ``JAXADV_FASTPATH``; anything else raises
    ValueError naming the choices."""
    value = os.environ.get(ENV, "").strip().lower()
    if value == "":
        return None
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{ENV}={value!r} is not understood; use 0 (leave malloc as it is) or 1 / "
                     "unset (keep freed host memory for reuse).")


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
    """:func:`reuse_freed_memory` unless ``JAXADV_REUSE_HOST_MEMORY=0``, or unless it is unset and
    an accelerator plugin is installed (:func:`accelerator_installed`): what ``import jaxadv``
    calls. ``JAXADV_REUSE_HOST_MEMORY=1`` applies it in any case. Returns whether the settings
    are in effect."""
    setting = env_setting()
    if setting is False or (setting is None and accelerator_installed()):
        return False
    return reuse_freed_memory()
