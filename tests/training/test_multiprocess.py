"""Two processes on localhost joined by jax.distributed (gloo CPU collectives) train the same
config on their halves of the data and end with the parameters of the single-process run."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.training.helpers import make_synthetic_idx

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(nproc, data, workdir, out):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.training.multiprocess_worker", str(i), str(nproc),
         str(port), str(data), str(workdir), str(out)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(nproc)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return dict(np.load(out))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    data = make_synthetic_idx(tmp_path / "data", num_train=256, num_test=64)
    single = _run(1, data, tmp_path / "single", tmp_path / "single.npz")
    multi = _run(2, data, tmp_path / "multi", tmp_path / "multi.npz")
    assert single.keys() == multi.keys()
    for k in single:
        np.testing.assert_allclose(multi[k], single[k], rtol=2e-5, atol=2e-6, err_msg=k)
