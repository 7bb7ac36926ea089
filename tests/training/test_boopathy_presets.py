"""experiments/configs/boopathy.py: the training presets of methods.md 1.7 (values checked against
the spec's table), every Table B-1 method builds, paper_compat's TRADES, and a quick run of each
dataset on tensorflow-datasets mock data."""

import tempfile

import numpy as np
import pytest

from experiments.configs import boopathy
from jaxadv.training import get_objective
from jaxadv.training.schedules import learning_rate_schedule


def test_mnist_preset_is_section_1_7():
    c = boopathy.get_config("mnist,smallgap,int2")
    k = c.objective.kwargs
    assert (c.dataset.name, c.model.name, c.objective.name) == ("mnist", "smallgap", "int2")
    assert (k.eps, k.num_steps, k.step_size, k.gamma) == (0.3, 40, 0.01, 0.01)
    assert (k.ramp_start, k.ramp_end) == (2000, 10000)
    assert (c.train.batch_size, c.train.num_epochs) == (50, 100)
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.schedule) == (
        "adam", 1e-4, "constant")
    # methods.md 1.8: evaluation PGD-200, no random start, steps of 0.01
    assert dict(c.eval.robust_kwargs) == {"eps": 0.3, "step_size": 0.01, "num_steps": 200,
                                          "random_start": False}


def test_cifar_preset_is_section_1_7():
    c = boopathy.get_config("cifar10,boopathy_wresnet,adv")
    k = c.objective.kwargs
    assert (k.eps, k.num_steps, k.step_size) == (8 / 255, 10, 2 / 255)
    assert (k.ramp_start, k.ramp_end) == (5000, 70000)
    assert (c.train.batch_size, c.train.num_epochs) == (128, 200)
    o = c.optimizer
    lr = learning_rate_schedule(learning_rate=o.learning_rate, schedule=o.schedule,
                                boundaries=o.boundaries, values=o.get("values"))
    np.testing.assert_allclose([float(lr(s)) for s in (0, 39_999, 40_000, 59_999, 60_000)],
                               [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-6)


@pytest.mark.parametrize("dataset", sorted(boopathy.DATASETS))
def test_every_method_and_model_builds(dataset):
    for model in boopathy.DATASETS[dataset]["models"]:
        for method in boopathy.METHODS:
            for variant in ("", ",paper_compat"):
                c = boopathy.get_config(f"{dataset},{model},{method}{variant}")
                get_objective(c.objective.name, **dict(c.objective.kwargs))
    assert len(boopathy.METHODS) == 12  # Table B-1's rows


def test_paper_compat_trades_is_the_official_batch_sum():
    default = boopathy.get_config("mnist,smallgap,trades").objective.kwargs
    compat = boopathy.get_config("mnist,smallgap,trades,paper_compat").objective.kwargs
    assert default.beta == 6.0 and not default.get("batch_sum", False)
    assert compat.beta == 1.0 and compat.batch_sum
    ig = boopathy.get_config("mnist,pool,intig,paper_compat").objective
    assert (ig.name, ig.kwargs.weight) == ("int_ig", 0.02)


@pytest.mark.parametrize("arg,match", [
    ("mnist,smallgap", "DATASET,MODEL,METHOD"), ("imagenet,smallgap,int2", "Restricted ImageNet"),
    ("mnist,boopathy_wresnet,int2", "Unknown model"), ("mnist,smallgap,int3", "Unknown method"),
    ("mnist,smallgap,int2,fast", "Unknown variant")])
def test_bad_preset_names(arg, match):
    with pytest.raises(ValueError, match=match):
        boopathy.get_config(arg)


@pytest.mark.slow
@pytest.mark.parametrize("arg", ["mnist,smallgap,int2,quick",
                                 "cifar10,smallgap,trades,paper_compat,quick"])
def test_quick_preset_trains_on_mock_data(arg, tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jaxadv.training import train_and_evaluate

    own = tmp_path / "tempfile"  # tfds leaves an empty temp directory behind (test_pipeline.py)
    own.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own))
    config = boopathy.get_config(arg)
    config.train.num_steps = 4
    config.train.batch_size = 8
    config.eval.num_examples = 16
    config.eval.robust_examples = 8
    config.eval.batch_size = 16
    with tfds.testing.mock_data(num_examples=32):
        result = train_and_evaluate(config, str(tmp_path / "w"), verbose=False)
    assert result["step"] == 4
    assert 0 <= result["test_accuracy"] <= 1 and np.isfinite(result["test_loss"])
