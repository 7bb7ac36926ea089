"""Where one jaxadv op spends its time: XLA:CPU's per-kernel trace, grouped.

    python -m experiments.benchmarks.profile_ops --model preact_resnet18 --op ig \
        [--batch 16] [--calls 2] [--no_fastpath] [--out results/profile_FILE.json]

Ops: ``forward``, ``pgd_step``, ``pgd10`` and ``train_step`` as
:mod:`experiments.benchmarks.step_speed` times them (batch 128 by default), ``ig``,
``smoothgrad``, ``gradcam`` and ``occlusion`` as :mod:`experiments.benchmarks.attributions`
times them (its models' batches by default:
SmallGAP 128, ResNet-18 16; same inputs, weights and settings). The op is compiled once, run
once to warm up and ``--calls`` times under ``jax.profiler``; the trace's kernel events (XLA:CPU
records one per thunk: a fusion, a library matmul, a convolution, a copy; containers such as
while loops and the executable itself are left out) are charged, per call, with their span: the
time from a kernel's start to the next kernel's start (:func:`group_kernels`). Spans add up to
the call's time and charge an asynchronous kernel with the work it queued (XLA:CPU's Eigen
convolutions and dots return once their work is on the thread pool, so their own events are
short: ``kernels_busy_ms`` has those durations), a synchronous one with the dispatch gap after
it. Both are summed per name with the numeric suffix stripped (``concatenate_bitcast_fusion.12``
counts as ``concatenate_bitcast_fusion``).

Matmuls: every kernel whose HLO instruction comes from a ``dot_general`` (YNNPACK's
``__ynn_fusion`` or a plain ``dot``) is listed with its operand and result shapes, its time per
call and its rate: 2 * result size * K FLOPs, K the contracted size (from the shapes:
K^2 = |A| |B| / (|C| P) for P equal leading batch dimensions), over its span. JSON (``--out``):
``wall_ms`` (median of the profiled calls), ``kernels_ms`` {name: span ms per call},
``kernels_busy_ms``, their totals, ``matmuls`` [{name, shapes, ms, busy_ms, gflops, what}],
``matmul_ms`` (their spans' sum), ``settings``.

The trace format is the TensorBoard profile plugin's ``*.trace.json.gz`` that ``jax.profiler``
writes on CPU; timings on a shared VM are noisy, so compare ops within one run.
"""

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time

import numpy as np

import jaxadv  # noqa: F401  (before JAX starts: XLA:CPU's convolution flags, jaxadv.devices)
from experiments import report

STEP_OPS = ("forward", "pgd_step", "pgd10", "train_step")
ATTRIBUTION_OPS = ("ig", "smoothgrad", "gradcam", "occlusion")
# Trace events that contain kernels or are not kernels themselves.
_CONTAINERS = ("PjitFunction", "CommonPjRt", "ThunkExecutor", "SlinkyThreadPool", "Threadpool",
               "ParseArguments", "Handle ", "AllocateOutputBuffers", "PythonRefManager", "$",
               "end: ")
_CONTROL = re.compile(r"^(while|cond|conditional|call)(\.\d+)*(\.clone)?$")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="preact_resnet18",
                   help="smallgap, poolgap or preact_resnet18")
    p.add_argument("--op", default="ig", choices=STEP_OPS + ATTRIBUTION_OPS)
    p.add_argument("--batch", type=int, default=None,
                   help="default: 128 for the steps, the attributions benchmark's for the maps")
    p.add_argument("--calls", type=int, default=2, help="profiled calls (after one warm-up)")
    p.add_argument("--top", type=int, default=25, help="kernel names printed")
    p.add_argument("--no_fastpath", action="store_true", help="the standard lowering")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.calls < 1:
        p.error(f"--calls must be at least 1, got {args.calls}.")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}.")
    return args


def _step_op(model: str, op: str, batch: int):
    """(jitted fn, args) of a step_speed op with that benchmark's inputs and settings (the train
    step's state not donated: every profiled call gets the same one)."""
    import jax

    from experiments.benchmarks import step_speed as S

    if model not in S.MODELS:
        raise ValueError(f"Unknown model {model!r}; choose one of {sorted(S.MODELS)}.")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, (batch,) + S.MODELS[model]).astype(np.float32)
    y = rng.integers(0, 10, (batch,)).astype(np.int32)
    ops = S.op_definitions(model, x, y)
    return jax.jit(ops["defs"][op]), ops["args"][op]


