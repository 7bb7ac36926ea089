"""experiments/benchmarks/setup_time.py and compile_cache.py: the parts that run in a test."""

import pytest

from experiments.benchmarks import setup_time


def test_pytest_summary_reads_the_last_summary_line():
    text = ("..........\n= 2 passed in 1.00s =\nslowest durations\n"
            "1386 passed, 3 skipped, 1 warning in 835.12s (0:13:55)\n")
    assert setup_time.pytest_summary(text) == {"passed": 1386, "skipped": 3, "warning": 1,
                                                "seconds": 835.12}
    assert setup_time.pytest_summary("= 1 failed, 9 passed, 2 errors in 3.5s =") == {
        "failed": 1, "passed": 9, "error": 2, "seconds": 3.5}
    assert setup_time.pytest_summary("make: *** [test] Error 2") == {}


def test_an_existing_root_is_refused_before_anything_is_cloned(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists; name a new folder"):
        setup_time.main(["--out", str(tmp_path / "o.json"), "--root", str(tmp_path)])
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_compile_cache_needs_a_try():
    from experiments.benchmarks import compile_cache

    with pytest.raises(SystemExit, match="--tries 0: give at least 1"):
        compile_cache.main(["--out", "unused.json", "--tries", "0"])
