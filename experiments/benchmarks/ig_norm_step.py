"""IG-Norm training-step benchmark: how the IG path points are evaluated, against PGD-AT.

    python -m experiments.benchmarks.ig_norm_step [--batch 128] [--repeats 3] [--out FILE.json]

Model: SmallGAP (28x28x1, 10 classes), random weights and inputs, batch ``--batch`` split over
one XLA host device per core. Objectives: IG-Norm (Chen et al. 2019; inner PGD of 10 steps of
0.025 at eps 0.1 maximising the IG norm, 5 path points, methods.md 1.6) with its path points
evaluated one at a time (``ig_path_chunk=1``, a rolled ``lax.map``) and all at once
(``ig_path_chunk=None``, the default), and PGD-AT with the same inner attack for reference.
Each step is jitted once; after the warm-up the variants run in turn ``--repeats`` times (so load
changes hit them alike) and the median seconds per step is reported, with the ratio of each to
the default IG-Norm step.
"""

import argparse
import json
import os
import statistics
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    import jax
    import numpy as np
    import optax

    from jaxadv import sharding
    from jaxadv.models import get_model
    from jaxadv.training import create_train_state, get_objective, make_train_step

    mesh = sharding.data_mesh()
    model = get_model("smallgap", num_classes=10)
    inner = {"eps": 0.1, "step_size": 0.025, "num_steps": 10}
    variants = {
        "ig_norm/path_chunk=1": get_objective("ig_norm", weight=1.0, ig_path_chunk=1, **inner),
        "ig_norm/all_points": get_objective("ig_norm", weight=1.0, **inner),
        "pgd_at": get_objective("pgd_at", **inner),
    }
    rng = np.random.default_rng(0)
    batch = sharding.shard_batch({
        "image": rng.uniform(size=(args.batch, 28, 28, 1)).astype(np.float32),
        "label": (np.arange(args.batch) % 10).astype(np.int32),
        "mask": np.ones(args.batch, bool)}, mesh)
    steps, states, compile_s = {}, {}, {}
    for name, objective in variants.items():
        state = create_train_state(model, optax.adam(1e-3), jax.random.key(0), (1, 28, 28, 1))
        steps[name] = jax.jit(make_train_step(objective=objective))
        states[name] = sharding.replicate(state, mesh)
        tic = time.perf_counter()
        jax.block_until_ready(steps[name](states[name], batch, jax.random.key(1))[0].params)
        compile_s[name] = time.perf_counter() - tic
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            tic = time.perf_counter()
            out, _ = steps[name](states[name], batch, jax.random.key(1))
            jax.block_until_ready(out.params)
            times[name].append(time.perf_counter() - tic)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["ig_norm/all_points"]
    result = {
        "settings": {"model": "smallgap", "batch": args.batch, "devices": int(mesh.devices.size),
                     "backend": jax.default_backend(), "repeats": args.repeats,
                     "inner_pgd": inner, "ig_steps": 5},
        "seconds_per_step": med, "first_call_seconds": compile_s,
        "ratio_to_ig_norm_default": {k: v / ref for k, v in med.items()},
        "examples_per_second": {k: args.batch / v for k, v in med.items()},
    }
    print(f"{'variant':24s} {'s/step':>8s} {'ex/s':>8s} {'x default':>10s} {'first call s':>13s}")
    for k in variants:
        print(f"{k:24s} {med[k]:8.2f} {args.batch / med[k]:8.1f} {med[k] / ref:10.2f} "
              f"{compile_s[k]:13.1f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    from jaxadv.devices import use_host_devices_unless_set

    use_host_devices_unless_set()
    main()
