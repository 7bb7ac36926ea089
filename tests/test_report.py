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