def _attribution_op(model: str, op: str, batch: int):
    """(jitted fn, args) of an attributions-benchmark method on its model, inputs, settings."""
    import jax
    import jax.numpy as jnp

    from experiments.benchmarks import attributions as B

    fns, _, x, t, _, _ = B.build(model, batch)
    method = B._jaxadv_methods(fns, jax.random.key(0))[op]
    return jax.jit(method), (jnp.asarray(x), jnp.asarray(t, jnp.int32))


def _shapes(hlo: str) -> dict:
    """HLO instruction name -> its result shape text (``f32[16,128,512]``), from compiled HLO."""
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\w+\[[^\]]*\])", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _dims(shape: str) -> list[int]:
    inside = shape.split("[", 1)[1].rstrip("]")
    return [int(d) for d in re.findall(r"\d+", inside)]


def matmul_kernels(hlo: str) -> dict:
    """Kernel name -> {"shapes": [A, B, C], "flops": ..., "what": op_name} for every instruction
    of the compiled HLO (outside fusions' bodies: a kernel is the fusion) made from a
    ``dot_general`` whose two operands and result give a matmul's shapes (see the module
    docstring for K)."""
    shapes, out, inside_fusion = _shapes(hlo), {}, False
    for line in hlo.splitlines():
        header = re.match(r"(?:ENTRY )?%(\S+) \(.*\{$", line)
        if header:  # a computation starts: a fusion's body runs inside its fusion's kernel
            inside_fusion = header.group(1).startswith(("fused_", "wrapped_"))
            continue
        m = None if inside_fusion else re.match(
            r"\s*(?:ROOT )?%(\S+) = (\w+\[[^\]]*\])\S* (?:fusion|dot)\(([^)]*)\)", line)
        what = re.search(r'op_name="([^"]*)"', line)
        if not m or not what or not what.group(1).endswith("dot_general"):
            continue
        operands = [o.strip().lstrip("%") for o in m.group(3).split(",")]
        if len(operands) < 2 or any(o not in shapes for o in operands[:2]):
            continue
        a, b, c = _dims(shapes[operands[0]]), _dims(shapes[operands[1]]), _dims(m.group(2))
        p = 1  # leading batch dimensions: equal in all three, and each keeps two more
        for da, db, dc in zip(a, b, c[:max(0, min(len(a), len(b), len(c)) - 2)], strict=False):
            if not da == db == dc:
                break
            p *= dc
        k2 = math.prod(a) * math.prod(b) / max(1, math.prod(c) * p)
        k = math.sqrt(k2) if k2 > 0 else 0.0
        if not k or abs(k - round(k)) > 1e-6:
            continue
        out[m.group(1)] = {"shapes": [shapes[operands[0]], shapes[operands[1]], m.group(2)],
                           "flops": 2.0 * math.prod(c) * round(k),
                           "what": "/".join(what.group(1).split("/")[-3:])}
    return out


