"""Test set-up: 8 fake CPU devices (so sharding code runs on CPU), keys, shared data.

XLA_FLAGS must be set before JAX initialises its backends, hence at import time here.
"""

import os
import pathlib
import shutil
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()

# Most of the suite's time is XLA compiling small programs, so the suite compiles with most
# optimisations off (``jax_disable_most_optimizations``), in this process and in the child
# processes that inherit the environment (benchmark scripts, the entry point, notebooks'
# kernels). On the 2-core Xeon VM (2026-12-08, -n 2) the whole suite took 1,338 s at full
# optimisation and 1,160 s with it off in every process (none of the 250 slowest tests got
# slower); 1,084 s as set up now (slow tests first, below; fresh_process_env's processes at
# full optimisation). An explicit JAX_DISABLE_MOST_OPTIMIZATIONS (0 for full optimisation)
# wins; a test that needs full optimisation in a child process leaves the variable out of the
# child's environment (:func:`fresh_process_env` does, for processes that must start as a
# user's would).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Under pytest-xdist the workers share the cores: PyTorch's OpenMP pool (the peer libraries'
# tests) then defaults to every core in every worker, and its waiting threads spin while the other
# worker computes. One share of the cores per worker (before torch is imported; child processes
# inherit it) took the peer-benchmark tests from 161 to 82 s on the 2-core VM (-n 2; e.g.
# test_peer_autoattack_apgd_over_seeds_smoke 71 -> 6 s, 7 s when run alone). An explicit
# OMP_NUM_THREADS wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT", "").isdigit():
    os.environ.setdefault("OMP_NUM_THREADS", str(max(
        1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

# A run killed before its end (SIGKILL, a CI timeout) cannot remove its cache (about 330 MB for
# the whole suite); the next run removes it (:func:`remove_stale_jit_caches`).
JIT_CACHE_PREFIX = "jaxadv-tests-jit-cache-"


def jit_cache_owner(name: str) -> int | None:
    """The process id in a run's cache directory name (``JIT_CACHE_PREFIX<pid>-...``), or None
    where ``name`` is not one."""
    if not name.startswith(JIT_CACHE_PREFIX):
        return None
    pid = name[len(JIT_CACHE_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_jit_caches(directory: str, *, min_age_s: float = 3600.0) -> list[str]:
    """Removes the compilation caches that earlier test runs left in ``directory`` (named
    ``JIT_CACHE_PREFIX<pid>-...`` by the run's process): those whose process is gone and that
    have not changed for ``min_age_s`` seconds (so that a run of another PID namespace sharing
    the directory keeps its cache). Returns the paths removed."""
    removed = []
    for path in pathlib.Path(directory).glob(JIT_CACHE_PREFIX + "*"):
        pid = jit_cache_owner(path.name)
        if pid is None or not path.is_dir():
            continue
        try:
            os.kill(pid, 0)
            continue  # the run is alive
        except ProcessLookupError:
            pass
        except OSError:  # alive, another user's
            continue
        try:
            if time.time() - path.stat().st_mtime < min_age_s:
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


# One persistent compilation cache per test run, in a fresh temporary directory: the pytest-xdist
# workers and the child processes tests start (benchmark scripts, the entry point, notebook
# kernels) inherit it, so a program that one of them compiled (same HLO, same options) is loaded,
# not compiled again, by the others or by a later test of the same process that traces it anew.
# Every program is kept (JAX keeps only those that took a second to compile by default; most of
# the suite's take less). A fresh directory per run keeps each run what CI runs. A cache set by
# the caller (JAX_COMPILATION_CACHE_DIR, empty to switch it off) is left as it is.
_OWN_JIT_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    remove_stale_jit_caches(tempfile.gettempdir())
    _OWN_JIT_CACHE = tempfile.mkdtemp(prefix=f"{JIT_CACHE_PREFIX}{os.getpid()}-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_JIT_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import contextlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# On an accelerator (``JAX_PLATFORMS=cuda``/``tpu``) matmuls and convolutions default to TF32/bf16
# passes; the tolerances here are written for float32 (closed forms, IG completeness, peer parity), so
# the suite runs at full float32 there, as it does on CPU (where this setting changes nothing).
if os.environ["JAX_PLATFORMS"] != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")

# Strict dtype promotion is not switched on globally: optax's Adam (bias correction ``decay ** count``
# with an int count) fails under it. Tests of jaxadv's own numerics can opt in with the fixture below.


@pytest.fixture
def strict_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


@contextlib.contextmanager
def most_optimizations_off():
    """XLA compiles with most optimisations off inside the block (``jax_disable_most_optimizations``),
    for tests dominated by compile time: about 2x faster for a ResNet train step. The suite's
    default since 2026-12-08 (top of this file); the block keeps it for a run that switched it
    back on (JAX_DISABLE_MOST_OPTIMIZATIONS=0)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


# The environment form of :func:`most_optimizations_off`, for child processes (benchmark scripts,
# the entry point, notebooks' kernels, multi-process workers) whose tiny test runs check a
# program, not its speed, and spend most of their time compiling.
FAST_COMPILE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@pytest.fixture
def fast_compile():
    """One test under :func:`most_optimizations_off` (deep models, one step)."""
    with most_optimizations_off():
        yield


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def fresh_process_env(*, keep_fastpath: bool = False) -> dict:
    """Environment for a fresh Python process that must start JAX as a user's would: on CPU,
    without this process's ``XLA_FLAGS`` (the test session's host-device count and flags),
    ``JAXADV_REUSE_HOST_MEMORY``, ``JAX_CPU_ENABLE_ASYNC_DISPATCH`` or the suite's
    ``JAX_DISABLE_MOST_OPTIMIZATIONS`` and, unless ``keep_fastpath``, without
    ``JAXADV_FASTPATH``."""
    drop = ("XLA_FLAGS", "JAXADV_REUSE_HOST_MEMORY", "JAX_CPU_ENABLE_ASYNC_DISPATCH",
            "JAX_DISABLE_MOST_OPTIMIZATIONS")
    drop += () if keep_fastpath else ("JAXADV_FASTPATH",)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data (MNIST test set, official checkpoints); skips with a clear message where it
    is missing (users do not have it; CI and developers do)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is missing: these tests need the project's shared data "
                    "(MNIST test set and the official Boopathy et al. checkpoints).")
    return SHARED_DATA


def torch_or_skip():
    """Imports torch or skips (peer cross-checks run where the `bench` extra is installed)."""
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install -e .[bench])")


def pytest_collection_modifyitems(config, items):
    """Runs the tests marked ``slow`` first (the longest-first rule of scheduling): under
    pytest-xdist a minute-long test that starts last keeps one worker busy after the other has
    finished."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


def pytest_unconfigure(config):
    """Removes the run's compilation cache (in the process that made it: the xdist controller,
    or pytest itself without xdist)."""
    if _OWN_JIT_CACHE is not None:
        shutil.rmtree(_OWN_JIT_CACHE, ignore_errors=True)
