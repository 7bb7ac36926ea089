"""jaxadv.host_memory: glibc keeps the memory XLA frees, so calls stop page-faulting it in again."""

import json
import subprocess
import sys
import textwrap

import pytest

from jaxadv import devices, host_memory
from tests.conftest import REPO, fresh_process_env

glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="needs Linux with glibc")

# A jitted function with a 32 MiB result (a 4096 x 2048 product, dropped after each call; glibc maps
# blocks this size on their own), called after a warm-up; prints the setting and the median of the
# minor page faults per call. (Median: the call may run on any of XLA's threads, each with its own
# glibc arena, and an arena that has not yet held the block faults it in once.)
_FAULTS = textwrap.dedent("""
    import json, resource
    import jaxadv
    import jax, jax.numpy as jnp
    from jaxadv import host_memory
    x = jnp.ones((4096, 64), jnp.float32)
    f = jax.jit(lambda x: x @ x[:2048].T)
    for _ in range(10):
        f(x).block_until_ready()
    faults = []
    for _ in range(11):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"applied": host_memory.is_applied(), "faults": sorted(faults)[5]}))
""")

# The same with a 96 MiB result (4096 x 6144), more than a worker thread's glibc arena can hold:
# with asynchronous dispatch XLA allocates it on a worker thread and glibc maps it afresh every
# call, whatever the malloc settings; inline dispatch allocates it in the main arena.
_BIG_FAULTS = _FAULTS.replace("x @ x[:2048].T", "x @ jnp.tile(x, (2, 1))[:6144].T").replace(
    '"applied": host_memory.is_applied(),',
    '"applied": host_memory.is_applied(), "inline": host_memory.runs_inline(),')


def _faults_per_call(setting: str | None, script: str = _FAULTS, **extra_env) -> dict:
    env = fresh_process_env()  # without JAXADV_REUSE_HOST_MEMORY or JAX_CPU_ENABLE_ASYNC_DISPATCH
    if setting is not None:
        env[host_memory.ENV] = setting
    env.update(extra_env)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("value,expected", [("", None), ("1", True), ("on", True), ("0", False),
                                            ("false", False), (" OFF ", False)])
def test_env_setting(monkeypatch, value, expected):
    monkeypatch.setenv(host_memory.ENV, value)
    assert host_memory.env_setting() is expected


def test_env_setting_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv(host_memory.ENV, "maybe")
    with pytest.raises(ValueError, match="JAXADV_REUSE_HOST_MEMORY='maybe'.*use 0"):
        host_memory.env_setting()


def test_accelerator_plugin_keeps_malloc_unless_asked(monkeypatch):
    import importlib.util

    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # every plugin found
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert host_memory.accelerator_installed()
    assert host_memory.reuse_freed_memory_unless_disabled() is False and not calls
    monkeypatch.setenv(host_memory.ENV, "1")  # asked for explicitly
    assert host_memory.reuse_freed_memory_unless_disabled() is True and calls == [1]
    monkeypatch.delenv(host_memory.ENV)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the accelerator is not used
    assert not host_memory.accelerator_installed()
    assert host_memory.reuse_freed_memory_unless_disabled() is True and calls == [1, 1]
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.reuse_freed_memory_unless_disabled() is False and calls == [1, 1]


@glibc
def test_import_keeps_freed_memory_and_stops_page_faults():
    on, off = _faults_per_call(None), _faults_per_call("0")
    assert on["applied"] and not off["applied"]
    # Without reuse each call maps and zeroes the 32 MiB result again (8,192 pages); with it the
    # heap keeps that memory from the warm-up on.
    assert off["faults"] > 6000, off
    assert on["faults"] < 500, on


@glibc
def test_inline_dispatch_keeps_blocks_larger_than_a_thread_arena():
    inline = _faults_per_call(None, _BIG_FAULTS)
    kept_async = _faults_per_call(None, _BIG_FAULTS, JAX_CPU_ENABLE_ASYNC_DISPATCH="true")
    off = _faults_per_call("0", _BIG_FAULTS)
    assert inline["applied"] and inline["inline"], inline
    # The user's JAX_CPU_ENABLE_ASYNC_DISPATCH stands: malloc settings on, dispatch asynchronous.
    assert kept_async["applied"] and not kept_async["inline"], kept_async
    assert not off["applied"] and not off["inline"], off
    # 96 MiB = 24,576 pages: faulted in every call unless the main arena serves the block.
    assert kept_async["faults"] > 20000 and off["faults"] > 20000, (kept_async, off)
    assert inline["faults"] < 500, inline


def test_inline_dispatch_leaves_a_started_backend_and_the_users_choice(monkeypatch):
    import jax

    updates = []
    monkeypatch.setattr(jax.config, "update", lambda *a: updates.append(a))
    monkeypatch.setattr(host_memory, "_inline", False)
    monkeypatch.setenv(host_memory.ASYNC_DISPATCH_ENV, "true")
    assert host_memory.run_cpu_computations_inline() is False
    monkeypatch.delenv(host_memory.ASYNC_DISPATCH_ENV)
    monkeypatch.setattr(devices, "_backends_started", lambda: True)  # too late to change
    assert host_memory.run_cpu_computations_inline() is False and not host_memory.runs_inline()
    monkeypatch.setattr(devices, "_backends_started", lambda: False)
    assert host_memory.run_cpu_computations_inline() is True and host_memory.runs_inline()
    assert updates == [("jax_cpu_enable_async_dispatch", False)]
    assert host_memory.run_cpu_computations_inline() is True and len(updates) == 1  # idempotent


def test_no_reuse_keeps_asynchronous_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: True)
    monkeypatch.setattr(host_memory, "run_cpu_computations_inline", lambda: calls.append(1))
    monkeypatch.setenv(host_memory.ENV, "0")
    assert host_memory.reuse_freed_memory_unless_disabled() is False and not calls
    monkeypatch.setenv(host_memory.ENV, "1")
    assert host_memory.reuse_freed_memory_unless_disabled() is True and calls == [1]
