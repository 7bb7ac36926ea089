"""The command line end to end: SIGKILL-and-resume, config overrides, eval of an official
checkpoint, usage errors. Each test runs ``python -m experiments.main`` in a subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import REPO
from tests.training.helpers import make_synthetic_idx

CONFIG = str(REPO / "experiments" / "configs" / "fashion_mnist_smallgap.py")
QUICK = [f"--config={CONFIG}:quick", "--config.train.batch_size=32",
         "--config.optimizer.schedule=constant", "--config.train.log_every=10",
         "--config.train.checkpoint_every=10", "--config.eval.batch_size=64",
         "--config.eval.num_examples=-1", "--host_devices=2"]


def _env(data_dir):
    env = dict(os.environ, JAXADV_FASHION_MNIST_DIR=str(data_dir), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # let the entry point choose the host devices
    return env


def _cmd(*args):
    return [sys.executable, "-m", "experiments.main", *args]


def _final_params(workdir, steps):
    from experiments.configs import fashion_mnist_smallgap
    from jaxadv.training import restore_for_eval

    cfg = fashion_mnist_smallgap.get_config("quick")
    cfg.train.num_steps = steps
    cfg.train.batch_size = 32
    cfg.optimizer.schedule = "constant"
    state, _ = restore_for_eval(cfg, str(workdir))
    assert int(state.step) == steps
    return jax.device_get(state.params)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_synthetic_idx(tmp_path_factory.mktemp("fmnist"), num_train=1024)


def test_sigkill_then_rerun_resumes_to_identical_params(data_dir, tmp_path):
    steps = 160
    args = [*QUICK, f"--config.train.num_steps={steps}"]
    ref = subprocess.run(_cmd("train", *args, f"--workdir={tmp_path / 'ref'}"), cwd=REPO,
                         env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]

    work = tmp_path / "killed"
    proc = subprocess.Popen(_cmd("train", *args, f"--workdir={work}"), cwd=REPO,
                            env=_env(data_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (work / "checkpoints" / "30" / "commit_success.txt").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "checkpoints" / str(steps)).exists()

    rerun = subprocess.run(_cmd("train", *args, f"--workdir={work}"), cwd=REPO,
                           env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "Resuming from the checkpoint at step" in rerun.stdout
    jax.tree.map(np.testing.assert_array_equal, _final_params(tmp_path / "ref", steps),
                 _final_params(work, steps))
    r1 = json.loads((tmp_path / "ref" / "results.json").read_text())
    r2 = json.loads((work / "results.json").read_text())
    assert r1["test_accuracy"] == r2["test_accuracy"]


def test_config_override_and_main_output(data_dir, tmp_path):
    out = subprocess.run(_cmd("train", *QUICK, "--config.train.num_steps=7",
                              f"--workdir={tmp_path / 'w'}"), cwd=REPO, env=_env(data_dir),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Test accuracy:" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["step"] == 7 and result["num_test_examples"] == 128
    saved = json.loads((tmp_path / "w" / "config.json").read_text())
    assert saved["train"]["num_steps"] == 7
    bad = subprocess.run(_cmd("train", *QUICK, "--config.train.no_such_field=1",
                              f"--workdir={tmp_path / 'w2'}"), cwd=REPO, env=_env(data_dir),
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "no_such_field" in bad.stderr


def test_eval_official_checkpoint(shared_data):
    out = subprocess.run(
        _cmd("eval", f"--checkpoint={shared_data / 'boopathy-mnist' / 'mnist_smallgap_normal_100.pkl'}",
             "--dataset=mnist_idx", f"--data_dir={shared_data / 'mnist-test'}"),
        cwd=REPO, env=_env("/nonexistent"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["num_examples"] == 10_000 and result["accuracy"] >= 0.97


def test_usage_errors():
    out = subprocess.run(_cmd("fly"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "usage: jaxadv {train,eval}" in out.stderr
    out = subprocess.run(_cmd("train"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train needs --config and --workdir" in out.stderr
