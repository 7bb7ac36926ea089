"""Where does the ensemble gap to AutoAttack come from? Per point, per stage, over seeds.

The standard ensemble of ``peer_autoattack`` ends a point or so above AutoAttack on the official
SmallGAP ``adv`` checkpoint (first 100 MNIST test images, l-inf eps 0.3). This script takes the
points where that difference lies and counts, over seeds, how often each stage of the ensemble
breaks each of them when run alone, in jaxadv (``evaluate_ensemble(attacks=(stage,))``, key
``jax.random.key(s)``) and in AutoAttack (``AutoAttack(version='standard', seed=s)`` restricted to
that stage), on the same weights:

    python -m experiments.benchmarks.peer_autoattack_points [--points 7 8 62] [--seeds 10]
        [--seed_start 0]
        [--context points|first100] [--stages apgd-ce apgd-t fab-t square ensemble] [--out FILE]

``--context points`` attacks a batch of only the listed points; ``first100`` attacks the whole
first-100 batch and reads off the listed points (a stage's random draws depend on the batch it
runs in, in both libraries). A point counts as broken when it is not robust: misclassified at x
or at the returned example, both libraries' examples judged by the same JAX model after a check
that they lie in the eps-ball and in [0, 1] (``peer_autoattack._Scorer``; the PyTorch twin's
logits agree with it to about 1e-5).
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.benchmarks.attacks import DEFAULT_CHECKPOINT, build_setup
from experiments.benchmarks.peer_autoattack import _Scorer
from jaxadv.attacks.ensemble import evaluate_ensemble

STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
ENSEMBLE = "ensemble"  # all four stages in order, as the standard version runs them


def count_breaks(setup: dict, points, *, seeds: int, context: str, stages,
                 seed_start: int = 0) -> dict:
    """({"jaxadv" | "autoattack": {stage: [breaks per listed point over seeds seed_start ..
    seed_start + seeds - 1]}}, the same keys -> [robust accuracy (%) of the whole batch per seed])."""
    import torch
    from pyautoattack import AutoAttack

    from jaxadv.interop.torch_port import nchw_to_nhwc

    idx = list(range(100)) if context == "first100" else list(points)
    pos = [idx.index(p) for p in points]
    f = setup["logits_fn"]
    x = jnp.asarray(setup["x"][idx])
    y = jnp.asarray(setup["y"][idx]).astype(jnp.int32)
    x_t, y_t = setup["x_nchw"][idx], setup["y_torch"][idx]
    score = _Scorer({"logits_fn": f, "x": setup["x"][idx], "y": setup["y"][idx],
                     "eps": setup["eps"]})
    counts = {lib: {st: np.zeros(len(points), int) for st in stages}
              for lib in ("jaxadv", "autoattack")}
    acc = {lib: {st: [] for st in stages} for lib in ("jaxadv", "autoattack")}
    for s in range(seed_start, seed_start + seeds):
        for st in stages:
            r = evaluate_ensemble(f, x, y, jax.random.key(s), eps=setup["eps"],
                                  version="standard", check_flags=False,
                                  attacks=STAGES if st == ENSEMBLE else (st,))
            robust, _ = score.robust_mask(r.x_adv)
            robust &= np.asarray(r.robust)
            counts["jaxadv"][st] += ~robust[pos]
            acc["jaxadv"][st].append(float(100.0 * robust.mean()))
            aa = AutoAttack(setup["torch_model"], norm="Linf", eps=setup["eps"],
                            version="standard", device="cpu", seed=s)
            # the standard version's settings, one stage (or all four)
            aa.attacks_to_run = list(STAGES) if st == ENSEMBLE else [st]
            aa.verbose = False
            with torch.no_grad():
                x_adv = aa.run_standard_evaluation(x_t.clone(), y_t.clone(),
                                                   batch_size=len(idx))[0]
            robust, _ = score.robust_mask(nchw_to_nhwc(x_adv))
            counts["autoattack"][st] += ~robust[pos]
            acc["autoattack"][st].append(float(100.0 * robust.mean()))
        as_lists = {lib: {st: c.tolist() for st, c in d.items()} for lib, d in counts.items()}
        print(f"seed {s}: {json.dumps(as_lists)}; robust accuracy of the batch "
              f"{json.dumps(acc)}", flush=True)
    return as_lists, acc


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--points", type=int, nargs="+", default=[7, 8, 62],
                   help="indices into the first 100 MNIST test images")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--seed_start", type=int, default=0, help="first seed (seeds run from here)")
    p.add_argument("--context", choices=("points", "first100"), default="points")
    p.add_argument("--stages", nargs="+", choices=STAGES + (ENSEMBLE,), default=list(STAGES),
                   help=f"stages run alone; '{ENSEMBLE}': the whole standard ensemble")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    if any(not 0 <= q < 100 for q in args.points):
        raise SystemExit(f"--points must be indices in [0, 100); got {args.points}.")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1; got {args.seeds}.")
    tic = time.perf_counter()
    setup = build_setup(n=100)
    counts, acc = count_breaks(setup, args.points, seeds=args.seeds, context=args.context,
                          stages=args.stages, seed_start=args.seed_start)
    out = {"breaks": counts, "robust_acc_seeds": acc, "settings": {
        "checkpoint": DEFAULT_CHECKPOINT.name, "data": "first 100 MNIST test images",
        "eps": setup["eps"], "norm": "linf", "points": args.points, "seeds": args.seeds,
        "seed_start": args.seed_start,
        "context": args.context, "stages": args.stages,
        "count": "seeds (of --seeds) in which the stage alone broke the point (judged by the "
                 "JAX model after an eps-ball and [0, 1] check, both libraries)",
        "seconds": time.perf_counter() - tic,
        "command": report.command("experiments.benchmarks.peer_autoattack_points", argv)}}
    if args.out:
        report.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
