"""use_host_devices: sets the host device count before JAX initialises, refuses afterwards."""

import os
import subprocess
import sys

import jax
import pytest

from jaxadv.devices import _with_count, use_host_devices
from tests.conftest import REPO


def test_flag_rewriting():
    assert _with_count("", 3) == "--xla_force_host_platform_device_count=3"
    assert _with_count("--xla_cpu_foo=1 --xla_force_host_platform_device_count=8", 2) == (
        "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2")


def test_after_initialisation(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored afterwards
    have = len(jax.devices("cpu"))  # the backends are initialised (8 test devices)
    assert use_host_devices(have) == have  # the count in effect: a no-op
    with pytest.raises(RuntimeError, match="restart"):
        use_host_devices(have + 1)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            use_host_devices(bad)


def test_before_initialisation_in_a_fresh_process():
    code = ("import jax\nfrom jaxadv.devices import use_host_devices\nuse_host_devices(3)\n"
            "print(jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"