def kernel_events(trace_dir: str) -> list[dict]:
    """The complete ("X") events of the newest ``*.trace.json.gz`` under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(
            f"jax.profiler wrote no *.trace.json.gz under {trace_dir}: this JAX may write another "
            "trace format; open the trace directory in TensorBoard or Perfetto instead.")
    with gzip.open(files[-1]) as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


_EXECUTE = "CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice"


def _is_kernel(name: str) -> bool:
    return not (name.startswith(_CONTAINERS) or _CONTROL.match(name))


def _group(name: str) -> str:
    return re.sub(r"(\.\d+)+$", "", name)


def group_kernels(events: list[dict], calls: int) -> dict:
    """Per call of the op, in ms: ``span`` {kernel name: time from each of its starts to the
    next kernel's start, or to the end of the call for the last one}, ``busy`` {kernel name:
    the events' own durations}, ``count`` {kernel name: runs per call}, and span and busy
    summed per name without numeric suffix (``span_groups``, ``busy_groups``). Kernels of one
    call are those that start inside one execution of the executable
    (``ExecuteHelperOnSingleDevice``; all events when the trace has none). Spans charge each
    kernel with what follows it until the next one starts: the time an asynchronous kernel
    (XLA:CPU's Eigen convolutions and dots return once their work is queued, so their own
    events are short) takes on the thread pool, the dispatch gap after a synchronous one; they
    add up to the call's time."""
    windows = [(e["ts"], e["ts"] + e["dur"]) for e in events if e["name"] == _EXECUTE]
    kernels = sorted((e for e in events if _is_kernel(e["name"])), key=lambda e: e["ts"])
    if not windows:
        windows = [(min((e["ts"] for e in kernels), default=0.0),
                    max((e["ts"] + e["dur"] for e in kernels), default=0.0))]
    span, busy, count = collections.Counter(), collections.Counter(), collections.Counter()
    for lo, hi in windows:
        inside = [e for e in kernels if lo <= e["ts"] <= hi]
        for e, nxt in zip(inside, inside[1:] + [None], strict=True):
            end = nxt["ts"] if nxt is not None else max(hi, e["ts"] + e["dur"])
            span[e["name"]] += (end - e["ts"]) / 1e3 / calls
            busy[e["name"]] += e["dur"] / 1e3 / calls
            count[e["name"]] += 1 / calls
    span_groups, busy_groups = collections.Counter(), collections.Counter()
    for name in span:
        span_groups[_group(name)] += span[name]
        busy_groups[_group(name)] += busy[name]
    return {"span": dict(span), "busy": dict(busy), "count": dict(count),
            "span_groups": dict(span_groups), "busy_groups": dict(busy_groups)}


def _by_time(d: dict) -> dict:
    return dict(sorted(d.items(), key=lambda kv: -kv[1]))


def profile(fn, args, calls: int) -> dict:
    """Compile ``fn`` for ``args``, run it once, then ``calls`` times under jax.profiler."""
    import jax

    compiled = fn.lower(*args).compile()
    hlo = compiled.as_text()
    jax.block_until_ready(compiled(*args))
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            for _ in range(calls):
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(*args))
                walls.append(time.perf_counter() - t0)
        finally:
            jax.profiler.stop_trace()
        events = kernel_events(trace_dir)
    k = group_kernels(events, calls)
    matmuls = []
    for name, info in matmul_kernels(hlo).items():
        if k["span"].get(name):
            count = k["count"][name]
            matmuls.append({"name": name, "shapes": info["shapes"], "what": info["what"],
                            "ms": k["span"][name], "busy_ms": k["busy"][name],
                            "calls_per_op": count,
                            "gflops": info["flops"] * count / (k["span"][name] / 1e3) / 1e9})
    matmuls.sort(key=lambda r: -r["ms"])
    return {"wall_ms": 1e3 * statistics.median(walls),
            "kernels_ms": _by_time(k["span_groups"]), "kernels_total_ms": sum(k["span"].values()),
            "kernels_busy_ms": _by_time(k["busy_groups"]),
            "kernels_busy_total_ms": sum(k["busy"].values()),
            "matmuls": matmuls, "matmul_ms": sum(r["ms"] for r in matmuls)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from jaxadv.devices import convolution_backend
    from jaxadv.models import fastpath

    if args.op in STEP_OPS:
        batch = args.batch or 128
        build = _step_op
    else:
        from experiments.benchmarks.attributions import BATCHES

        batch = args.batch or BATCHES.get(args.model, 16)
        build = _attribution_op
    with fastpath.enabled(not args.no_fastpath):
        fn, fn_args = build(args.model, args.op, batch)
        result = profile(fn, fn_args, args.calls)
    result["settings"] = {"model": args.model, "op": args.op, "batch": batch,
                          "calls": args.calls, "fastpath": not args.no_fastpath,
                          "convolution_backend": convolution_backend(),
                          "cpu_count": os.cpu_count(),
                          "command": report.command("experiments.benchmarks.profile_ops", argv)}
    print(f"{args.model} {args.op} batch {batch}: {result['wall_ms']:.1f} ms per call (profiled); "
          f"kernel spans {result['kernels_total_ms']:.1f} ms, of which matmuls "
          f"{result['matmul_ms']:.1f} ms; kernels busy {result['kernels_busy_total_ms']:.1f} ms")
    print("kernels (ms per call: span, busy):")
    for name, ms in list(result["kernels_ms"].items())[:args.top]:
        print(f"  {ms:9.2f} {result['kernels_busy_ms'][name]:9.2f}  {name}")
    print("matmuls (span ms per call, GFLOP/s over it, shapes A B -> C, source):")
    for r in result["matmuls"][:args.top]:
        print(f"  {r['ms']:9.2f} ms {r['gflops']:6.0f} GFLOP/s  {' '.join(r['shapes'][:2])} -> "
              f"{r['shapes'][2]}  {r['what']}")
    if args.out:
        report.write_json(args.out, result, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
