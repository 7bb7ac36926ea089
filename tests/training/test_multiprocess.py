"""Two processes on localhost joined by jax.distributed (gloo CPU collectives) train the same
config on their halves of the data and end with the parameters of the single-process run."""

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import FAST_COMPILE_ENV, REPO
from tests.training.helpers import make_synthetic_idx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(nproc, data, workdir, out, *, timeout=300):
    """Runs ``nproc`` workers; logs go to files (a full pipe cannot block a worker), and the first
    worker to fail, or the timeout, stops all of them with every worker's log in the message."""
    port = _free_port()
    # Compile time dominates these few steps (both runs alike; 17.5 -> 12.5 s, alone).
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **FAST_COMPILE_ENV}
    log_paths = [f"{workdir}.log{i}" for i in range(nproc)]
    procs = []
    for i, log_path in enumerate(log_paths):
        with open(log_path, "w") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.training.multiprocess_worker", str(i), str(nproc),
                 str(port), str(data), str(workdir), str(out)], cwd=REPO, env=env,
                stdout=log, stderr=subprocess.STDOUT))

    def logs():
        return "\n".join(f"--- worker {i} ---\n" + open(p).read()[-3000:]
                         for i, p in enumerate(log_paths))

    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        failed = [p for p in procs if p.poll() not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.kill()
                p.wait()
            pytest.fail(("a worker failed" if failed else f"timed out after {timeout} s")
                        + "\n" + logs())
        time.sleep(0.5)
    assert all(p.returncode == 0 for p in procs), logs()
    return dict(np.load(out))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    data = make_synthetic_idx(tmp_path / "data", num_train=256, num_test=64)
    single = _run(1, data, tmp_path / "single", tmp_path / "single.npz")
    multi = _run(2, data, tmp_path / "multi", tmp_path / "multi.npz")
    assert single.keys() == multi.keys()
    for k in single:
        np.testing.assert_allclose(multi[k], single[k], rtol=2e-5, atol=2e-6, err_msg=k)
