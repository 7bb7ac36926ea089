"""The command line end to end: SIGKILL-and-resume, config overrides, eval of an official
checkpoint, usage errors. Each test runs ``python -m experiments.main`` in a subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.conftest import FAST_COMPILE_ENV, REPO
from tests.training.helpers import make_synthetic_idx

CONFIG = str(REPO / "experiments" / "configs" / "fashion_mnist_smallgap.py")
QUICK = [f"--config={CONFIG}:quick", "--config.train.batch_size=32",
         "--config.optimizer.schedule=constant", "--config.train.log_every=10",
         "--config.train.checkpoint_every=10", "--config.eval.batch_size=64",
         "--config.eval.num_examples=-1", "--host_devices=2"]


def _env(data_dir):
    env = dict(os.environ, JAXADV_FASHION_MNIST_DIR=str(data_dir), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # let the entry point choose the host devices
    # Compile time dominates these quick runs (this module's tests 55 -> 39 s, one at a time).
    return {**env, **FAST_COMPILE_ENV}


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


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_identical_params(data_dir, tmp_path):
    steps = 80
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


@pytest.mark.slow
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
    # the run renders into a self-contained HTML page with its figures inline
    rep = subprocess.run(_cmd("report", str(tmp_path / "w"), "--num_examples=3"), cwd=REPO,
                         env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-2000:]
    page = (tmp_path / "w" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2  # training curves, examples
    assert "Not shown" not in page and "results.json" in page and "http" not in page
    assert "7 steps x 32" in page  # the run's length as configured (epochs where num_steps < 0)
    check_in_browser(tmp_path / "w" / "report.html", num_images=2)
    # A rerun of the finished run trains nothing and keeps its timings (earlier: zeros).
    again = subprocess.run(_cmd("train", *QUICK, "--config.train.num_steps=7",
                                f"--workdir={tmp_path / 'w'}"), cwd=REPO, env=_env(data_dir),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = json.loads(again.stdout.strip().splitlines()[-1])
    for k in ("train_seconds", "examples_per_second", "compile_seconds"):
        assert rerun[k] == result[k] > 0, k
    # eval: a split the config does not have, or a mistyped one, is an error, not the test set;
    # a mistyped workdir is an error and is not created.
    for split, message in (("validation", "holds out no validation examples"),
                           ("trian", "unknown --split 'trian'")):
        ev = subprocess.run(_cmd("eval", *QUICK, f"--workdir={tmp_path / 'w'}", f"--split={split}"),
                            cwd=REPO, env=_env(data_dir), capture_output=True, text=True,
                            timeout=600)
        assert ev.returncode != 0 and message in ev.stderr, ev.stderr[-2000:]
    ev = subprocess.run(_cmd("eval", *QUICK, f"--workdir={tmp_path / 'typo'}"), cwd=REPO,
                        env=_env(data_dir), capture_output=True, text=True, timeout=600)
    assert ev.returncode != 0 and "holds no checkpoint" in ev.stderr, ev.stderr[-2000:]
    assert not (tmp_path / "typo").exists()


def test_eval_official_checkpoint(shared_data):
    out = subprocess.run(
        _cmd("eval", f"--checkpoint={shared_data / 'boopathy-mnist' / 'mnist_smallgap_normal_100.pkl'}",
             "--dataset=mnist_idx", f"--data_dir={shared_data / 'mnist-test'}"),
        cwd=REPO, env=_env("/nonexistent"), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # The README quotes this command's 98.41 %; two examples either way allow for float noise
    # across XLA versions.
    assert result["num_examples"] == 10_000 and abs(result["accuracy"] - 0.9841) <= 2e-4


def check_in_browser(page, *, num_images):
    """Loads ``page`` in headless chromium (Debian's) and checks that every figure decoded
    (naturalWidth > 0) and that the screenshot holds the figures' colours; skips without it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (`make test` installs Debian's chromium)")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", (
        "<script>window.addEventListener('load',()=>{const ok=[...document.images].filter("
        "i=>i.complete&&i.naturalWidth>0).length;document.title='decoded:'+ok;});</script>"
        "</body>")))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert f"<title>decoded:{num_images}</title>" in dom.stdout, dom.stderr[-2000:]
    shot = page.with_name("shot.png")
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    import matplotlib.image

    rgb = matplotlib.image.imread(shot)[..., :3]
    colourful = (rgb.max(-1) - rgb.min(-1)) > 0.3  # the plots' lines and the CAM colour maps
    assert colourful.mean() > 0.01, colourful.mean()


