"""experiments/reproduce_xu.py runs end to end on the official MNIST checkpoints (tiny settings)."""

import json

import numpy as np
import pytest


def test_concept_masks_proxy():
    from experiments.reproduce_xu import CONCEPTS, concept_masks

    x = np.zeros((2, 3, 3, 1), np.float32)
    x[0, 1, 1] = 0.9
    x[1, 0, :] = 0.7
    m = concept_masks(x, np.asarray([4, 7]))
    assert m.shape == (2, 3, 3, len(CONCEPTS))
    np.testing.assert_array_equal(m[..., 0].sum((1, 2)), [1, 3])  # stroke
    np.testing.assert_array_equal(m[..., 1].sum((1, 2)), [8, 6])  # background
    assert m[0, 1, 1, 2 + 4] and m[1, 0, 0, 2 + 7] and m[..., 2:].sum() == 4  # stroke of class


@pytest.mark.slow
def test_reproduce_xu_quick(shared_data, tmp_path):
    from experiments import reproduce_xu

    out = tmp_path / "xu"
    args = ["--quick", "--n", "4", "--n_probe", "20", "--attacks", "fgsm", "str",
            "--masked_units", "0", "3", "--pixel_method", "first_order", "--chunk", "98",
            "--out_dir", str(out), "--shared", str(shared_data)]
    results = reproduce_xu.main(args)
    rec = results["models"]["mnist_smallgap_normal_100"]
    assert rec["n_images"] == 4 and set(rec["attacks"]) == {"fgsm", "str"}
    for a in rec["attacks"].values():
        frac = [v for v in a["x1"]["image_types"].values() if v is not None]
        assert not frac or abs(sum(frac) - 1) < 1e-5
        assert 0 <= a["x2"]["IS"]["mean"] <= 1 if a["x2"]["IS"]["mean"] is not None else True
    assert rec["masking"]["num_masked"] == [0, 3]
    assert len(results["claims"]) == 5
    assert json.loads((out / "results.json").read_text())["settings"]["quick"]
    text = (out / "tables.md").read_text()
    assert "### X-1" in text and "### X-5" in text and "Str-attack" in text
    assert (out / "ratio_hist_mnist_smallgap_normal_100.png").stat().st_size > 5_000
    # A second run with the same settings keeps the saved model instead of redoing it ...
    saved = (out / "results.json").read_text()
    again = reproduce_xu.main(args)
    assert again["models"] == json.loads(saved)["models"]
    # ... and one with other settings stops rather than overwrite it.
    with pytest.raises(SystemExit, match="other settings.*eps"):
        reproduce_xu.main([*args, "--eps", "0.2"])
    assert json.loads((out / "results.json").read_text())["models"] == again["models"]
    # --redo analyses a saved model again and replaces its record; a name the run does not load
    # is an error before any work, and the file stays as it was.
    with pytest.raises(SystemExit, match="--redo nope: not among this run's models "
                                         r"\(mnist_smallgap_normal_100\)"):
        reproduce_xu.main([*args, "--redo", "nope"])
    assert json.loads((out / "results.json").read_text())["models"] == again["models"]
    redone = reproduce_xu.main([*args, "--redo", "mnist_smallgap_normal_100"])
    rec2 = redone["models"]["mnist_smallgap_normal_100"]
    assert rec2["command"].endswith("--redo mnist_smallgap_normal_100")
    assert rec2["seconds"] != rec["seconds"] and rec2["n_images"] == 4
    assert json.loads((out / "results.json").read_text())["models"] == redone["models"]


@pytest.mark.slow
def test_reproduce_xu_fashion_mnist_workdir(tmp_path, monkeypatch):
    """The --fmnist_workdir path on a 20-step model trained on synthetic Fashion-MNIST files."""
    from experiments import reproduce_xu
    from tests.training.helpers import train_tiny_fashion_mnist_workdir

    workdir = train_tiny_fashion_mnist_workdir(tmp_path, monkeypatch)
    results = reproduce_xu.main([
        "--quick", "--checkpoints", "--fmnist_workdir", str(workdir), "--n", "2",
        "--n_probe", "16", "--attacks", "ifgsm", "--masked_units", "0", "2", "--pixel_method",
        "first_order", "--no_figures", "--out_dir", str(tmp_path / "xu")])
    rec = results["models"]["fmnist:normal"]
    assert rec["dissection"]["n_probe"] == 16
    assert 0 <= rec["attacks"]["ifgsm"]["x1"]["success_rate"] <= 1
    missing = reproduce_xu.main(["--quick", "--checkpoints", "--fmnist_workdir",
                                 str(tmp_path / "absent"), "--no_figures", "--out_dir",
                                 str(tmp_path / "xu2")])
    assert missing["models"] == {}


def _record(interpretable, alignment, alignment_units=None):
    x4 = {"spearman": 0.1, "alignment": alignment}
    if alignment_units is not None:
        x4["alignment_units"] = alignment_units
    return {
        "attacks": {"fgsm": {
            "x1": {"n_success": 3, "image_types": {"suppression": 0.2, "balanced": 0.5,
                                                   "promotion": 0.3}},
            "x3": {"promotion_in_target": {"mean": 0.3}, "suppression_in_source": {"mean": 0.3}},
            "x4": x4}},
        "dissection": {"num_units": 100, "interpretable": interpretable},
        "masking": {"num_masked": [0, 1], "settings": {"n_eval": 10},
                    "top": {"clean": [1, 1], "transfer": [0.5, 0.5], "adaptive": [0.5, 0.5]},
                    "random": {"clean": [1, 1], "transfer": [0.5, 0.5], "adaptive": [0.5, 0.5]}}}


def test_the_concept_claim_needs_interpretable_units():
    """Claim (4) of methods.md 2.1 / 2.5 counts only interpretable units: with none it is not
    testable (it used to 'agree' on SmallGAP from units whose best IoU was 0.002), a record from
    before the rule is not testable either, and a current record decides it."""
    from experiments.reproduce_xu import _verdict, claims

    good = {"source": -0.5, "target": 0.4, "other": 0.0}
    results = {"settings": {"cam_top_percent": 20.0, "quick": True, "eps": 0.3, "targets": "t",
                            "group_size": 2},
               "models": {"none": _record(0, good, 0), "stale": _record(5, good),
                          "ok": _record(5, good, 5),
                          "wrong": _record(5, {"source": 0.2, "target": 0.4, "other": 0.0}, 5)}}
    verdict = {c["model"]: c for c in claims(results) if "concept is the true class" in c["claim"]}
    assert verdict["none"]["holds"] is None and verdict["stale"]["holds"] is None
    assert "no interpretable unit" in json.dumps(verdict["none"]["evidence"])
    assert "rerun the model (--redo stale)" in json.dumps(verdict["stale"]["evidence"])
    assert verdict["ok"]["holds"] is True and verdict["ok"]["evidence"]["units"] == 5
    assert verdict["wrong"]["holds"] is False
    assert [_verdict(v) for v in (None, True, False)] == ["not testable", "agrees",
                                                           "does not agree"]
