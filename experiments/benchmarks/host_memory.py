"""Host memory reuse benchmark: jaxadv's steps with glibc keeping freed memory, and without.

    python -m experiments.benchmarks.host_memory --out results/host_memory_1dev.json
        [--models smallgap,poolgap,preact_resnet18] [--ops forward,pgd_step,pgd10,train_step]
        [--rounds 3] [--repeats 11] [--host_devices 1] [--torch]
        [--settings reuse,no_reuse,reuse_async]

``import jaxadv`` sets glibc's ``malloc`` to keep the memory XLA frees for the next call and
runs single-device CPU computations in the calling thread (:mod:`jaxadv.host_memory`);
``JAXADV_REUSE_HOST_MEMORY=0`` leaves glibc's defaults and JAX's asynchronous dispatch. The
settings hold for a whole process, so each round runs one child process per setting (the order
reversed every other round):

* ``reuse``: jaxadv's default (malloc settings and inline dispatch);
* ``no_reuse``: ``JAXADV_REUSE_HOST_MEMORY=0`` (neither);
* ``reuse_async``: the malloc settings with JAX's asynchronous dispatch kept
  (``JAX_CPU_ENABLE_ASYNC_DISPATCH=true``, which jaxadv leaves as the user set it), to measure
  what inline dispatch adds;
* ``reuse_one_arena`` (only when asked for with ``--settings``): jaxadv's default with every
  thread sharing glibc's main arena (``MALLOC_ARENA_MAX=1``, read by glibc at start-up), the
  alternative for computations over several host devices, which inline dispatch does not reach;
* ``reuse_thp`` (only when asked for): jaxadv's default with glibc's ``malloc`` asking the kernel
  for transparent huge pages for its heaps and mapped blocks (``GLIBC_TUNABLES=
  glibc.malloc.hugetlb=1``, read by glibc at start-up; where the kernel's THP mode is
  ``madvise``, 2 MiB pages then back them, one fault per 2 MiB instead of per 4 KiB).

Each child times the same compiled ops of ``step_speed`` (batch 128,
float32, the same weights and data: :func:`experiments.benchmarks.step_speed.jax_ops`): after
a warm-up call, ``--repeats`` calls back to back, each blocking on its result; the child reports
the median and the minor page faults per call (``getrusage``: pages the kernel had to map and
zero). The result per op is the median over rounds of each setting's medians; ``speedup`` =
time without reuse / time with it (jaxadv's default), ``speedup_inline`` = time of
``reuse_async`` / time of ``reuse``.

``--torch`` times the PyTorch twin's ops too (``step_speed.torch_ops``, keys
``torch:<model>/<op>``), in the same children and so under the same setting: glibc's settings hold
for the whole process, and PyTorch allocates its activations with ``malloc`` as well.

JSON: ``ms`` {"<model>/<op>": {"reuse": ..., "no_reuse": ..., "reuse_async": ...}}, ``speedup``
and ``speedup_inline`` {"<model>/<op>": ...} (each where its settings ran),
``minor_faults_per_call`` (same keys as ``ms``), ``per_round`` (every child's figures, with its
peak resident memory ``max_rss_mb``),
``settings``, ``machine``.
"""

import argparse
import itertools
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

