"""Timing and FLOP-count helpers shared by the benchmarks.

Every timed function ``fn()`` here must block until its result is ready (end with
``jax.block_until_ready`` for JAX; eager PyTorch on CPU returns when done). Times are wall-clock
(``time.perf_counter``). Comparisons between libraries use :func:`time_rounds`: the contestants
run in turn within each round, the order reversed every other round, so that a slow spell of a
shared machine falls on all of them alike and on the first and last turn alike.
"""

import statistics
import time
from unittest import mock


def summary(times: list[float]) -> dict:
    """Seconds -> milliseconds: median, quartiles, min, max, n."""
    ms = sorted(t * 1e3 for t in times)
    q = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "q25": q[0], "q75": q[2], "min": ms[0],
            "max": ms[-1], "n": len(ms)}


def time_once(fn) -> float:
    """Wall seconds of one call of ``fn()`` (with compilation, if it is the first)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn, *, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1; got {repeats}.")
    fn()
    return statistics.median(time_once(fn) for _ in range(repeats))


def time_rounds(fns: dict, repeats: int, calls_per_turn: int = 1) -> dict:
    """``fns[name]()`` must block until done. One warm-up call each, then ``repeats`` rounds with
    every contestant in turn (order reversed every other round), each turn ``calls_per_turn``
    calls back to back, each timed. Returns name -> :func:`summary` of every timed call
    (milliseconds), with ``cpu_median``: the median CPU time of the process per call (all its
    threads, ``time.process_time``; milliseconds). CPU time over wall time tells how many cores a
    call kept busy, and a call that takes longer with more CPU time waited or spun more, where
    one with the same CPU time waited for the machine."""
    if repeats < 1 or calls_per_turn < 1:
        raise ValueError(f"repeats and calls_per_turn must be at least 1; got {repeats} and "
                         f"{calls_per_turn}.")
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            for _ in range(calls_per_turn):
                c0 = time.process_time()
                times[name].append(time_once(fns[name]))
                cpu[name].append(time.process_time() - c0)
    return {name: {**summary(ts), "cpu_median": statistics.median(cpu[name]) * 1e3}
            for name, ts in times.items()}


def median_seconds_in_rounds(fns: dict, *, repeats: int) -> dict:
    """:func:`time_rounds` with one call per turn, as name -> median seconds."""
    return {name: s["median"] / 1e3 for name, s in time_rounds(fns, repeats).items()}


def matmul_peak_gflops(n: int, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an (n, n) @ (n, n) float32 ``jnp.dot`` (best of ``repeats``)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    best = min(time_once(lambda: jax.block_until_ready(dot(a, a))) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def xla_flops(lowered) -> float | None:
    """XLA's FLOP count of a lowered computation: from the HLO where the backend gives it (CPU),
    else from the compiled executable (JAX 0.11 on GPU gave none for the HLO); None if neither
    does (cost analysis is best effort)."""
    for analyse in (lambda: lowered.cost_analysis(), lambda: lowered.compile().cost_analysis()):
        try:
            cost = analyse()
        except Exception:
            continue
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else None
        if cost and cost.get("flops"):
            return float(cost["flops"])
    return None


def executed_flops(fn, args) -> float | None:
    """XLA's FLOP count of ``jax.jit(fn)(*args)`` as the fast path (in the caller's setting) runs
    it. XLA's cost analysis counts a loop's body once; the fast path's chunk loops (Winograd's
    images in chunks, ``fastpath._winograd_chunks``) run the same products as one chunk of the
    whole batch, so the count comes from the program lowered with one chunk (caches cleared
    before and after: JAX would otherwise reuse a lowering of the same function)."""
    import jax

    from jaxadv.models import fastpath

    jax.clear_caches()
    try:
        with mock.patch.object(fastpath, "_winograd_chunks", lambda batch, *a: (1, batch)):
            return xla_flops(jax.jit(fn).lower(*args))
    finally:
        jax.clear_caches()
