"""experiments/reproduce_chattopadhyay.py runs end to end (tiny quick settings, official MNIST
checkpoint; skipped where ../shared/data is missing)."""

import json

import numpy as np
import pytest


def test_missing_shared_data_is_a_clear_error(tmp_path):
    from experiments import reproduce_chattopadhyay

    with pytest.raises(SystemExit, match="needs ../shared/data"):
        reproduce_chattopadhyay.main(["--quick", "--shared", str(tmp_path / "absent"),
                                      "--out_dir", str(tmp_path / "out")])


def test_table_only_without_results_is_a_clear_error(tmp_path):
    from experiments import reproduce_chattopadhyay

    with pytest.raises(SystemExit, match="--table_only needs"):
        reproduce_chattopadhyay.main(["--table_only", "--out_dir", str(tmp_path / "none")])


def test_redo_of_a_model_the_run_does_not_evaluate_is_an_error(tmp_path):
    from experiments import reproduce_chattopadhyay

    with pytest.raises(SystemExit, match=r"--redo mnist_pool_adv: not among this run's models "
                                         r"\(mnist_smallgap_normal, fmnist_normal\)"):
        reproduce_chattopadhyay.main(["--quick", "--models", "smallgap_normal", "--redo",
                                      "mnist_pool_adv", "--fmnist_workdir", "w/normal",
                                      "--out_dir", str(tmp_path / "out")])


@pytest.mark.slow
def test_reproduce_chattopadhyay_quick(shared_data, tmp_path):
    from experiments import reproduce_chattopadhyay

    out = tmp_path / "chat"
    args = ["--quick", "--shared", str(shared_data), "--out_dir", str(out), "--n", "8",
            "--models", "smallgap_normal", "--attacks", "fgsm", "deepfool",
            "--p_importance", "0.2", "--p_attack", "0.1", "0.2",
            "--fmnist_workdir", str(tmp_path / "no_such_run")]
    results = reproduce_chattopadhyay.main(args)
    s = results["settings"]
    assert s["mode"] == "quick" and s["p_attack"] == [0.1, 0.2]
    m = results["models"]["mnist_smallgap_normal"]
    assert set(m["attacks"]) == {"fgsm", "deepfool"}
    fgsm = m["attacks"]["fgsm"]
    assert fgsm["num_attacked"] >= 6  # FGSM at eps 0.3 breaks the normal model
    for v in fgsm["r1"].values():
        assert 0.0 <= v <= 1.0
    for variant in reproduce_chattopadhyay.VARIANTS:
        r2 = fgsm["r2"][variant]
        assert np.asarray(r2["neutralized_accuracy"]).shape == (1, 2, len(s["fills"]))
        rec = np.asarray(r2["recovery_rate"], float)
        assert np.all((rec >= 0) & (rec <= 1))
        # A larger RoA neutralises more pixels.
        frac = np.asarray(r2["mask_fraction"])
        assert frac[0, 0] <= frac[0, 1] + 1e-6
    assert results["claim"]["verdict"] in ("supported", "not supported")
    assert set(results["claim"]["per_fill"]) == set(s["fills"])
    assert "per_data" not in results["claim"]  # one dataset: nothing to split
    # With models of two datasets the claim is also checked per dataset: the MNIST-only check
    # is the one-dataset check above, whatever the other dataset's models show.
    two = {**results, "models": {**results["models"],
                                 "fmnist_copy": results["models"]["mnist_smallgap_normal"]}}
    split = reproduce_chattopadhyay.claim_check(two)["per_data"]
    assert set(split) == {"mnist", "fmnist"}
    assert split["mnist"] == results["claim"]
    assert set(fgsm["random_control_recovery"]["proxy"]) == set(s["fills"])
    assert json.loads((out / "results.json").read_text())["models"].keys() == {
        "mnist_smallgap_normal"}
    text = (out / "tables.md").read_text()
    assert "## R-1" in text and "| mnist_smallgap_normal | fgsm |" in text and "Overall:" in text
    for name in ("overlays_mnist_smallgap_normal.png", "recovery_vs_pA.png"):
        assert (out / name).stat().st_size > 10_000
    # A second run with the same settings keeps the saved model; other settings stop the run.
    saved = json.loads((out / "results.json").read_text())
    assert reproduce_chattopadhyay.main(args)["models"] == saved["models"]
    with pytest.raises(SystemExit, match="other settings.*p_default"):
        reproduce_chattopadhyay.main([*args, "--p_default", "0.1"])
    assert json.loads((out / "results.json").read_text())["models"] == saved["models"]
    # --redo evaluates a saved model again and replaces its record.
    redone = reproduce_chattopadhyay.main([*args, "--redo", "mnist_smallgap_normal"])
    rec = redone["models"]["mnist_smallgap_normal"]
    assert rec["seconds"] != m["seconds"]
    assert rec["attacks"]["fgsm"]["num_attacked"] == fgsm["num_attacked"]
    assert json.loads((out / "results.json").read_text())["models"] == redone["models"]