from experiments import report

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = ("smallgap", "poolgap", "preact_resnet18")
OPS = ("forward", "pgd_step", "pgd10", "train_step")
SETTINGS = {"reuse": {"JAXADV_REUSE_HOST_MEMORY": "1"},
            "no_reuse": {"JAXADV_REUSE_HOST_MEMORY": "0"},
            "reuse_async": {"JAXADV_REUSE_HOST_MEMORY": "1", "JAX_CPU_ENABLE_ASYNC_DISPATCH": "true"},
            "reuse_one_arena": {"JAXADV_REUSE_HOST_MEMORY": "1", "MALLOC_ARENA_MAX": "1"},
            "reuse_thp": {"JAXADV_REUSE_HOST_MEMORY": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}
DEFAULT_SETTINGS = ("reuse", "no_reuse", "reuse_async")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=None, help="JSON file for the results.")
    p.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated subset of {MODELS}.")
    p.add_argument("--ops", default=",".join(OPS), help=f"Comma-separated subset of {OPS}.")
    p.add_argument("--rounds", type=int, default=3,
                   help="Rounds, each one child process per setting.")
    p.add_argument("--repeats", type=int, default=11, help="Timed calls per op in each child.")
    p.add_argument("--batch", type=int, default=128, help="Batch size.")
    p.add_argument("--host_devices", type=int, default=1, help="XLA host devices in each child.")
    p.add_argument("--torch", action="store_true",
                   help="Also time the PyTorch twin's ops (keys torch:<model>/<op>) in the same "
                        "children: the setting holds for the whole process.")
    p.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                   help=f"Comma-separated subset of {tuple(SETTINGS)}; must include reuse.")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, allowed in (("models", MODELS), ("ops", OPS), ("settings", tuple(SETTINGS))):
        bad = [v for v in getattr(args, name).split(",") if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; choose from {allowed}.")
    if "reuse" not in args.settings.split(",") or len(args.settings.split(",")) < 2:
        p.error("--settings: give reuse and at least one other setting to compare it with.")
    if args.rounds < 1 or args.repeats < 1 or args.batch < 1 or args.host_devices < 1:
        p.error("--rounds, --repeats, --batch and --host_devices must be positive.")
    return args


def _child(args) -> dict:
    """Times the ops in this process (its setting came with the environment)."""
    from jaxadv.devices import use_host_devices

    use_host_devices(args.host_devices)
    import numpy as np

    from experiments.benchmarks import step_speed
    from jaxadv import host_memory, sharding

    out = {"reuse_applied": host_memory.is_applied(), "inline": host_memory.runs_inline(),
           "ops": {}}
    mesh = sharding.data_mesh() if args.host_devices > 1 else None
    ops = args.ops.split(",")
    rng = np.random.default_rng(0)
    for name in args.models.split(","):  # the data of step_speed's main run
        x = rng.uniform(0.0, 1.0, (args.batch,) + step_speed.MODELS[name]).astype(np.float32)
        y = rng.integers(0, 10, (args.batch,)).astype(np.int32)
        fns, _, handles = step_speed.jax_ops(name, x, y, fast=True, mesh=mesh, ops=ops,
                                             count_flops=False)
        contestants = {name: fns}
        if args.torch:  # the PyTorch twin in the same process, under the same setting
            import jax

            from jaxadv.interop.torch_port import to_torch

            tmodel = to_torch(name, jax.device_get(handles["variables"]))
            contestants[f"torch:{name}"] = step_speed.torch_ops(tmodel, x, y)
        for (label, op_fns), op in itertools.product(contestants.items(), ops):
            fn = op_fns[op]
            fn()  # compiled already; one call so that the first timed one finds the heap grown
            times, faults = [], 0
            for _ in range(args.repeats):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
                faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            out["ops"][f"{label}/{op}"] = {"ms": statistics.median(times),
                                           "minor_faults_per_call": faults / args.repeats}
        del fns, contestants
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def _run_child(args, setting: str) -> dict:
    cmd = [sys.executable, "-m", "experiments.benchmarks.host_memory", "--child",
           "--models", args.models, "--ops", args.ops, "--repeats", str(args.repeats),
           "--batch", str(args.batch), "--host_devices", str(args.host_devices)]
    cmd += ["--torch"] if args.torch else []
    # Every variable any setting sets, so that only this setting's reach the child.
    drop = {"XLA_FLAGS"} | {name for env in SETTINGS.values() for name in env}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(SETTINGS[setting], JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child ({setting}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return {}
    settings = args.settings.split(",")
    per_round = []
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        per_round.append({s: _run_child(args, s) for s in order})
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    for rnd in per_round:
        if not (rnd["reuse"]["reuse_applied"] and rnd["reuse"]["inline"]):
            raise RuntimeError("The reuse child did not set the allocator or inline dispatch (not "
                               "Linux with glibc?): nothing to compare.")
    keys = list(per_round[0]["reuse"]["ops"])
    ms = {k: {s: statistics.median(rnd[s]["ops"][k]["ms"] for rnd in per_round) for s in settings}
          for k in keys}
    faults = {k: {s: statistics.median(rnd[s]["ops"][k]["minor_faults_per_call"]
                                       for rnd in per_round) for s in settings} for k in keys}
    result = {
        "ms": ms,
        "speedup": ({k: v["no_reuse"] / v["reuse"] for k, v in ms.items()}
                    if "no_reuse" in settings else {}),
        "speedup_inline": ({k: v["reuse_async"] / v["reuse"] for k, v in ms.items()}
                           if "reuse_async" in settings else {}),
        "minor_faults_per_call": faults,
        "per_round": per_round,
        "settings": {"models": args.models, "ops": args.ops, "rounds": args.rounds,
                     "repeats": args.repeats, "batch": args.batch,
                     "host_devices": args.host_devices, "compared": settings,
                     "command": report.command("experiments.benchmarks.host_memory", argv)},
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count()},
    }
    print("| op | " + " | ".join(f"{s} ms" for s in settings) + " | "
          + " | ".join(f"faults/call {s}" for s in settings) + " |")
    print("|---" * (1 + 2 * len(settings)) + "|")
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{ms[k][s]:.1f}" for s in settings) + " | "
              + " | ".join(f"{faults[k][s]:.0f}" for s in settings) + " |")
    if args.out:
        report.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
