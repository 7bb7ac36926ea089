"""experiments/report.py: the command line recorded with results, and JSON writes that never lose an
earlier file."""

import json

import pytest

from experiments import report


def test_command_from_argv_and_from_process(monkeypatch):
    assert report.command("experiments.x", ["--n", "3"]) == "python -m experiments.x --n 3"
    monkeypatch.setattr("sys.argv", ["x.py", "--quick"])
    assert report.command("experiments.x", None) == "python -m experiments.x --quick"


def test_write_json_creates_folders_and_round_trips(tmp_path):
    path = report.write_json(tmp_path / "a" / "b" / "r.json", {"k": [1, 2.5]})
    assert json.loads(path.read_text()) == {"k": [1, 2.5]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left


def test_write_json_failure_keeps_earlier_file(tmp_path):
    path = report.write_json(tmp_path / "r.json", {"old": 1})
    with pytest.raises(TypeError):
        report.write_json(path, {"new": object()})  # not JSON-serialisable
    assert json.loads(path.read_text()) == {"old": 1}


def test_write_json_rejects_nan_when_asked_and_keeps_earlier_file(tmp_path):
    path = report.write_json(tmp_path / "r.json", {"old": 1}, sort_keys=True)
    with pytest.raises(ValueError):
        report.write_json(path, {"new": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"old": 1}


@pytest.mark.slow
def test_report_examples_use_the_runs_norm_and_the_checkpoint_of_its_results(tmp_path,
                                                                               monkeypatch):
    """A run evaluated with l2 PGD gets an l2 example figure (an l2 eps used as an l-inf radius
    wiped the images out), and a run that ends on its best checkpoint shows that one."""
    import json
    import re

    from experiments.configs import fashion_mnist_robust
    from jaxadv.report import write_report
    from jaxadv.training import train_and_evaluate
    from tests.training.helpers import make_synthetic_idx

    monkeypatch.setenv("JAXADV_FASHION_MNIST_DIR", str(
        make_synthetic_idx(tmp_path / "data", num_train=256, num_test=64)))
    config = fashion_mnist_robust.get_config("normal,quick")
    config.train.num_steps, config.train.checkpoint_every = 6, 6
    config.train.eval_every, config.train.final_from_best = 3, True
    config.dataset.validation_examples = 32
    config.eval.num_examples = 64
    config.eval.robust_kwargs = {"eps": 1.5, "norm": "l2", "step_size": 0.3, "num_steps": 2}
    workdir = tmp_path / "w"
    train_and_evaluate(config, str(workdir), verbose=False)
    assert json.loads((workdir / "config.json").read_text())["train"]["final_from_best"]
    with open(write_report(str(workdir), num_examples=2)) as f:
        page = f.read()
    caption = re.findall(r"<figcaption>(.*?)</figcaption>", page)[-1]
    assert "l2 eps 1.5" in caption and "l-inf" not in caption
    assert "the best checkpoint" in caption
