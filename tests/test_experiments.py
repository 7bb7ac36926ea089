"""The results scripts run end to end (quick settings, synthetic Fashion-MNIST-shaped data)."""

import json
import os
import shutil

import pytest

from jaxadv import host_memory
from tests.conftest import FAST_COMPILE_ENV, fresh_process_env
from tests.training.helpers import make_synthetic_idx


@pytest.fixture
def synthetic_fmnist(tmp_path, monkeypatch):
    d = make_synthetic_idx(tmp_path / "data", num_train=256, num_test=128)
    monkeypatch.setenv("JAXADV_FASHION_MNIST_DIR", str(d))
    return d


@pytest.mark.slow
def test_fashion_mnist_robust_quick(synthetic_fmnist, tmp_path):
    from experiments import fashion_mnist_robust

    out = tmp_path / "r.json"
    args = ["--quick", "--methods", "normal", "int2", "--root", str(tmp_path / "w"),
            "--out", str(out), "--eps", "0.1", "0.2"]
    results = fashion_mnist_robust.main(args)
    assert set(results["methods"]) == {"normal", "int2"}
    for r in results["methods"].values():
        acc = r["pgd"]
        assert acc["0"] >= acc["0.1"] >= acc["0.2"]  # nested radii
        assert abs(acc["0"] - r["test_accuracy"]) < 0.2  # first 100 vs all 128 test images
        assert -1 <= r["aai"]["kendall_tau"] <= 1
    assert json.loads(out.read_text())["methods"].keys() == results["methods"].keys()
    assert "| int2 |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "PGD-20 0.1" in out.with_suffix(".md").read_text()  # the step count actually run
    # The finished runs' results are what a second call reuses instead of retraining.
    assert (tmp_path / "w_quick" / "int2" / "results.json").exists()


def test_fashion_mnist_table_refuses_rows_of_another_protocol(tmp_path):
    from experiments import fashion_mnist_robust

    out = tmp_path / "t.json"
    out.write_text(json.dumps({"settings": {"n_pgd": 500, "n_aai": 100, "eps": [0.1]},
                               "methods": {"normal": {"test_accuracy": 0.8}}}))
    before = out.read_bytes()
    with pytest.raises(SystemExit, match=r"n_pgd=500, n_aai=100.*another --out"):
        fashion_mnist_robust.main(["--methods", "normal", "--out", str(out), "--eps", "0.1",
                                   "--root", str(tmp_path / "w")])
    assert out.read_bytes() == before and not (tmp_path / "w").exists()


def test_main_job_settings():
    """The main job (make run) is PGD-AT vs Int2 on the configs' 300-step variant."""
    from experiments import fashion_mnist_robust
    from experiments.configs import fashion_mnist_robust as configs

    for method in ("pgd_at", "int2"):
        c = configs.get_config(method + ",short")
        assert c.train.num_steps == 300 and c.method == method
        assert (c.objective.kwargs.ramp_start, c.objective.kwargs.ramp_end) == (30, 150)
    with pytest.raises(ValueError, match="exclusive"):
        fashion_mnist_robust.main(["--main", "--quick"])
    with pytest.raises(ValueError, match="short"):
        configs.get_config("int2,long")


SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_reproduce_boopathy_quick(tmp_path):
    from experiments import reproduce_boopathy

    out = tmp_path / "b"
    r = reproduce_boopathy.main(["--quick", "--n", "4", "--isa_maps", "cam", "rep",
                                 "--out", str(out)])
    b1 = r["b1"]
    assert set(b1) == {"smallgap/normal", "smallgap/adv", "smallgap/int2"}
    for acc in b1.values():
        assert acc["0"] >= acc["0.1"] >= acc["0.3"]
    assert r["b6"]["smallgap/normal"] == 1.0  # a model agrees with itself
    assert set(r["b7"]["smallgap/normal"]) == {"cam/one/l1", "cam/two/l1", "rep/all/l1"}
    for row in r["b7"]["smallgap/normal"].values():  # curves start at the plain attack
        assert row["includes_plain"] and len(row["multipliers"]) == len(row["discrepancy"]) == 4
        assert {"reference_normalized_slope", "reference_mean_discrepancy"} <= set(row)
    assert r["margin_check"]["smallgap/normal"]["violations"] == 0
    for f in ("tables.md", "results.json", "b1_robustness.png", "b7_isa.png", "margin_bound.png",
              "cam_overlays.png"):
        assert (out / f).stat().st_size > 500, f
    assert "## B-7" in (out / "tables.md").read_text()
    assert "| map/classes/norm | images | plain | x1 |" in (out / "tables.md").read_text()
    assert "| NS | mean D, NS (reference's summary) |" in (out / "tables.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_reproduce_boopathy_adds_fashion_mnist_rows_to_the_mnist_tables(tmp_path, monkeypatch,
                                                                      fast_compile):
    """A later --fmnist run adds its rows beside the official checkpoints' rows (each Fashion-MNIST
    model compared with the Fashion-MNIST Normal model), keeps the MNIST figures, and stops before
    writing when a section's settings differ from those of the rows already there."""
    from experiments import reproduce_boopathy
    from tests.training.helpers import train_tiny_fashion_mnist_workdir

    wd = train_tiny_fashion_mnist_workdir(tmp_path, monkeypatch, num_test=16)
    copy = shutil.copytree(wd, tmp_path / "copy")  # another directory, the same weights
    out = tmp_path / "b"
    quick = ["--quick", "--n", "4", "--out", str(out)]
    reproduce_boopathy.main(quick + ["--sections", "b6", "--methods", "normal", "adv"])
    overlay = (out / "cam_overlays.png").read_bytes()
    r = reproduce_boopathy.main(quick + ["--sections", "b6", "--models", "--fmnist",
                                         f"normal={wd}", f"again={copy}"])
    assert set(r["b6"]) == {"smallgap/normal", "smallgap/adv", "fmnist/normal", "fmnist/again"}
    assert r["b6"]["fmnist/again"] == 1.0  # its reference is fmnist/normal (the same weights)
    assert r["b6"]["smallgap/adv"] < 1.0
    assert "MNIST test images" in r["settings"]["data"]
    assert "Fashion-MNIST" in r["settings"]["data"]
    assert (out / "cam_overlays.png").read_bytes() == overlay
    assert (out / "cam_overlays_fmnist.png").stat().st_size > 500
    assert "| fmnist/again | 1.000 |" in (out / "tables.md").read_text()
    # a later run on fewer Fashion-MNIST models keeps the others in the data description, and
    # one without B-6 keeps the CAM overlays of every model
    fm_overlay = (out / "cam_overlays_fmnist.png").read_bytes()
    r = reproduce_boopathy.main(quick + ["--sections", "margin", "--models", "--fmnist",
                                         f"normal={wd}"])
    assert f"again={copy}" in r["settings"]["data"] and "fmnist/again" in r["b6"]
    assert (out / "cam_overlays_fmnist.png").read_bytes() == fm_overlay
    before = (out / "results.json").read_bytes()
    with pytest.raises(SystemExit, match=r"section b6 rows made with n=4.*another --out"):
        reproduce_boopathy.main(["--quick", "--n", "8", "--out", str(out), "--sections", "b6",
                                 "--models", "--fmnist", f"normal={wd}"])
    assert (out / "results.json").read_bytes() == before


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_boopathy_mnist_resumes_adds_the_ensemble_and_refuses_another_protocol(tmp_path,
                                                                                monkeypatch):
    """results/boopathy_mnist*.json: PGD rows first, ensemble columns added by a later run without
    redoing the PGD, extended block by block to more images by a run with a larger --ensemble_n,
    and a run with other settings stopped before it changes the file."""
    import types

    import numpy as np

    from experiments import boopathy_mnist

    out = tmp_path / "b.json"
    base = ["--n", "8", "--num_steps", "2", "--eps", "0", "0.3", "--models", "smallgap",
            "--methods", "normal", "adv", "--out", str(out)]
    boopathy_mnist.main(base + ["--ensemble_eps"])
    r = json.loads(out.read_text())
    for stem in ("mnist_smallgap_normal_100", "mnist_smallgap_adv_100"):
        assert r[stem]["0"] >= r[stem]["0.3"] and "ensemble" not in r[stem]
    assert "| ensemble" not in out.with_suffix(".md").read_text()
    r["settings"]["note"] = "how the rows were made"
    out.write_text(json.dumps(r))

    def no_pgd(*a, **k):
        raise AssertionError("PGD rerun for a checkpoint already in the file")

    calls, images = [], []

    def fake_ensemble(logits_fn, x, y, key, *, eps, check_flags):
        calls.append((x.shape[0], eps))
        images.append(np.asarray(x))
        return types.SimpleNamespace(robust=np.array([1.0, 0.0, 0.0, 0.0])[: x.shape[0]])

    monkeypatch.setattr(boopathy_mnist, "pgd_accuracies", no_pgd)
    monkeypatch.setattr(boopathy_mnist, "evaluate_ensemble", fake_ensemble)
    boopathy_mnist.main(base + ["--ensemble_eps", "0.3", "--ensemble_n", "4"])
    r = json.loads(out.read_text())
    assert calls == [(4, 0.3), (4, 0.3)]
    assert r["mnist_smallgap_adv_100"]["ensemble"] == {"0.3": 0.25}
    assert r["mnist_smallgap_adv_100"]["ensemble_n"] == {"0.3": 4}
    assert len(r["settings"]["commands"]) == 2
    assert r["settings"]["note"] == "how the rows were made"  # a rerun keeps the file's note
    table = out.with_suffix(".md").read_text()
    assert "| ensemble 0.3 |" in table and "| 25 |" in table and "on the first 4 images" in table

    # A larger --ensemble_n attacks only the images not yet attacked, in blocks, and pools them.
    calls.clear()
    first = images[0]
    images.clear()
    boopathy_mnist.main(base + ["--ensemble_eps", "0.3", "--ensemble_n", "8",
                                "--ensemble_block", "2"])
    assert calls == [(2, 0.3)] * 4
    assert not any(np.array_equal(first[:2], x) for x in images)  # images 4:6, 6:8 (not 0:4)
    r = json.loads(out.read_text())
    assert r["mnist_smallgap_adv_100"]["ensemble"] == {"0.3": (1 + 1 + 1) / 8}
    assert r["mnist_smallgap_adv_100"]["ensemble_n"] == {"0.3": 8}
    calls.clear()
    boopathy_mnist.main(base + ["--ensemble_eps", "0.3", "--ensemble_n", "8"])
    assert calls == []  # nothing left to do

    before = out.read_bytes()
    with pytest.raises(SystemExit, match="another --out"):
        boopathy_mnist.main(base[:1] + ["16"] + base[2:] + ["--ensemble_eps"])
    with pytest.raises(SystemExit, match="another --out"):
        boopathy_mnist.main(base[:2] + ["--num_steps", "3"] + base[4:] + ["--ensemble_eps"])
    assert out.read_bytes() == before


