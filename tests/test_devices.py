"""use_host_devices: sets the host device count before JAX initialises, refuses afterwards."""

import os
import subprocess
import sys

import jax
import pytest

from jaxadv.devices import (
    _with_count,
    _with_timeout,
    use_host_devices,
    use_host_devices_unless_set,
)
from tests.conftest import REPO, fresh_process_env


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


def test_an_explicit_count_in_xla_flags_wins(monkeypatch):
    """The experiment scripts' call: a count already in XLA_FLAGS is kept and nothing changes;
    without one, the count is set (here the one in effect, since the backends exist)."""
    # The backends first: started under the made-up flags below, XLA would abort the process
    # (unknown flag), which happened when this test was the first of a pytest worker.
    have = len(jax.devices("cpu"))
    flags = "--xla_cpu_foo=1 --xla_force_host_platform_device_count=5"
    monkeypatch.setenv("XLA_FLAGS", flags)
    assert use_host_devices_unless_set() is None and use_host_devices_unless_set(3) is None
    assert os.environ["XLA_FLAGS"] == flags
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    assert use_host_devices_unless_set(have) == have
    assert os.environ["XLA_FLAGS"] == (
        f"--xla_cpu_foo=1 --xla_force_host_platform_device_count={have}")


def test_before_initialisation_in_a_fresh_process():
    code = ("import jax\nfrom jaxadv.devices import use_host_devices\nuse_host_devices(3)\n"
            "print(jax.device_count())")
    env = fresh_process_env(keep_fastpath=True)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "3"


def test_collective_timeout_flag():
    t = "--xla_cpu_collective_call_terminate_timeout_seconds"
    assert _with_timeout("", None) == ""  # XLA's default unless asked
    assert _with_timeout(f"--xla_cpu_foo=1 {t}=5", None) == f"--xla_cpu_foo=1 {t}=5"  # kept
    assert _with_timeout("--xla_cpu_foo=1", 9) == f"--xla_cpu_foo=1 {t}=9"
    assert _with_timeout(f"{t}=5 --xla_cpu_foo=1", 7) == f"--xla_cpu_foo=1 {t}=7"  # replaced
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="collective_timeout_s"):
            use_host_devices(2, collective_timeout_s=bad)


# Shard 0 spins for a few seconds before an all-reduce that shard 1 reaches at once: the skew a
# loaded machine produced in a 2-device training run (one device thread over 60 s late).
_SKEW = """
import sys
from jaxadv.devices import use_host_devices
use_host_devices(2, collective_timeout_s=int(sys.argv[1]))
import jax, jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

def body(n):
    def step(c):
        return c[0] + 1, jnp.tanh(c[1] @ c[1])
    _, a = jax.lax.while_loop(lambda c: c[0] < n[0], step, (0, jnp.eye(256) * 0.5))
    return jax.lax.psum(a[:1, :1], "d")

mesh = Mesh(jax.devices(), ("d",))
f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P("d"), out_specs=P()))
print("done", float(f(jnp.array([30000, 0], jnp.int32))[0, 0]))
"""


