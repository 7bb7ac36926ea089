"""The benchmarks' shared timing helpers (``experiments/benchmarks/timing.py``), on a fake clock:
what each call costs is set by the test, so medians, warm-up calls and turn order are exact."""

import pytest

from experiments.benchmarks import timing


@pytest.fixture
def clock(monkeypatch):
    """A fake ``time.perf_counter`` that advances only when a contestant says so, and a fake
    ``time.process_time`` that advances twice as fast (a contestant busy on two cores)."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timing.time, "process_time", lambda: 2 * now[0])

    def advance(seconds):
        now[0] += seconds
    return advance


def test_time_rounds_warms_up_once_and_reverses_the_order_every_other_round(clock):
    calls = []

    def contestant(name, seconds):
        def fn():
            calls.append(name)
            clock(seconds)
        return fn

    out = timing.time_rounds({"a": contestant("a", 0.002), "b": contestant("b", 0.005)}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then rounds
    assert out["a"]["median"] == pytest.approx(2.0) and out["b"]["median"] == pytest.approx(5.0)
    assert out["a"]["n"] == out["b"]["n"] == 3


def test_time_rounds_times_every_call_of_a_turn(clock):
    costs = iter([9.0, 1.0, 2.0, 3.0, 4.0])  # the first is the warm-up call, not timed
    out = timing.time_rounds({"a": lambda: clock(next(costs))}, 2, calls_per_turn=2)
    assert out["a"]["n"] == 4
    assert (out["a"]["min"], out["a"]["max"]) == (pytest.approx(1e3), pytest.approx(4e3))
    assert out["a"]["median"] == pytest.approx(2.5e3)
    assert out["a"]["cpu_median"] == pytest.approx(5e3)  # the process's CPU time per call


def test_median_seconds_skips_the_warm_up_call(clock):
    costs = iter([100.0, 3.0, 1.0, 2.0])
    assert timing.median_seconds(lambda: clock(next(costs)), repeats=3) == pytest.approx(2.0)
    assert timing.time_once(lambda: clock(0.25)) == pytest.approx(0.25)


def test_median_seconds_in_rounds_is_in_seconds(clock):
    out = timing.median_seconds_in_rounds({"a": lambda: clock(0.5), "b": lambda: clock(1.5)},
                                          repeats=2)
    assert out == {"a": pytest.approx(0.5), "b": pytest.approx(1.5)}


@pytest.mark.parametrize("call", [
    lambda: timing.median_seconds(lambda: None, repeats=0),
    lambda: timing.time_rounds({"a": lambda: None}, 0),
    lambda: timing.time_rounds({"a": lambda: None}, 1, calls_per_turn=0),
])
def test_timing_refuses_zero_repeats(call):
    with pytest.raises(ValueError, match="at least 1"):
        call()