def test_boopathy_mnist_claim_sentences(tmp_path):
    """The table states the paper's claim both ways: PGD-200 at 0.35 / 0.4 and the ensemble."""
    from experiments import boopathy_mnist

    results = {
        "mnist_smallgap_adv_100": {"0.35": 0.01, "0.4": 0.0, "ensemble": {"0.3": 0.8, "0.4": 0.0}},
        "mnist_smallgap_int2_100": {"0.35": 0.46, "0.4": 0.32,
                                    "ensemble": {"0.3": 0.74, "0.4": 0.0}},
        "settings": {"data": "first 4 MNIST test images", "commands": ["x"]},
    }
    text = boopathy_mnist.write_table(results, tmp_path / "t.md")
    assert "beat adversarial training (adv) in 2 of 2 comparisons at eps 0.35 and 0.4" in text
    assert ("Under the ensemble, Int/Int2 beat adversarial training in 0 of 2 comparisons: "
            "smallgap int2 at 0.3: 74.0 vs 80.0; smallgap int2 at 0.4: 0.0 vs 0.0.") in text


@pytest.mark.slow
def test_loop_speed_benchmark_smoke(tmp_path, fast_compile):
    """The loop benchmark runs both orders and writes the variants it reports (tiny sizes: this
    checks the script, not the speed)."""
    from experiments.benchmarks import loop_speed

    out = tmp_path / "loop.json"
    loop_speed.main(["--models", "smallgap", "--batch", "2", "--num_steps", "2", "--repeats", "1",
                     "--second_order", "--second_order_steps", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    for key in ("smallgap", "smallgap/second_order"):
        assert set(result[key]) == {"fast/loop", "fast/unrolled", "standard/loop",
                                    "standard/unrolled", "first_call_s"}
        assert all(v > 0 for k, v in result[key].items() if k != "first_call_s")
    assert result["settings"]["second_order_steps"] == 1


def _run_in_fresh_process(module: str, *args: str, out) -> dict:
    """Runs ``python -m module args --out out`` in a fresh process (the XLA host-device count is
    fixed when JAX initialises) on CPU without the parent's XLA flags; returns the JSON written.
    These runs check a script, not its speed: XLA compiles with most optimisations off
    (``FAST_COMPILE_ENV``)."""
    import pathlib
    import subprocess
    import sys

    env = {**fresh_process_env(keep_fastpath=True), **FAST_COMPILE_ENV}
    res = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)],
                         cwd=pathlib.Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(pathlib.Path(out).read_text())