@pytest.mark.slow
def test_collective_timeout_decides_whether_a_late_device_aborts_the_process():
    env = fresh_process_env(keep_fastpath=True)
    env["XLA_FLAGS"] = "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1"  # abort sooner

    def run(timeout_s):
        return subprocess.run([sys.executable, "-c", _SKEW, str(timeout_s)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    aborted = run(1)
    assert aborted.returncode != 0 and "Termination timeout" in aborted.stderr
    waited = run(600)
    assert waited.returncode == 0, waited.stderr[-2000:]
    assert "done" in waited.stdout


def test_convolution_flag_follows_cores_per_device():
    """jaxadv's YNNPACK-convolutions-off flag: added where each host device has >= 2 cores, taken
    out where it has fewer, a user's own setting of the flag kept, nothing with the fast path
    off."""
    from jaxadv.devices import _EIGEN_CONVOLUTIONS as ours
    from jaxadv.devices import _with_convolution_flags as flags

    count = "--xla_force_host_platform_device_count"
    assert flags("", cores=2) == ours  # one device, two cores
    assert flags("", cores=1) == ""
    assert flags(f"{count}=2", cores=2) == f"{count}=2"
    assert flags(f"{count}=2", cores=4) == f"{count}=2 {ours}"
    assert flags(f"{count}=2 {ours}", cores=2) == f"{count}=2"  # use_host_devices(2) on 2 cores
    assert flags(f"{ours} {count}=1", cores=2) == f"{count}=1 {ours}"  # kept once
    assert flags("--xla_cpu_foo=1", cores=8, fastpath_off=True) == "--xla_cpu_foo=1"
    assert flags(ours, cores=8, fastpath_off=True) == ""
    user = "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution"
    assert flags(user, cores=8) == user
    assert flags(f"{count}=8 {user}", cores=2) == f"{count}=8 {user}"


_BACKEND = """
import os, sys
import jaxadv
from jaxadv.devices import convolution_backend, use_host_devices
if len(sys.argv) > 1:
    use_host_devices(int(sys.argv[1]))
print(convolution_backend(), os.environ.get("XLA_FLAGS", ""))
"""


@pytest.mark.parametrize("devices,fastpath", [(None, ""), (1, ""), (2, ""), (None, "0")])
def test_convolution_backend_in_a_fresh_process(devices, fastpath):
    """What compiled code runs: Eigen's threaded convolutions where a device has >= 2 cores
    (``import jaxadv`` alone, one device), YNNPACK's where every core has its own device, and
    XLA's default (YNNPACK) with ``JAXADV_FASTPATH=0``."""
    env = fresh_process_env()
    if fastpath:
        env["JAXADV_FASTPATH"] = fastpath
    argv = [sys.executable, "-c", _BACKEND] + ([] if devices is None else [str(devices)])
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    backend = out.stdout.split()[0]
    cores = os.cpu_count() or 1
    expected = "eigen" if cores >= 2 * (devices or 1) and fastpath != "0" else "ynnpack"
    assert backend == expected, out.stdout


_LATE_IMPORT = """
import os, sys, warnings
os.cpu_count = lambda: 4  # a device with >= 2 cores: jaxadv wants Eigen's convolutions
import jax
if sys.argv[1] == "late":
    jax.numpy.zeros(1).block_until_ready()  # JAX's backend starts before jaxadv is imported
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import jaxadv
    from jaxadv.devices import convolution_backend
    backend = convolution_backend()
print(backend, len(caught))
for w in caught:
    print(w.category.__name__, w.message)
"""


@pytest.mark.parametrize("order", ["late", "first"])
def test_importing_jaxadv_after_jax_started_warns(order):
    """``import jaxadv`` after JAX's first computation cannot switch XLA:CPU's convolutions to
    Eigen (XLA reads XLA_FLAGS when its backend starts): YNNPACK's stay, and a warning says so
    and names the fix. Imported first, Eigen's convolutions and no warning."""
    env = fresh_process_env()
    out = subprocess.run([sys.executable, "-c", _LATE_IMPORT, order], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    backend, warned = lines[0].split()
    if order == "late":
        assert (backend, warned) == ("ynnpack", "1"), out.stdout
        assert lines[1].startswith("UserWarning")
        assert "before the first JAX operation" in lines[1] and "restart" in lines[1]
    else:
        assert (backend, warned) == ("eigen", "0"), out.stdout


_DEFAULT_EQUALS_OPTIONS = """
import re, sys
import jaxadv, jax, jax.numpy as jnp
from jax import lax
from jaxadv.devices import CONVOLUTION_BACKEND_OPTIONS, convolution_backend

def f(x, k, w):  # a convolution, a tiled max pool (a reduction) and a dot
    y = lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jnp.max(y.reshape(8, 8, 2, 8, 2, 32), axis=(2, 4))
    return jnp.mean(y, axis=(1, 2)) @ w

args = (jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((32, 10)))
lowered = jax.jit(f).lower(*args)
ops = lambda t: sorted(re.findall(r"= \\S+ ([\\w-]+)\\(", t[t.index("ENTRY"):]))
default = lowered.compile().as_text()
backend = convolution_backend()
chosen = lowered.compile(CONVOLUTION_BACKEND_OPTIONS[backend]).as_text()
same = ops(chosen) == ops(default) and chosen.count("__ynn") == default.count("__ynn")
print(backend, same, default.count("__ynn_fusion"))
"""


@pytest.mark.parametrize("fastpath", ["", "0"])
def test_convolution_backend_options_equal_the_process_default(fastpath):
    """Each entry of ``CONVOLUTION_BACKEND_OPTIONS`` compiles what a process with that library
    compiles by default (YNNPACK's reductions and dots included), in a fresh process with Eigen's
    convolutions (``import jaxadv`` on one device) and with XLA's default (``JAXADV_FASTPATH=0``)."""
    env = fresh_process_env()
    if fastpath:
        env["JAXADV_FASTPATH"] = fastpath
    out = subprocess.run([sys.executable, "-c", _DEFAULT_EQUALS_OPTIONS], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    backend, same, fusions = out.stdout.split()
    assert same == "True", out.stdout
    assert int(fusions) >= 2  # the reduction and the dot at least
    cores = os.cpu_count() or 1
    assert backend == ("ynnpack" if fastpath == "0" or cores < 2 else "eigen")


def test_convolution_backend_options_select_the_library():
    """``CONVOLUTION_BACKEND_OPTIONS`` compile one program with either library, whatever
    XLA_FLAGS say; both compute the same convolution."""
    import jax.numpy as jnp
    from jax import lax

    from jaxadv.devices import CONVOLUTION_BACKEND_OPTIONS

    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32))
    lowered = jax.jit(lambda x, k: lax.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, k)
    outs = {}
    for lib, options in CONVOLUTION_BACKEND_OPTIONS.items():
        compiled = lowered.compile(compiler_options=options)
        assert ("__ynn_fusion" in compiled.as_text()) == (lib == "ynnpack")
        outs[lib] = compiled(x, k)
    assert float(jnp.max(jnp.abs(outs["eigen"] - outs["ynnpack"]))) < 1e-4 * float(
        jnp.max(jnp.abs(outs["eigen"])))
