"""APGD-CE of jaxadv and of AutoAttack from identical random starts: is a gap the algorithm or the draw?

    python -m experiments.benchmarks.peer_apgd_starts [--seeds 30] [--starts autoattack numpy]
        [--points 7 8 62] [--n 100] [--point_seeds 0] [--out FILE]

Official Boopathy SmallGAP ``adv`` checkpoint (its PyTorch twin for AutoAttack, identical weights),
the first ``--n`` MNIST test images, l-inf eps 0.3, one APGD-CE run of 100 steps (AutoAttack's
standard settings). For each seed s, on the whole batch:

* ``jaxadv_own``: ``apgd_ce(..., key=jax.random.key(s))``, jaxadv's own random start;
* ``autoattack_own``: AutoAttack's ``APGDAttack(seed=s).perturb``, its own random start;
* for each kind in ``--starts``, the same start given to both libraries (jaxadv's ``x_init``,
  AutoAttack's ``attack_single_run(x_init=...)``): ``autoattack`` = the start AutoAttack's
  ``perturb`` draws for seed s (``torch.manual_seed(s)``, ``2 * rand - 1`` over the correctly
  classified points, scaled to the sphere, clipped to [0, 1]), ``numpy`` = the same construction
  from ``numpy.random.default_rng(s)``.

Every example is judged by the same JAX model after an eps-ball and [0, 1] check
(``peer_autoattack._Scorer``). Reported: robust accuracy per seed and its mean per condition, for
``--points`` the number of seeds in which each condition broke them, and the number of
(seed, point) pairs on which the two libraries disagree from the same start;
``autoattack_start_reconstructed`` says per seed whether AutoAttack from the reconstructed start
gave exactly what its own ``perturb`` gave (a check of the reconstruction).

``--point_seeds N`` (0: off) adds, for each of ``--points``, how often jaxadv's APGD-CE breaks the
point from each kind of start over seeds 0..N-1 (the start the point gets in the batch of the
first ``--n`` images; one batched call of N copies of the point per kind; jaxadv alone, since the
libraries agree from identical starts). ``--seeds 0`` skips the batch comparison.
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
from jaxadv.attacks.apgd import apgd_ce

NUM_STEPS = 100
STARTS = ("autoattack", "numpy")


def sphere_start(x: np.ndarray, t: np.ndarray, eps: float) -> np.ndarray:
    """x + eps * t / max|t| per example, clipped to [0, 1] (AutoAttack's l-inf start)."""
    scale = np.abs(t.reshape(t.shape[0], -1)).max(1).reshape(-1, *([1] * (t.ndim - 1)))
    return np.clip(x + eps * t / (scale + 1e-12), 0.0, 1.0).astype(np.float32)


def autoattack_start(x: np.ndarray, clean_ok: np.ndarray, eps: float, seed: int) -> np.ndarray:
    """The start AutoAttack's APGD ``perturb`` draws for ``seed`` (NHWC; points misclassified at x
    are left at x, as AutoAttack attacks only the others)."""
    import torch

    idx = np.flatnonzero(clean_ok)
    torch.random.manual_seed(seed)
    shape = (len(idx), x.shape[3], x.shape[1], x.shape[2])
    t = np.transpose((2 * torch.rand(shape) - 1).numpy(), (0, 2, 3, 1))
    out = x.copy()
    out[idx] = sphere_start(x[idx], t, eps)
    return out


def numpy_start(x: np.ndarray, clean_ok: np.ndarray, eps: float, seed: int) -> np.ndarray:
    t = np.random.default_rng(seed).uniform(-1.0, 1.0, x.shape).astype(np.float32)
    return np.where(clean_ok[:, None, None, None], sphere_start(x, t, eps), x)


DRAWS = {"autoattack": autoattack_start, "numpy": numpy_start}  # kinds of shared start


def run(setup: dict, *, seeds: int, starts, points) -> dict:
    import torch
    from pyautoattack.autopgd_base import APGDAttack

    from jaxadv.interop.torch_port import nchw_to_nhwc

    f, eps = setup["logits_fn"], float(setup["eps"])
    x, y = np.asarray(setup["x"], np.float32), np.asarray(setup["y"])
    score = _Scorer(setup)
    ok = score.clean_ok
    xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    xt, yt = setup["x_nchw"], setup["y_torch"]
    # the images are arguments, not closed-over constants (XLA would constant-fold the model)
    jit_from = jax.jit(lambda x, y, key, x0: apgd_ce(f, x, y, key, eps=eps, num_steps=NUM_STEPS,
                                                     x_init=x0))
    jit_own = jax.jit(lambda x, y, key: apgd_ce(f, x, y, key, eps=eps, num_steps=NUM_STEPS))

    def attack(key, x0):
        return jit_from(xj, yj, key, x0)

    def attack_own(key):
        return jit_own(xj, yj, key)

    def aa(seed):
        return APGDAttack(setup["torch_model"], n_iter=NUM_STEPS, norm="Linf", n_restarts=1,
                          eps=eps, seed=seed, loss="ce", eot_iter=1, rho=0.75, device="cpu")

    def jax_robust(res) -> np.ndarray:
        robust, _ = score.robust_mask(np.asarray(res.x_adv))
        return robust & ~np.asarray(res.success)

    def aa_robust(x_adv_nchw, acc=None) -> np.ndarray:
        robust, _ = score.robust_mask(nchw_to_nhwc(x_adv_nchw))
        return robust if acc is None else robust & acc.numpy().astype(bool)

    conds = ["jaxadv_own", "autoattack_own"] + [f"{lib}_from_{k}_starts" for k in starts
                                                for lib in ("jaxadv", "autoattack")]
    robust = {c: [] for c in conds}
    breaks = {c: np.zeros(len(points), int) for c in conds}
    disagree = {k: [] for k in starts}
    same_as_own = []
    for s in range(seeds):
        out = {"jaxadv_own": jax_robust(attack_own(jax.random.key(s))),
               "autoattack_own": aa_robust(aa(s).perturb(xt.clone(), yt.clone()))}
        for k in starts:
            x0 = DRAWS[k](x, ok, eps, s)
            out[f"jaxadv_from_{k}_starts"] = jax_robust(attack(jax.random.key(s), jnp.asarray(x0)))
            atk = aa(s)
            atk.init_hyperparam(xt)
            x0t = torch.from_numpy(np.ascontiguousarray(np.transpose(x0, (0, 3, 1, 2))))
            # attack_single_run on the correctly classified points, as perturb runs it
            idx = torch.from_numpy(np.flatnonzero(ok))
            _, acc, _, x_adv = atk.attack_single_run(xt[idx].clone(), yt[idx].clone(),
                                                     x_init=x0t[idx].clone())
            full = xt.clone()
            full[idx] = x_adv
            acc_full = torch.zeros(len(y), dtype=torch.bool)
            acc_full[idx] = acc.bool()
            out[f"autoattack_from_{k}_starts"] = aa_robust(full, acc_full)
            disagree[k].append([int(i) for i in np.flatnonzero(
                out[f"jaxadv_from_{k}_starts"] != out[f"autoattack_from_{k}_starts"])])
        if "autoattack" in starts:  # the reconstruction of AutoAttack's draw is exact
            same_as_own.append(bool(np.array_equal(out["autoattack_own"],
                                                   out["autoattack_from_autoattack_starts"])))
        for c in conds:
            robust[c].append(float(100.0 * out[c].mean()))
            breaks[c] += ~out[c][points]
        print(f"seed {s}: " + ", ".join(f"{c} {robust[c][-1]:.0f}" for c in conds)
              + "".join(f"; differ from {k} starts on {disagree[k][-1]}" for k in starts),
              flush=True)
    return {
        "robust_acc_seeds": robust,
        "robust_acc_mean": {c: float(np.mean(v)) for c, v in robust.items()},
        "breaks": {c: b.tolist() for c, b in breaks.items()},
        "disagreements": {k: {"per_seed": v, "pairs": int(sum(len(d) for d in v)),
                              "of": seeds * int(ok.sum())} for k, v in disagree.items()},
        "autoattack_start_reconstructed": same_as_own,
    }


def point_rates(setup: dict, *, points, seeds: int, starts) -> dict:
    """{point: {kind: seeds (of ``seeds``) in which jaxadv's APGD-CE from that kind of start
    broke the point}}, plus ``jaxadv_own`` (a fresh key per copy)."""
    f, eps = setup["logits_fn"], float(setup["eps"])
    x, y = np.asarray(setup["x"], np.float32), np.asarray(setup["y"])
    ok = _Scorer(setup).clean_ok
    from_start = jax.jit(lambda xb, yb, x0: apgd_ce(f, xb, yb, jax.random.key(0), eps=eps,
                                                    num_steps=NUM_STEPS, x_init=x0).success)
    own = jax.jit(jax.vmap(lambda k, xi, yi: apgd_ce(f, xi[None], yi[None], k, eps=eps,
                                                     num_steps=NUM_STEPS).success[0]))
    out = {}
    for q in points:
        xb = jnp.asarray(np.repeat(x[q:q + 1], seeds, 0))
        yb = jnp.asarray(np.repeat(y[q:q + 1], seeds, 0).astype(np.int32))
        out[q] = {k: int(np.sum(np.asarray(from_start(xb, yb, jnp.asarray(
            np.stack([DRAWS[k](x, ok, eps, s)[q] for s in range(seeds)])))))) for k in starts}
        out[q]["jaxadv_own"] = int(np.sum(np.asarray(
            own(jax.random.split(jax.random.key(0), seeds), xb, yb))))
        print(f"point {q}: broken in {out[q]} of {seeds} seeds", flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100, help="first N MNIST test images")
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--starts", nargs="*", choices=STARTS, default=list(STARTS),
                   help="kinds of shared start to give both libraries")
    p.add_argument("--points", type=int, nargs="+", default=[7, 8, 62],
                   help="indices into the first N images whose break counts are reported")
    p.add_argument("--point_seeds", type=int, default=0,
                   help="per-point break counts over this many seeds per kind of start (0: off)")
    p.add_argument("--out", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    if args.seeds < 0 or args.point_seeds < 0 or args.seeds + args.point_seeds == 0:
        raise SystemExit(f"--seeds and --point_seeds must be >= 0, one of them > 0; got "
                         f"{args.seeds} and {args.point_seeds}.")
    if any(not 0 <= q < args.n for q in args.points):
        raise SystemExit(f"--points must be indices in [0, {args.n}); got {args.points}.")
    tic = time.perf_counter()
    setup = build_setup(n=args.n)
    res = (run(setup, seeds=args.seeds, starts=args.starts, points=args.points) if args.seeds
           else {})
    if args.point_seeds:
        res["point_breaks"] = point_rates(setup, points=args.points, seeds=args.point_seeds,
                                          starts=args.starts)
    res["settings"] = {
        "checkpoint": DEFAULT_CHECKPOINT.name, "data": f"first {args.n} MNIST test images",
        "eps": float(setup["eps"]), "norm": "linf", "attack": "APGD-CE, 1 run of 100 steps",
        "seeds": args.seeds, "starts": args.starts, "points": args.points,
        "point_seeds": args.point_seeds,
        "judged_by": "the JAX model after an eps-ball and [0, 1] check",
        "seconds": time.perf_counter() - tic,
        "command": report.command("experiments.benchmarks.peer_apgd_starts", argv)}
    if args.seeds:
        print(json.dumps({k: res[k] for k in ("robust_acc_mean", "breaks")}))
        print({k: v["pairs"] for k, v in res["disagreements"].items()},
              "disagreeing (seed, point) pairs")
    if args.out:
        report.write_json(args.out, res)
    return res


if __name__ == "__main__":
    main()