@pytest.mark.peer
@pytest.mark.slow
def test_attributions_benchmark_splits_the_batch_over_host_devices(tmp_path):
    """``--host_devices 2`` runs jaxadv's attributions on a 2-device data mesh (a fresh process:
    the device count is fixed when JAX initialises) and still agrees with Captum (tiny sizes: this
    checks the script, not the speed)."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    result = _run_in_fresh_process(
        "experiments.benchmarks.attributions", "--quick", "--models", "smallgap", "--repeats",
        "1", "--skip-memory", "--host_devices", "2", "--roofline", out=tmp_path / "attr.json")
    assert result["settings"]["jaxadv_host_devices"] == 2
    assert result["settings"]["command"] == (
        "python -m experiments.benchmarks.attributions --quick --models smallgap --repeats 1 "
        f"--skip-memory --host_devices 2 --roofline --out {tmp_path / 'attr.json'}")
    cores = os.cpu_count() or 1
    assert result["settings"]["convolution_backend"] == ("eigen" if cores >= 4 else "ynnpack")
    assert set(result["parity"]) == {"ig", "smoothgrad", "gradcam", "occlusion"}
    assert max(result["parity"].values()) < 1e-4
    # The same program gives the same map on every call (the parity inputs, both libraries).
    repeat = result["per_model"]["smallgap"]["repeat_call_rel_diff"]
    assert set(repeat) == {"ig", "gradcam", "occlusion"}
    assert all(r["jaxadv"] == 0.0 and r["captum"] < 1e-6 for r in repeat.values())
    assert all(v > 0 for v in result["speedup_vs_captum"].values())
    # Roofline figures: FLOP counts and the rate 2x Captum would need, next to the matmul peak.
    sg = result["per_model"]["smallgap"]
    assert all(sg["flops"][m] > 0 and sg["gflops_needed_for_2x"][m] > 0 for m in sg["flops"])
    assert sg["flops"]["ig"] > sg["flops"]["gradcam"]
    assert result["matmul_peak_gflops"] > 0
    # The executed-FLOP roofline: the program's time at the matmul peak, and Captum's over it.
    assert all(sg["flops_executed"][m] > 0 for m in sg["flops"])
    for m in sg["flops"]:
        best = sg["flops_executed"][m] / (result["matmul_peak_gflops"] * 1e9)
        assert sg["best_case_s"][m] == pytest.approx(best)
        assert sg["best_case_speedup_vs_captum"][m] == pytest.approx(sg["captum_s"][m] / best)
        assert sg["jaxadv_gflops_executed"][m] == pytest.approx(
            sg["flops_executed"][m] / sg["jaxadv_s"][m] / 1e9)
    # jaxadv's default chunking ("auto": 1 point per call at batch 32) and all points at once.
    assert sg["jaxadv_auto_points_per_call"] == {"ig": 1, "smoothgrad": 1}
    assert set(sg["jaxadv_all_at_once_s"]) == set(sg["speedup_vs_captum_jaxadv_all_at_once"]) == {
        "ig", "smoothgrad"}


def test_attributions_benchmark_quick_leaves_out_the_slow_parts_unless_asked(tmp_path,
                                                                             monkeypatch):
    """``--quick`` is a smoke run: SmallGAP and ResNet-18 (no softplus twin), no float64
    references, no FLOP counts, IG-200 memory at batch 32; ``--float64`` / ``--roofline`` add
    them back, ``--skip-float64`` keeps its meaning, and the settings record the choice (the
    models' runs are replaced by a recorder here: this checks the flags, not the runs)."""
    pytest.importorskip("torch")
    from experiments.benchmarks import attributions, timing

    calls, memory = [], []

    def fake_bench(name, batch, repeats, f64_reference=True, timing=True, forms_off=(),
                   roofline=True):
        calls.append((name, batch, repeats, f64_reference, roofline))
        r = {"batch": batch, "parity": dict.fromkeys(attributions.METHODS, 0.0)}
        if timing:
            ones = dict.fromkeys(attributions.METHODS, 1.0)
            r.update(speedup_vs_captum=ones, jaxadv_s=ones, captum_s=ones,
                     jaxadv_images_per_s=ones, captum_images_per_s=ones)
            if roofline:
                r["flops_executed"] = ones
        return r

    monkeypatch.setattr(attributions, "bench_model", fake_bench)
    monkeypatch.setattr(attributions, "ig200_peak_memory", lambda batch=128, **kw: memory.append(
        batch) or {"jaxadv": 1.0, "captum": 2.0, "batch": batch, "jaxadv_points_per_call": 1})
    monkeypatch.setattr(timing, "matmul_peak_gflops", lambda n: 100.0)

    out = attributions.main(["--quick", "--out", str(tmp_path / "q.json")])
    assert calls == [("smallgap", 32, 2, False, False), ("preact_resnet18", 4, 2, False, False)]
    assert memory == [32] and "best_case_s" not in out["per_model"]["smallgap"]
    assert out["settings"]["float64"] is False and out["settings"]["roofline"] is False
    calls.clear()
    out = attributions.main(["--quick", "--models", "smallgap", "--float64", "--roofline",
                             "--skip-memory", "--out", str(tmp_path / "q2.json")])
    assert calls == [("smallgap", 32, 2, True, True)] and "best_case_s" in out["per_model"]["smallgap"]
    calls.clear()
    out = attributions.main(["--skip-float64", "--skip-memory", "--out", str(tmp_path / "f.json")])
    assert calls == [("smallgap", 128, 3, False, True), ("preact_resnet18", 16, 3, False, True),
                     ("preact_resnet18_softplus", 16, 3, False, True)]
    assert out["settings"]["float64"] is False and out["settings"]["roofline"] is True


def test_attributions_benchmark_imports_jaxadv_before_jax_starts():
    """The attributions benchmark measures the matmul peak (JAX's first computation) before it
    builds a model: jaxadv must already be imported then, or XLA:CPU keeps YNNPACK's
    single-threaded convolutions, which no user who imports jaxadv first gets (until 2026-12-06
    its one-device runs timed ResNet-18's IG about 2x too slow for this reason)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import experiments.benchmarks.attributions, jax\n"
            "jax.numpy.zeros(1).block_until_ready()\n"
            "from jaxadv.devices import convolution_backend\nprint(convolution_backend())")
    env = fresh_process_env()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    expected = "eigen" if (os.cpu_count() or 1) >= 2 else "ynnpack"
    assert out.stdout.split()[-1] == expected


def test_step_speed_jax_ops_compiles_only_the_ops_asked_for():
    """``ops`` picks which ops are compiled and returned (host_memory's children time two of the
    four), ``count_flops=False`` skips the FLOP counts (the contestants', which nobody reads), and
    an op the benchmark does not have is refused before any work, naming it."""
    import numpy as np

    from experiments.benchmarks import step_speed

    x = np.random.default_rng(0).uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    y = np.arange(4, dtype=np.int32)
    fns, flops, handles = step_speed.jax_ops("smallgap", x, y, fast=True, mesh=None,
                                             ops=("forward",), count_flops=False)
    assert set(fns) == {"forward"} and flops is None
    fns["forward"]()
    np.testing.assert_allclose(np.asarray(handles["logits"](handles["variables"], handles["x"])),
                               np.asarray(handles["model"].apply(handles["variables"], x)),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pgd20"):
        step_speed.jax_ops("smallgap", x, y, fast=True, mesh=None, ops=("forward", "pgd20"))


@pytest.mark.parametrize("in_hw,w_shape,expected", [
    ((8, 8), (3, 3, 256, 256), True), ((4, 4), (3, 3, 512, 512), True),
    ((16, 16), (3, 3, 128, 128), False), ((32, 32), (3, 3, 64, 64), False),
    ((8, 8), (3, 3, 64, 256), False),
])
def test_step_speed_small_winograd_contestant_is_the_earlier_rule(in_hw, w_shape, expected):
    """``--compare_no_large_winograd`` times Winograd on the maps the rule took before its image
    chunks only: at most 8x8 outputs, at least 128 channels (and never on YNNPACK)."""
    from experiments.benchmarks import step_speed

    args = (in_hw, w_shape, (1, 1), ((1, 1), (1, 1)), (1, 1), "forward")
    assert step_speed.winograd_small_maps_only(*args, ynnpack=False) is expected
    assert step_speed.winograd_small_maps_only(*args, ynnpack=True) is False


def test_step_speed_window_adds_off_sums_the_fold_by_reduces():
    """``--compare_no_window_adds`` (form ``window_adds``): while the contestant compiles, the GAP
    fold's window sums are one reduce per tap; the library's add chains come back after."""
    import jax.numpy as jnp

    from experiments.benchmarks import step_speed
    from jaxadv.models import fastpath
    from tests.models.test_conv_mean import _count_primitives

    x, k = jnp.ones((2, 7, 7, 3)), jnp.ones((7, 7, 3, 4))

    def primitives():
        return set(_count_primitives(lambda x: fastpath.conv_mean(x, k, None), x))

    assert "reduce_sum" not in primitives()
    with step_speed.form_off("window_adds"):
        assert "reduce_sum" in primitives()
    assert "reduce_sum" not in primitives()
    assert step_speed.off_label("window_adds") == "no_window_adds"


def test_executed_flops_count_every_trip_of_the_chunk_loops(monkeypatch):
    """XLA's cost analysis counts a loop body once; the step benchmark's executed count must
    count every chunk of Winograd's image loop: a 16x16x128 layer at batch 6 in chunks of two
    images does 2 * 16 * (6 * 64 tiles) * 128 * 128 multiply-adds in its matmuls."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import timing
    from jaxadv.models import fastpath

    monkeypatch.setattr(fastpath, "_ynnpack_convolutions", lambda: False)
    monkeypatch.setattr(fastpath, "_winograd_chunks", lambda batch, *a: (-(-batch // 2), 2))
    x, k = jnp.ones((6, 16, 16, 128)), jnp.ones((3, 3, 128, 128))
    conv = lambda x, k: fastpath.conv_general_dilated(
        x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    matmuls = 2 * 16 * (6 * 64) * 128 * 128
    with fastpath.enabled(True):
        jax.clear_caches()
        lowered = jax.jit(conv).lower(x, k)
        assert "while" in lowered.as_text()
        assert timing.xla_flops(lowered) < matmuls / 2  # one of three chunks
        assert matmuls <= timing.executed_flops(conv, (x, k)) < 1.2 * matmuls


@pytest.mark.peer
@pytest.mark.slow
def test_step_speed_benchmark_smoke(tmp_path):
    """The step-speed benchmark checks parity with the PyTorch twin, times every op and reports
    XLA's FLOP counts, on 2 host devices and with ``--precision highest`` (a fresh process; tiny
    sizes: this checks the script, not the speed)."""
    pytest.importorskip("torch")
    result = _run_in_fresh_process(
        "experiments.benchmarks.step_speed", "--quick", "--models", "smallgap", "--batch", "128",
        "--repeats", "1", "--calls_per_turn", "2", "--host_devices", "2", "--precision", "highest",
        "--compare_no_fold", "--compare_no_winograd", "--compare_no_large_winograd",
        "--compare_no_depth_first", "--compare_cumsum_mask", "--compare_conv_backend",
        out=tmp_path / "ss.json")
    ops = ("forward", "pgd_step", "pgd10", "train_step")
    assert set(result["speedup_vs_torch"]) == {f"smallgap/{op}" for op in ops}
    assert all(v > 0 for v in result["speedup_vs_torch"].values())
    assert set(result["speedup_vs_no_fold"]) == set(result["speedup_vs_torch"])
    assert set(result["speedup_vs_cumsum_mask"]) == set(result["speedup_vs_torch"])
    assert set(result["speedup_vs_no_winograd"]) == set(result["speedup_vs_torch"])
    assert set(result["speedup_vs_small_winograd"]) == set(result["speedup_vs_torch"])
    assert set(result["speedup_vs_no_depth_first"]) == set(result["speedup_vs_torch"])
    # The other convolution library as a contestant: Eigen's where every core has its own device
    # (2 devices on 2 cores), YNNPACK's where a device has >= 2 cores.
    backend = result["config"]["conv_backend"]
    expected = "eigen" if (os.cpu_count() or 1) >= 4 else "ynnpack"
    assert backend == expected
    other = {"eigen": "ynnpack", "ynnpack": "eigen"}[backend]
    assert set(result[f"speedup_vs_{other}_conv"]) == set(result["speedup_vs_torch"])
    assert all(result["flops"][f"smallgap/{op}"] > 0 for op in ops)
    # The GAP fold (64 examples per device: batch 128 on 2 devices) skips most of SmallGAP's
    # last layer: the program run counts fewer FLOPs.
    assert all(0 < result["flops_executed"][f"smallgap/{op}"] < result["flops"][f"smallgap/{op}"]
               for op in ops)
    assert result["flops"]["smallgap/pgd10"] > 10 * result["flops"]["smallgap/forward"]
    assert result["parity"]["smallgap"]["input_grad_rel_l2_diff"] < 1e-4
    cfg = result["config"]
    assert cfg["host_devices"] == 2 and cfg["torch_device"] == "cpu"
    assert cfg["jax_default_matmul_precision"] == "highest" and cfg["cudnn_allow_tf32"] is False
    assert cfg["reuse_host_memory"] is (host_memory._glibc() is not None)
    assert cfg["cpu_inline_dispatch"] is cfg["reuse_host_memory"]
    assert cfg["calls_per_turn"] == 2
    assert all(t["n"] == 2 for t in result["times_ms"]["smallgap/forward"].values())


@pytest.mark.slow
def test_host_memory_benchmark_compares_the_settings_in_separate_processes(tmp_path):
    """One child process per setting and round: the reuse child has the allocator set and inline
    dispatch, the no_reuse child neither, the reuse_async child the allocator only, and all time
    the same jaxadv and PyTorch ops (tiny sizes: this checks the script, not the speed)."""
    if host_memory._glibc() is None:
        pytest.skip("needs Linux with glibc")
    pytest.importorskip("torch")
    result = _run_in_fresh_process(
        "experiments.benchmarks.host_memory", "--models", "smallgap", "--ops", "forward,pgd_step",
        "--rounds", "2", "--repeats", "2", "--batch", "16", "--torch", out=tmp_path / "hm.json")
    keys = {f"{who}smallgap/{op}" for who in ("", "torch:") for op in ("forward", "pgd_step")}
    assert set(result["speedup"]) == keys and all(v > 0 for v in result["speedup"].values())
    assert set(result["ms"]) == keys == set(result["minor_faults_per_call"])
    assert len(result["per_round"]) == 2
    assert set(result["speedup_inline"]) == keys
    assert all(set(v) == {"reuse", "no_reuse", "reuse_async"} for v in result["ms"].values())
    for rnd in result["per_round"]:
        assert rnd["reuse"]["reuse_applied"] is True and rnd["reuse"]["inline"] is True
        assert rnd["no_reuse"]["reuse_applied"] is False and rnd["no_reuse"]["inline"] is False
        # JAX_CPU_ENABLE_ASYNC_DISPATCH=true: the malloc settings without inline dispatch
        assert rnd["reuse_async"]["reuse_applied"] is True
        assert rnd["reuse_async"]["inline"] is False
        assert all(set(rnd[s]["ops"]) == keys for s in ("reuse", "no_reuse", "reuse_async"))


@pytest.mark.slow
def test_training_benchmark_times_the_steps_on_the_mesh(synthetic_fmnist, tmp_path):
    """``--host_devices 2`` times the training steps on the 2-device data mesh (batch sharded), and
    a mesh step equals the single-device one (a fresh process: the device count is fixed when JAX
    initialises; tiny sizes: this checks the script, not the speed)."""
    result = _run_in_fresh_process(
        "experiments.benchmarks.training", "--quick", "--skip_torch", "--batch", "16",
        "--inner_steps", "2", "--host_devices", "2", out=tmp_path / "train.json")
    assert result["timed_devices"] == 2 and result["num_devices"] == 2
    assert result["mesh_equals_single"] is True
    assert all(v > 0 for v in result["examples_per_s"].values())


@pytest.mark.slow
def test_kernel_grad_benchmark_smoke(tmp_path, fast_compile):
    """The kernel-gradient benchmark times every form, checks they agree and reports the rule's
    choice (one tiny layer: this checks the script, not the speed)."""
    from experiments.benchmarks import kernel_grad

    out = tmp_path / "kg.json"
    rows = kernel_grad.main(["--batches", "2", "--layers", "1", "--repeats", "1", "--out", str(out)])
    assert len(rows) == 1
    assert all(rows[0][f"{m}_ms"] > 0 for m in ("columns", "taps", "xla"))
    assert rows[0]["max_rel_diff"] < 1e-4
    assert rows[0]["rule"] in ("columns", "taps", "xla")
    assert json.loads(out.read_text())["rows"][0]["layer"].startswith("smallgap conv1: 28x28x1")
    # The forms of each op of a layer agree (SmallGAP's 7x7 layer: rows apply; its one-channel
    # first layer: taps apply), compiled with Eigen's convolutions.
    forms = kernel_grad.main(["--forms", "--batches", "2", "--layers", "3", "--repeats", "1",
                              "--conv_backend", "eigen"])
    assert [r["op"] for r in forms[-3:]] == ["forward", "input", "kernel"]
    assert all(r["max_rel_diff"] < 1e-4 and r["xla_ms"] > 0 and r["patches_ms"] > 0 for r in forms)
    assert all(r["rows_ms"] > 0 for r in forms[-3:]) and forms[0]["rows_ms"] is None
    assert all(r["taps_ms"] > 0 for r in forms[:3]) and forms[-1]["taps_ms"] is None
    assert [r["picked"] for r in forms[:3]] == ["taps", "patches", "xla"]
    # Strided layers' input gradients also run per output phase (SmallGAP's first two layers).
    assert [r["phases_ms"] is not None and r["phases_ms"] > 0 for r in forms] == [
        False, True, False, False, True, False, False, False, False]
    assert forms[4]["picked"] == "phases"
    assert {r["conv_backend"] for r in forms} == {"eigen"}
    assert all(r["winograd_ms"] is None for r in forms)  # no 3x3 stride-1 layer among them
    # ResNet-18's 4x4x512 layer: Winograd's form for the forward pass and input gradient.
    wino = kernel_grad.main(["--forms", "--batches", "2", "--layer_names", "resnet 4x4",
                             "--repeats", "1", "--conv_backend", "eigen"])
    assert [r["layer"].split(":")[0] for r in wino] == ["resnet 4x4x512"] * 3
    assert all(r["max_rel_diff"] < 1e-4 and r["winograd_ms"] > 0 for r in wino)
    assert [r["picked"] for r in wino] == ["winograd"] * 3
    # Whole train steps, the rule's kernel gradients against XLA's (a conv-free model here).
    step = kernel_grad.bench_train_step("linear", repeats=1)
    assert step["devices"] == 8 and step["rule_ms"] > 0 and step["xla_ms"] > 0


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
@pytest.mark.slow
def test_multi_eps_benchmark_times_every_sweep_mode(tmp_path):
    """multi_eps: the 8 radii in one call, vmapped, one at a time and nested, against one radius
    and Foolbox's loop; the nested sweep's robust accuracy never rises with eps (16 points; this
    checks the script, not the numbers of the committed run)."""
    pytest.importorskip("foolbox")
    from experiments.benchmarks import attacks

    r = attacks.main(["--quick", "--n", "16", "--sections", "multi_eps", "--multi_eps_repeats",
                      "1", "--seeds", "2", "--skip_peers", "--out", str(tmp_path / "m.json")]
                     )["multi_eps"]
    assert {"jaxadv_s_all_vmap", "jaxadv_s_all_eps_batch_size_1", "jaxadv_s_all_nested"} <= set(r)
    seeds = r["robust_acc_over_seeds"]
    assert len(seeds["jaxadv"]) == len(seeds["foolbox"]) == 2
    assert seeds["jaxadv"][0] == r["jaxadv_robust_acc"]
    assert len(seeds["diff_mean"]) == len(seeds["diff_se"]) == 8
    paired = r["paired_with_foolbox"]
    assert len(paired["jaxadv"]) == len(paired["foolbox"]) == len(paired["disagreements"]) == 8
    acc = r["jaxadv_robust_acc_nested"]
    assert len(acc) == len(r["jaxadv_robust_acc"]) == 8
    assert all(a >= b for a, b in zip(acc[:-1], acc[1:], strict=True))  # radii in increasing order


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_paired_pgd_benchmark_gives_both_libraries_the_same_starts(tmp_path):
    """pgd_paired: jaxadv and ART attack from the same drawn starts (ART's sampler patched for the
    call and restored), so on the same weights they agree point for point (16 points, 2 seeds,
    both norms; this checks the script, not the numbers of the committed run)."""
    pytest.importorskip("torch")
    art_pgd = pytest.importorskip(
        "art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch")
    from experiments.benchmarks import attacks

    sampler = art_pgd.random_sphere
    r = attacks.main(["--quick", "--n", "16", "--seeds", "2", "--sections", "pgd_paired",
                      "--skip_peers", "--out", str(tmp_path / "p.json")])
    assert art_pgd.random_sphere is sampler
    for norm in ("linf", "l2"):
        p = r["pgd_paired"][norm]
        assert len(p["jaxadv"]["robust_acc_seeds"]) == 2
        # same starts, same algorithm: at most one boundary point of 16 differs per seed
        assert max(p["robust_only_against_jaxadv"]) <= 1
        assert max(p["robust_only_against_art"]) <= 1
    assert "PGD from the same starts" in attacks.markdown_table(r)


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_peer_autoattack_apgd_over_seeds_smoke(tmp_path):
    """APGD-CE against AutoAttack and torchattacks over two seeds on 8 points: every library gets
    its per-seed robust accuracies and their mean, and the file states its settings (tiny sizes:
    this checks the script, not the numbers)."""
    pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    pytest.importorskip("torchattacks")
    from experiments.benchmarks import peer_autoattack

    out = tmp_path / "pa.json"
    peer_autoattack.main(["--n", "8", "--seeds", "2", "--sections", "apgd_ce", "--out", str(out)])
    r = json.loads(out.read_text())
    assert set(r) == {"apgd_ce", "settings"}
    for lib in ("jaxadv", "autoattack", "torchattacks"):
        e = r["apgd_ce"][lib]
        assert len(e["robust_acc_seeds"]) == 2 and e["robust_acc_seeds"][0] == e["robust_acc"]
        assert e["robust_acc_mean"] == pytest.approx(sum(e["robust_acc_seeds"]) / 2)
    assert r["settings"]["data"] == "first 8 MNIST test images"
    assert "--seeds 2" in r["settings"]["command"]


@pytest.mark.peer
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_peer_apgd_starts_gives_both_libraries_the_same_start(tmp_path):
    """APGD-CE from identical starts: the reconstruction of AutoAttack's own draw gives exactly
    what its ``perturb`` gives, and from a shared start the two libraries agree on (nearly) every
    point (tiny sizes: this checks the script, not the numbers)."""
    pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    from experiments.benchmarks import peer_apgd_starts as ps

    out = tmp_path / "starts.json"
    r = ps.main(["--n", "12", "--seeds", "1", "--points", "7", "8", "--point_seeds", "2",
                 "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert r["autoattack_start_reconstructed"] == [True]
    assert set(r["robust_acc_mean"]) == {
        "jaxadv_own", "autoattack_own", "jaxadv_from_autoattack_starts",
        "autoattack_from_autoattack_starts", "jaxadv_from_numpy_starts",
        "autoattack_from_numpy_starts"}
    assert all(d["pairs"] <= 1 for d in r["disagreements"].values())
    assert all(len(b) == 2 for b in r["breaks"].values())
    assert set(r["point_breaks"]) == {7, 8}
    assert all(0 <= v <= 2 for counts in r["point_breaks"].values() for v in counts.values())
    with pytest.raises(SystemExit, match="--points"):
        ps.main(["--n", "12", "--points", "12"])


def test_peer_scorer_judges_every_library_by_one_model_inside_the_ball():
    """The scorer behind the AutoAttack comparisons: per-point robustness by the JAX model, and
    examples outside the eps-ball or [0, 1], or of the wrong shape, are refused."""
    pytest.importorskip("torch")
    import jax.numpy as jnp
    import numpy as np

    from experiments.benchmarks.peer_autoattack import _Scorer

    # logits (x0, 1 - x0) of the first pixel: class 0 iff pixel > 0.5
    def f(x):
        v = x.reshape(x.shape[0], -1)[:, 0]
        return jnp.stack([v, 1.0 - v], -1)

    x = np.full((3, 2, 2, 1), 0.7, np.float32)
    x[2] = 0.1
    y = np.array([0, 0, 0])  # the third is misclassified at x
    score = _Scorer({"logits_fn": f, "x": x, "y": y, "eps": 0.25})
    x_adv = x.copy()
    x_adv[1, 0, 0, 0] = 0.45  # crosses 0.5 inside the ball
    robust, dist = score.robust_mask(x_adv)
    assert robust.tolist() == [True, False, False] and dist == pytest.approx(0.25)
    assert score.entry(x_adv, 1.0)["robust_acc"] == pytest.approx(100 / 3)
    with pytest.raises(AssertionError, match="ball"):
        score.robust_mask(np.where(np.arange(3)[:, None, None, None] == 0, 0.4, x))
    with pytest.raises(AssertionError, match=r"\[0, 1\]"):
        score.robust_mask(x - 0.2)  # inside the ball, but the third image goes below 0
    with pytest.raises(AssertionError, match="shape"):
        score.robust_mask(x[:2])


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_peer_autoattack_points_counts_breaks_per_point_and_stage(tmp_path):
    """Per-point, per-stage break counts against AutoAttack: one seed of APGD-CE on two points
    gives a 0/1 count per point for each library, the JSON holds what main returns, and an index
    outside the first 100 images is refused (tiny sizes: this checks the script, not the
    numbers)."""
    pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    from experiments.benchmarks import peer_autoattack_points as pp

    out = tmp_path / "pts.json"
    r = pp.main(["--points", "7", "8", "--seeds", "1", "--seed_start", "3", "--stages", "apgd-ce",
                 "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    for lib in ("jaxadv", "autoattack"):
        assert set(r["breaks"][lib]) == {"apgd-ce"}
        assert all(c in (0, 1) for c in r["breaks"][lib]["apgd-ce"])
        assert len(r["breaks"][lib]["apgd-ce"]) == 2
    assert r["settings"]["points"] == [7, 8] and r["settings"]["context"] == "points"
    assert r["settings"]["seed_start"] == 3 and r["settings"]["seeds"] == 1
    for lib in ("jaxadv", "autoattack"):  # the batch is the two points: 0, 50 or 100 %
        assert r["robust_acc_seeds"][lib]["apgd-ce"][0] in (0.0, 50.0, 100.0)
        assert (r["robust_acc_seeds"][lib]["apgd-ce"][0] / 50.0
                == 2 - sum(r["breaks"][lib]["apgd-ce"]))
    with pytest.raises(SystemExit, match="--points"):
        pp.main(["--points", "100"])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_peer_autoattack_on_two_host_devices(tmp_path):
    """--host_devices 2: jaxadv's APGD-CE batch is split over two XLA host devices (a fresh
    process; tiny sizes: this checks the script, not the speed)."""
    pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    pytest.importorskip("torchattacks")
    r = _run_in_fresh_process("experiments.benchmarks.peer_autoattack", "--n", "8",
                              "--sections", "apgd_ce", "--host_devices", "2", "--quick",
                              out=tmp_path / "aa.json")
    assert r["settings"]["jax_devices"] == 2
    assert 0 <= r["apgd_ce"]["jaxadv"]["robust_acc"] <= 100


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
def test_peer_ensemble_over_seeds_passes_each_seed_to_both_evaluators(monkeypatch):
    """--ensemble_seeds S: seed s reaches jaxadv's evaluator as key(s) and AutoAttack as seed=s,
    and each library reports its per-seed accuracies and their mean (both evaluators faked: the
    real ensembles take minutes; this checks the plumbing)."""
    import sys
    import types

    import jax
    import numpy as np

    pytest.importorskip("torch")
    from experiments.benchmarks import peer_autoattack as pa
    from experiments.benchmarks.attacks import build_setup

    jax_keys, aa_seeds = [], []

    def fake_ensemble(f, x, y, key, **kw):
        jax_keys.append(int(jax.random.key_data(key)[-1]))
        robust = np.zeros(len(y), bool)
        return types.SimpleNamespace(x_adv=x, robust=robust, per_attack_robust={"apgd-ce": robust},
                                     num_grad=robust, num_forward=robust, mask=~robust)

    class FakeAutoAttack:
        def __init__(self, model, *, seed, **kw):
            aa_seeds.append(seed)

        def run_standard_evaluation(self, x, y, batch_size):
            return (x,)

    monkeypatch.setattr(pa, "evaluate_ensemble", fake_ensemble)
    monkeypatch.setattr(pa.E, "gradient_masking_flags", lambda *a, **k: {})
    monkeypatch.setattr(pa.E, "black_box_flag", lambda *a, **k: False)
    monkeypatch.setitem(sys.modules, "pyautoattack", types.SimpleNamespace(
        AutoAttack=FakeAutoAttack))
    setup = build_setup(n=8)
    r = pa.bench_ensemble(setup, quick=False, n=8, seeds=3)
    assert jax_keys == [0, 0, 1, 2]  # seed 0 twice (compiling call, then the timed one)
    assert aa_seeds == [0, 1, 2]
    for lib in ("jaxadv", "autoattack"):
        accs = r[lib]["robust_acc_seeds"]
        assert len(accs) == 3 and r[lib]["robust_acc_mean"] == pytest.approx(np.mean(accs))


@pytest.mark.skipif(not (SHARED / "boopathy-mnist").exists(),
                    reason="needs ../shared/data (official checkpoints, MNIST test set)")
@pytest.mark.slow
def test_ensemble_stages_smoke(tmp_path):
    """Per-stage robust accuracy of the ensemble next to PGD-200 on an official checkpoint (tiny
    budgets: this checks the script, not the numbers): stages are cumulative, so never rising."""
    from experiments import ensemble_stages

    out = tmp_path / "stages.json"
    r = ensemble_stages.main(["--checkpoints", "mnist_smallgap_adv_100", "--eps", "0.3",
                              "--n", "8", "--num_steps", "2", "--num_queries", "5",
                              "--out", str(out)])
    row = r["mnist_smallgap_adv_100"]["0.3"]
    after = list(row["after"].values())
    assert list(row["after"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert row["robust"] == after[-1] and 0.0 <= row["pgd200"] <= 1.0
    assert "zero_gradients" in row["flags"]
    assert json.loads(out.read_text())["settings"]["data"] == "first 8 MNIST test images"


@pytest.mark.slow
def test_relu_sign_flips_tell_where_float32_gradients_leave_float64(fast_compile):
    """The attributions benchmark's ``relu_kinks`` diagnostic: on a PreAct ResNet (ReLU inputs are
    BatchNorm outputs), an image whose ReLU inputs all keep their float64 sign in float32 has a
    float32 input gradient within 1e-5 of the float64 one, and every image further off than 1e-4
    has a flipped sign; a model without batch norm is refused."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxadv.attributions as A
    from experiments.benchmarks.attributions import _per_image_err, relu_sign_flips
    from jaxadv.models import get_model, init_variables, model_fns

    model = get_model("preact_resnet18", width_multiplier=0.25)
    variables = init_variables(model, jax.random.key(0), (1, 16, 16, 3))
    x = np.asarray(jax.random.uniform(jax.random.key(1), (16, 16, 16, 3)))
    # Put 128 ReLU inputs on their kink: the final BatchNorm's bias of channel k set so that its
    # float64 output at one position of image k % 8 is zero up to the bias's float32 rounding
    # (float32 puts some on the other side: rounding alone decides their sign). Images 8-15 keep
    # their ReLU inputs away from the kinks.
    import flax.linen as nn

    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        _, state = model.apply(v64, jnp.asarray(x, jnp.float64), train=False,
                               capture_intermediates=lambda m, _: isinstance(m, nn.BatchNorm)
                               and m.name == "final_norm")
        z = np.asarray(jax.tree_util.tree_leaves(state["intermediates"])[0])  # (16, 2, 2, 128)
    k = np.arange(128)
    at_kink = z[k % 8, (k // 8) % 4 // 2, (k // 8) % 2, k]
    norm = variables["params"]["body"]["final_norm"]
    variables = {**variables, "params": {**variables["params"], "body": {
        **variables["params"]["body"],
        "final_norm": {**norm, "bias": jnp.asarray(np.asarray(norm["bias"], np.float64) - at_kink,
                                                    jnp.float32)}}}}
    flips, per_image = relu_sign_flips(model, variables, x)
    # Every ReLU input counted: 17 BatchNorm outputs (two per block, the final one) of widths
    # 16-32-64-128 on maps 16-8-4-2.
    assert flips.shape == (16,)
    assert per_image == 4 * 16**3 + (16**3 + 3 * 8 * 8 * 32) + (8 * 8 * 32 + 3 * 4 * 4 * 64) \
        + (4 * 4 * 64 + 3 * 2 * 2 * 128) + 2 * 2 * 128
    t = np.asarray(jax.jit(model_fns(model, variables).logits)(x)).argmax(-1)

    def grad(v, xs):
        return A.saliency(model_fns(model, v).logits, xs, t)

    g32 = np.asarray(jax.jit(grad)(variables, jnp.asarray(x)))
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        g64 = np.asarray(jax.jit(grad)(v64, jnp.asarray(x, jnp.float64)))
    err = _per_image_err(g32, g64)
    assert (flips[:8] > 0).all() and (err[:8] > 1e-4).all()
    assert (err[flips == 0] < 1e-5).all()
    assert (flips[err > 1e-4] > 0).all()

    small = get_model("smallgap")
    with pytest.raises(ValueError, match="BatchNorm"):
        relu_sign_flips(small, init_variables(small, jax.random.key(0), (1, 28, 28, 1)),
                        np.zeros((2, 28, 28, 1), np.float32))


@pytest.mark.peer
def test_attributions_benchmark_ig_chunk_sweep(tmp_path):
    """``--ig_chunk_sweep`` times IG in both libraries at each number of path points per call
    (Captum's internal_batch_size = points x batch) and names each library's fastest."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    from experiments.benchmarks import attributions

    result = attributions.main(["--quick", "--models", "smallgap", "--repeats", "1",
                                "--ig_chunk_sweep", "1,all", "--out", str(tmp_path / "s.json")])
    sweep = result["ig_chunk_sweep"]["smallgap"]
    assert set(sweep["jaxadv_s"]) == set(sweep["captum_s"]) == {"1", "None"}
    assert sweep["images_per_call"] == {"1": 32, "None": 32 * attributions.IG_STEPS}
    assert all(v > 0 for v in [*sweep["jaxadv_s"].values(), *sweep["captum_s"].values()])
    assert sweep["best_points_per_call"]["jaxadv"] in sweep["jaxadv_s"]
    assert sweep["speedup_vs_captum_each_at_best"] > 0
    assert json.loads((tmp_path / "s.json").read_text())["ig_chunk_sweep"]


@pytest.mark.peer
def test_attributions_benchmark_chunk_sweep_times_smoothgrad_and_jaxadvs_default(tmp_path,
                                                                               fast_compile):
    """``--chunk_sweep`` times IG and SmoothGrad at each number of points per call in both
    libraries (Captum's NoiseTunnel ``nt_samples_batch_size`` for SmoothGrad) and jaxadv's
    ``"auto"`` default, and compares the two libraries' defaults."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    from experiments.benchmarks import attributions
    from jaxadv.attributions import auto_chunk_size

    result = attributions.main(["--quick", "--models", "smallgap", "--repeats", "1",
                                "--chunk_sweep", "2,auto,all", "--chunk_sweep_methods",
                                "smoothgrad", "--out", str(tmp_path / "s.json")])
    sweep = result["chunk_sweep"]["smallgap/smoothgrad"]
    assert sweep["method"] == "smoothgrad"
    assert set(sweep["jaxadv_s"]) == {"2", "auto", "None"}
    assert set(sweep["captum_s"]) == {"2", "None"}  # "auto" is jaxadv's alone
    auto = auto_chunk_size(attributions.SG_SAMPLES, batch=32)
    assert sweep["jaxadv_auto_points_per_call"] == auto == 1  # batch 32 on CPU: one sample
    assert sweep["images_per_call"] == {"2": 64, "auto": 32, "None": 32 * attributions.SG_SAMPLES}
    assert sweep["speedup_vs_captum_defaults"] == pytest.approx(
        sweep["captum_s"]["None"] / sweep["jaxadv_s"]["auto"])
    assert json.loads((tmp_path / "s.json").read_text())["chunk_sweep"]
    assert result["settings"]["jaxadv_fastpath"] is True
    # Without the fast path (XLA's own convolutions) "auto" takes every sample in one call.
    plain = attributions.main(["--quick", "--models", "smallgap", "--repeats", "1",
                               "--chunk_sweep", "auto", "--chunk_sweep_methods", "smoothgrad",
                               "--no_fastpath", "--out", str(tmp_path / "p.json")])
    assert plain["settings"]["jaxadv_fastpath"] is False
    assert plain["chunk_sweep"]["smallgap/smoothgrad"]["jaxadv_auto_points_per_call"] == (
        attributions.SG_SAMPLES)


@pytest.mark.peer
@pytest.mark.slow
def test_attributions_benchmark_ig_peak_memory_children(tmp_path):
    """The IG peak-memory measurement runs each library in child processes (tiny sizes) with
    jaxadv's default ``chunk_size="auto"`` passed through the child's command line."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    from experiments.benchmarks import attributions

    mem = attributions.ig200_peak_memory(batch=4, steps=8)
    # "auto" at batch 4 on CPU: 16 images per call, so 4 of the 8 points.
    assert mem["jaxadv_chunk_size"] == "auto" and mem["jaxadv_points_per_call"] == 4
    assert all(v > 0 for v in mem["raw_maxrss_mb"].values())
    assert {"jaxadv", "captum"} <= set(mem)
    with pytest.raises(ValueError):
        attributions._points_per_call("some")
    assert attributions._points_per_call(" all ") is None
    assert attributions._points_per_call("3") == 3


def test_host_memory_benchmark_settings_must_include_reuse():
    from experiments.benchmarks import host_memory as bench

    assert bench.parse_args(["--settings", "reuse,reuse_async"]).settings == "reuse,reuse_async"
    assert bench.parse_args([]).settings == "reuse,no_reuse,reuse_async"  # one arena: opt-in
    assert bench.parse_args(["--settings", "reuse,reuse_one_arena"]).settings.endswith("one_arena")
    assert bench.SETTINGS["reuse_one_arena"]["MALLOC_ARENA_MAX"] == "1"
    assert bench.SETTINGS["reuse_thp"]["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    for bad in ("no_reuse,reuse_async", "reuse", "reuse,fast"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--settings", bad])


def test_profile_ops_matmul_flops_from_compiled_hlo():
    """profile_ops reads each matmul's FLOPs from the compiled HLO's shapes: a batched matmul
    (P, M, K) @ (P, K, N) does 2 P M N K, a plain one 2 M N K, whatever layout XLA picks."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import profile_ops

    def f(a, b, c, d, e):
        return jnp.einsum("pmk,pkn->pmn", a, b), c @ d.T, e @ jnp.sin(e)

    args = (jnp.ones((4, 24, 40)), jnp.ones((4, 40, 16)), jnp.ones((30, 12)), jnp.ones((20, 12)),
            jnp.ones((24, 24)))
    found = profile_ops.matmul_kernels(jax.jit(f).lower(*args).compile().as_text())
    # A square matmul has no batch dimension, however equal its sizes.
    assert sorted(r["flops"] for r in found.values()) == sorted(
        [2.0 * 4 * 24 * 16 * 40, 2.0 * 30 * 20 * 12, 2.0 * 24 * 24 * 24])
    assert all(r["what"].endswith("dot_general") for r in found.values())


def test_profile_ops_charges_each_kernel_until_the_next_starts():
    """Spans: each kernel of a call runs until the next kernel starts (the last one until the
    call ends), so an asynchronous kernel whose own event is short (an Eigen convolution) is
    charged with the work it queued; containers are left out and names grouped without their
    numeric suffix."""
    from experiments.benchmarks import profile_ops

    def ev(name, ts, dur):
        return {"name": name, "ts": ts, "dur": dur}

    call = [ev(profile_ops._EXECUTE, 0.0, 10000.0), ev("while.216", 100.0, 9000.0),
            ev("ThunkExecutor::Execute", 100.0, 50.0), ev("end: ynn_fusion", 2100.0, 0.0),
            ev("ynn_fusion", 100.0, 2000.0), ev("conv_general_dilated.2", 2500.0, 40.0),
            ev("ynn_fusion.12", 8500.0, 1000.0), ev("cond.1.clone", 9600.0, 10.0)]
    second = [dict(e, ts=e["ts"] + 20000.0) for e in call]
    k = profile_ops.group_kernels(call + second, calls=2)
    assert k["span"] == pytest.approx(
        {"ynn_fusion": 2.4, "conv_general_dilated.2": 6.0, "ynn_fusion.12": 1.5})
    assert k["busy"] == pytest.approx(
        {"ynn_fusion": 2.0, "conv_general_dilated.2": 0.04, "ynn_fusion.12": 1.0})
    assert k["span_groups"] == pytest.approx({"ynn_fusion": 3.9, "conv_general_dilated": 6.0})
    assert k["count"] == pytest.approx(
        {"ynn_fusion": 1.0, "conv_general_dilated.2": 1.0, "ynn_fusion.12": 1.0})


def test_profile_ops_runs_a_step_and_a_map(tmp_path):
    """The profiler runs a step and an attribution end to end (tiny batches: this checks the
    script, not the speed) and attributes part of the time to the model's matmuls."""
    pytest.importorskip("torch")  # the attribution inputs come from the attributions benchmark
    from experiments.benchmarks import profile_ops

    step = profile_ops.main(["--model", "poolgap", "--op", "pgd_step", "--batch", "4",
                             "--calls", "1", "--out", str(tmp_path / "p.json")])
    assert json.loads((tmp_path / "p.json").read_text())["settings"]["op"] == "pgd_step"
    assert step["wall_ms"] > 0 and step["kernels_ms"] and step["matmuls"]
    # Spans cover the calls: no more than the profiled calls' time, and no less than the kernels'
    # own durations.
    assert step["kernels_busy_total_ms"] <= step["kernels_total_ms"] <= 1.01 * step["wall_ms"]
    assert step["matmul_ms"] == pytest.approx(sum(r["ms"] for r in step["matmuls"]))
    assert all(r["gflops"] > 0 and len(r["shapes"]) == 3 for r in step["matmuls"])
    ig = profile_ops.main(["--model", "smallgap", "--op", "ig", "--batch", "2", "--calls", "1"])
    assert ig["settings"]["batch"] == 2 and ig["kernels_total_ms"] > 0


def test_attributions_chunk_sweep_interleaves_every_setting_of_both_libraries(tmp_path,
                                                                              monkeypatch):
    """The chunk sweep times every setting of both libraries in one interleaved set of rounds
    (so that the VM's slow and fast spells fall on all of them alike), at ``--batch`` images."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    from experiments.benchmarks import attributions, timing

    rounds = []
    real = timing.time_rounds

    def spy(fns, repeats, *args, **kwargs):
        rounds.append(sorted(fns))
        return real(fns, repeats, *args, **kwargs)

    monkeypatch.setattr(timing, "time_rounds", spy)
    result = attributions.main(["--quick", "--models", "smallgap", "--repeats", "1", "--batch",
                                "8", "--ig_chunk_sweep", "1,all", "--out", str(tmp_path / "s.json")])
    assert rounds == [[("captum", "1"), ("captum", "None"), ("jaxadv", "1"), ("jaxadv", "None")]]
    sweep = result["ig_chunk_sweep"]["smallgap"]
    assert sweep["batch"] == 8
    assert sweep["images_per_call"] == {"1": 8, "None": 8 * attributions.IG_STEPS}
    assert all(v > 0 for v in [*sweep["jaxadv_s"].values(), *sweep["captum_s"].values()])


def test_attributions_benchmark_times_both_libraries_in_the_same_rounds(monkeypatch, fast_compile):
    """The jaxadv-vs-Captum comparison times each method's two contestants in one interleaved
    set of rounds, so that a slow spell of the machine cannot fall on one library's block of
    calls; the reported seconds and speed-ups are those rounds' medians. jaxadv with all points
    in one call (IG, SmoothGrad) is timed after all of them (and after ``--compare_no_*``'s
    rounds), on its own (it slows the chunked programs down for a while after it runs)."""
    pytest.importorskip("torch")
    pytest.importorskip("captum")
    from experiments.benchmarks import attributions, timing

    rounds = []
    real = timing.time_rounds

    def spy(fns, repeats, *args, **kwargs):
        timed = real(fns, repeats, *args, **kwargs)
        rounds.append((sorted(fns), {k: v["median"] / 1e3 for k, v in timed.items()}))
        return timed

    monkeypatch.setattr(timing, "time_rounds", spy)
    out = attributions.bench_model("smallgap", 8, repeats=1, f64_reference=False,  # 8 devices
                                   forms_off=("depth_first",))
    methods, chunked = attributions.METHODS, attributions.CHUNKED
    forms_off = sorted((m, who) for m in chunked for who in ("jaxadv", "jaxadv_no_depth_first"))
    assert [names for names, _ in rounds] == (
        [["captum", "jaxadv"]] * len(methods) + [forms_off] + [[m] for m in chunked])
    for m, (_, medians) in zip(methods, rounds, strict=False):
        assert out["jaxadv_s"][m] == medians["jaxadv"] and out["captum_s"][m] == medians["captum"]
        for lib in ("jaxadv", "captum"):  # the spread of each library's timed calls
            spread = out["rounds_ms"][m][lib]
            assert spread["n"] == 1 and spread["median"] == pytest.approx(1e3 * medians[lib])
            assert spread["min"] <= spread["q25"] <= spread["median"] <= spread["q75"] <= spread["max"]
        assert out["speedup_vs_captum"][m] == pytest.approx(medians["captum"] / medians["jaxadv"])
    for m, (_, medians) in zip(chunked, rounds[len(methods) + 1:], strict=True):
        assert out["jaxadv_all_at_once_s"][m] == medians[m]


def test_attributions_benchmark_compares_jaxadv_without_a_fast_path_form(monkeypatch):
    """``compare_forms_off`` (``--compare_no_depth_first``) times jaxadv's IG and SmoothGrad
    compiled with and without a form in the same rounds, and compiles the contestant while the
    form is off: a spy on the depth-first rule sees it replaced during that compile only."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import attributions
    from jaxadv.models import fastpath

    fns, _, x, t, _, _ = attributions.build("smallgap", 4)
    key = jax.random.key(0)
    xj, tj = jnp.asarray(x), jnp.asarray(t, jnp.int32)
    ours = {m: jax.jit(f) for m, f in attributions._jaxadv_methods(fns, key).items()}
    seen = []
    real_compile = jax.stages.Lowered.compile

    def spy_compile(self, *args, **kwargs):
        seen.append(fastpath.depth_first_images(128, (32, 32), 64, ynnpack=False))
        return real_compile(self, *args, **kwargs)

    monkeypatch.setattr(jax.stages.Lowered, "compile", spy_compile)
    out = attributions.compare_forms_off(fns, key, xj, tj, ours, ("depth_first",), repeats=1)
    assert seen == [None, None]  # IG and SmoothGrad compiled with the rule off
    assert fastpath.depth_first_images(128, (32, 32), 64, ynnpack=False) == 8  # restored
    assert set(out["forms_off_s"]) == set(attributions.CHUNKED)
    assert all(set(v) == {"jaxadv", "jaxadv_no_depth_first"} and min(v.values()) > 0
               for v in out["forms_off_s"].values())
    assert out["speedup_vs_no_depth_first"] == {
        m: pytest.approx(v["jaxadv_no_depth_first"] / v["jaxadv"])
        for m, v in out["forms_off_s"].items()}


def test_every_fashion_mnist_robust_method_names_a_valid_objective():
    """Each config method resolves to an objective whose hyperparameters pass the checks (e.g.
    trades_b: Boopathy et al.'s batch-summed TRADES needs beta 1)."""
    from experiments.configs import fashion_mnist_robust as configs
    from jaxadv.training import get_objective

    for method in configs.METHODS:
        config = configs.get_config(method)
        get_objective(config.objective.name, **dict(config.objective.kwargs))
    assert {"trades_b", "int_ig", "int_ig_adv"} <= set(configs.METHODS)
