"""experiments/resumable.py: the growing results files of the long reproduction scripts."""

import pathlib

import pytest

from experiments import resumable


def test_redo_keeps_the_saved_record_until_it_is_replaced(capsys):
    out = pathlib.Path("somewhere")
    results = {"models": {"a": {"v": 1}, "b": {"v": 2}}}
    assert resumable.already_saved(results, "a", out)
    assert not resumable.already_saved(results, "a", out, redo=["a"])
    assert results["models"]["a"] == {"v": 1}  # an interrupted rerun still has it
    assert "analysed again (--redo)" in capsys.readouterr().out
    assert resumable.already_saved(results, "b", out, redo=["a"])
    assert not resumable.already_saved(results, "c", out, redo=["c"])  # new: nothing to say
    assert capsys.readouterr().out.count("already in") == 1


def test_redo_of_a_model_the_run_does_not_load_is_an_error():
    resumable.check_redo([], ["a"])
    resumable.check_redo(["a"], ["a", "b"])
    with pytest.raises(SystemExit, match=r"--redo x y: not among this run's models \(a, b\)"):
        resumable.check_redo(["x", "a", "y"], ["a", "b"])
    with pytest.raises(SystemExit, match=r"\(none\)"):
        resumable.check_redo(["x"], [])


def test_quick_smoke_runs_write_beside_the_committed_results(tmp_path, monkeypatch):
    """`--quick` of the reproduction scripts used to stop at once: its default output held the
    committed full results ("other settings"). Quick runs now default to their own paths."""
    from experiments import fashion_mnist_robust, reproduce_chattopadhyay, reproduce_xu

    assert reproduce_xu._parse(["--quick"]).out_dir == "results/xu_quick"
    assert reproduce_xu._parse([]).out_dir == "results/xu"
    assert reproduce_chattopadhyay._parse(["--quick"]).out_dir == "results/chattopadhyay_quick"
    assert reproduce_chattopadhyay._parse([]).out_dir == "results/chattopadhyay"
    assert reproduce_xu._parse(["--quick", "--out_dir", "d"]).out_dir == "d"
    monkeypatch.chdir(tmp_path)  # --table_only reads the default output: the quick one
    with pytest.raises(FileNotFoundError, match="fashion_mnist_robust_quick.json"):
        fashion_mnist_robust.main(["--quick", "--table_only"])