def test_report_errors(tmp_path):
    from jaxadv.report import write_report

    with pytest.raises(FileNotFoundError, match="not a directory"):
        write_report(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        write_report(str(tmp_path))
    with pytest.raises(ValueError, match="num_examples must be an int >= 1; got 0"):
        write_report(str(tmp_path), num_examples=0)


def test_usage_errors():
    out = subprocess.run(_cmd("fly"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "usage: jaxadv {train,eval,report}" in out.stderr
    out = subprocess.run(_cmd("train"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "train needs --config and --workdir" in out.stderr


def test_input_errors_print_their_message_without_a_traceback(data_dir, tmp_path):
    """An error in the input (here a missing checkpoint directory or data file) prints its message
    and exits with status 1, no traceback unless --traceback; --data_dir with --config is the
    config's dataset.data_dir (not silently ignored), and a failed start creates no workdir."""
    def run(*args):
        return subprocess.run(_cmd(*args), cwd=REPO, env=_env(data_dir), capture_output=True,
                              text=True, timeout=600)

    out = run("eval", *QUICK, f"--workdir={tmp_path / 'typo'}")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "jaxadv eval: error:" in out.stderr and "holds no checkpoint" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    out = run("eval", *QUICK, f"--workdir={tmp_path / 'typo'}", "--traceback")
    assert "Traceback" in out.stderr and "FileNotFoundError" in out.stderr, out.stderr[-2000:]

    out = run("train", *QUICK, f"--workdir={tmp_path / 'w'}", f"--data_dir={tmp_path / 'none'}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"{tmp_path / 'none'}/train-images-idx3-ubyte" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "w").exists()
    out = run("train", *QUICK, f"--workdir={tmp_path / 'w'}", "--dataset=mnist_idx")
    assert out.returncode != 0 and "--dataset is for eval --checkpoint" in out.stderr
    assert not (tmp_path / "w").exists()


def test_host_devices_default_is_model_aware():
    """Without ``--host_devices``, train and eval runs of PreAct ResNet-18 use one host device
    (measured faster on CPU: jaxadv.devices.default_host_device_count), other models one per core
    (0); a given flag always wins, and runs without a config keep the flag's value."""
    import ml_collections

    from experiments.main import host_device_flag

    def config(name):
        return ml_collections.ConfigDict({"model": {"name": name}})

    assert host_device_flag("train", config("preact_resnet18"), 0, False) == 1
    assert host_device_flag("eval", config("PreAct_ResNet18"), 0, False) == 1
    assert host_device_flag("train", config("smallgap"), 0, False) == 0
    assert host_device_flag("train", config("preact_resnet18"), 0, True) == 0  # --host_devices=0
    assert host_device_flag("train", config("preact_resnet18"), 2, True) == 2
    assert host_device_flag("eval", None, 0, False) == 0  # eval --checkpoint
    assert host_device_flag("report", config("preact_resnet18"), 0, False) == 0
    assert host_device_flag("train", ml_collections.ConfigDict({}), 0, False) == 0


@pytest.mark.slow
def test_two_host_devices_train_thousands_of_steps_without_a_collective_deadlock(data_dir,
                                                                                 tmp_path):
    """With several two-device train steps in flight XLA:CPU deadlocked at a step's all-reduce and
    aborted the process: the README's 10-epoch `jaxadv train` aborted in 3 of 3 runs, after 79 to
    3,684 steps (sharding.waits_between_steps). 3,000 steps at full optimisation, the collective
    abort after 20 + 5 s instead of 20 + 40 s."""
    env = {k: v for k, v in _env(data_dir).items() if k not in FAST_COMPILE_ENV}
    env["XLA_FLAGS"] = "--xla_cpu_collective_call_terminate_timeout_seconds=5"
    out = subprocess.run(
        _cmd("train", f"--config={CONFIG}", "--config.train.num_steps=3000",
             "--config.train.batch_size=128", "--config.train.log_every=1000",
             "--config.train.checkpoint_every=3000", "--config.eval.num_examples=256",
             "--host_devices=2", f"--workdir={tmp_path / 'w'}"),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "w" / "results.json").read_text())
    assert result["step"] == 3000 and result["num_devices"] == 2
