"""jaxadv.host_memory: glibc keeps the memory XLA frees, so calls stop page-faulting it in again."""

import json
import subprocess
import sys
import textwrap

import pytest

from jaxadv import host_memory
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


def _faults_per_call(setting: str | None) -> dict:
    env = fresh_process_env()  # without JAXADV_REUSE_HOST_MEMORY
    if setting is not None:
        env[host_memory.ENV] = setting
    res = subprocess.run([sys.executable, "-c", _FAULTS], cwd=REPO, env=env, capture_output=True,
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
