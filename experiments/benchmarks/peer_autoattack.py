"""APGD-CE and the AutoAttack ensemble: jaxadv against AutoAttack and torchattacks, same weights.

Called by ``experiments/benchmarks/attacks.py`` as ``run(setup, quick) -> dict`` with the setup of
its ``build_setup`` (JAX logits function, PyTorch twin with the same weights, the same MNIST
examples, eps = 0.3 l-inf), or standalone on a small sample:

    python -m experiments.benchmarks.peer_autoattack [--n 100] [--seeds 1] [--ensemble_n N]
        [--ensemble_seeds 1] [--sections apgd_ce ensemble] [--host_devices 1] [--quick]
        [--out FILE]

Sections (robust accuracy in percent, measured the same way for every library: the returned
examples are checked to lie in the eps-ball and [0, 1], then classified by the same JAX function;
a point is robust if it is classified correctly on the clean input and on the returned example):

* ``apgd_ce``: APGD on cross-entropy, 100 iterations, 1 run, l-inf eps. jaxadv
  (``jaxadv.attacks.apgd.apgd_ce``), AutoAttack's ``APGDAttack`` and torchattacks' ``APGD``.
* ``ensemble``: the ``standard`` AutoAttack protocol (APGD-CE, APGD-T with 9 targets, FAB-T with 9
  targets, Square with 5,000 queries). jaxadv (``evaluate_ensemble``, flags off so that the cost is
  the attacks') against ``pyautoattack.AutoAttack(version='standard')`` on CPU.

Timing: ``images_per_s = n / seconds``. jaxadv's APGD is timed after one warm-up call (which
compiles); the jaxadv ensemble runs twice with the same key (the first call compiles every stage
for the bucket of survivors it sees, the second reuses them and is timed; both times are
reported); the PyTorch runs once (the ensemble is too slow to repeat on CPU). With ``quick`` the
ensemble runs on the first 50 points. Robust accuracy after each stage is reported for both
evaluators, and jaxadv's gradient-masking flags. Numbers measured while other processes share
the machine are noisy; a single APGD run's robust accuracy varies by about +-1.5
points between random starts on 100 MNIST points (seeds), for every library.
"""

import argparse
import json
import logging
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.benchmarks.attacks import build_setup
from experiments.benchmarks.timing import median_seconds, time_once
from jaxadv import sharding
from jaxadv.attacks import ensemble as E
from jaxadv.attacks.apgd import apgd_ce
from jaxadv.attacks.ensemble import evaluate_ensemble
from jaxadv.attacks.projections import norm_of

NUM_STEPS = 100
QUICK_ENSEMBLE_N = 50  # the ensemble takes minutes per 50 points on a CPU


class _Scorer:
    """Judges returned examples of any library by the same JAX model, after checking that they
    lie in the l-inf ball and in [0, 1] (``setup``: ``logits_fn``, ``x`` (B, H, W, C), ``y`` (B,),
    ``eps``)."""

    def __init__(self, setup):
        self.f = setup["logits_fn"]
        self.x = np.asarray(setup["x"], np.float32)
        self.y = np.asarray(setup["y"])
        self.eps = float(setup["eps"])
        self.clean_ok = np.asarray(jnp.argmax(self.f(jnp.asarray(self.x)), -1)) == self.y

    def robust_mask(self, x_adv) -> tuple[np.ndarray, float]:
        """(B,) bool, correctly classified at x and at ``x_adv``; and the max l-inf distance.

        Raises:
          AssertionError: an example leaves the ball or [0, 1] (the comparison would be void).
        """
        x_adv = np.asarray(x_adv, np.float32)
        if x_adv.shape != self.x.shape:
            raise AssertionError(f"examples of shape {x_adv.shape} for inputs of {self.x.shape}")
        dist = float(jnp.max(norm_of(jnp.asarray(x_adv - self.x), "linf")))
        if dist > self.eps * (1 + 1e-4) + 1e-5 or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise AssertionError(f"examples leave the l-inf ball of radius {self.eps} or [0, 1]: "
                                 f"max distance {dist}")
        pred = np.asarray(jnp.argmax(self.f(jnp.asarray(x_adv)), -1))
        return self.clean_ok & (pred == self.y), dist

    def entry(self, x_adv, seconds: float) -> dict:
        robust, dist = self.robust_mask(x_adv)
        n = len(self.y)
        return {"robust_acc": float(100.0 * np.mean(robust)),
                "images_per_s": n / seconds, "n": n, "seconds": seconds, "max_dist": dist}


def bench_apgd_ce(setup: dict, quick: bool, seeds: int = 1) -> dict:
    """APGD-CE for each library, timed on seed 0; with ``seeds`` > 1 also the robust accuracy of
    seeds 0..seeds-1 (jaxadv: ``jax.random.key(s)``; the peers: ``seed=s``) and their mean, since
    one run's random start moves the result by a point or two on 100 points."""
    import torch

    from jaxadv.interop.torch_port import nchw_to_nhwc

    score = _Scorer(setup)
    eps = float(setup["eps"])
    f = setup["logits_fn"]
    # the batch split over every JAX device (one unless --host_devices): a data mesh
    x, y = sharding.shard_batch((np.asarray(setup["x"]), np.asarray(setup["y"], np.int32)),
                                sharding.data_mesh())
    out = {}

    attack = jax.jit(lambda x, y, key, eps: apgd_ce(f, x, y, key, eps=eps, num_steps=NUM_STEPS))
    key = jax.random.key(0)

    def run():
        out["jax"] = jax.block_until_ready(attack(x, y, key, jnp.float32(eps)).x_adv)

    seconds = median_seconds(run, repeats=1 if quick else 3)
    res = {"jaxadv": score.entry(np.asarray(out["jax"]), seconds)}
    accs = [res["jaxadv"]["robust_acc"]] + [
        score.entry(np.asarray(attack(x, y, jax.random.key(s), jnp.float32(eps)).x_adv),
                    1.0)["robust_acc"] for s in range(1, seeds)]
    _add_seeds(res["jaxadv"], accs)

    def torch_peer(name: str, attack_of_seed) -> None:
        """Seed 0 timed, then seeds 1..seeds-1 for the robust accuracy only."""
        def run_seed(s):
            torch.manual_seed(s)
            return nchw_to_nhwc(attack_of_seed(s)(setup["x_nchw"].clone(),
                                                  setup["y_torch"].clone()))

        seconds = time_once(lambda: out.__setitem__(name, run_seed(0)))
        res[name] = score.entry(out[name], seconds)
        _add_seeds(res[name], [res[name]["robust_acc"]] + [
            score.entry(run_seed(s), 1.0)["robust_acc"] for s in range(1, seeds)])

    try:
        from pyautoattack.autopgd_base import APGDAttack

        torch_peer("autoattack", lambda s: APGDAttack(
            setup["torch_model"], n_iter=NUM_STEPS, norm="Linf", n_restarts=1, eps=eps, seed=s,
            loss="ce", device="cpu").perturb)
    except ImportError as e:
        res["autoattack"] = {"error": f"not installed: {e}"}

    try:
        import torchattacks

        torch_peer("torchattacks", lambda s: torchattacks.APGD(
            setup["torch_model"], norm="Linf", eps=eps, steps=NUM_STEPS, n_restarts=1, seed=s,
            loss="ce"))
    except ImportError as e:
        res["torchattacks"] = {"error": f"not installed: {e}"}
    return res


def _add_seeds(entry: dict, accs: list) -> None:
    if len(accs) > 1:
        entry["robust_acc_seeds"] = accs
        entry["robust_acc_mean"] = float(np.mean(accs))


class _StageLog(logging.Handler):
    """Collects AutoAttack's 'robust accuracy after X: Y%' messages."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.acc = {}

    def emit(self, record):
        m = re.match(r"robust accuracy after (\S+): ([\d.]+)%", record.getMessage())
        if m:
            self.acc[m.group(1).lower()] = float(m.group(2))


def bench_ensemble(setup: dict, quick: bool, n: int | None = None, seeds: int = 1) -> dict:
    """The standard ensemble on the first n points (default all; quick: at most
    QUICK_ENSEMBLE_N), timed on seed 0; with ``seeds`` > 1 also the robust accuracy of seeds
    1..seeds-1 (jaxadv: ``jax.random.key(s)``; AutoAttack: ``seed=s``) and the mean over seeds."""
    n = min(len(setup["y"]), n or len(setup["y"]))
    n = n if not quick else min(n, QUICK_ENSEMBLE_N)
    sub = {k: setup[k][:n] for k in ("x", "y", "x_nchw", "y_torch")}
    score = _Scorer(setup | sub)
    eps = float(setup["eps"])
    f = setup["logits_fn"]
    x, y = jnp.asarray(sub["x"]), jnp.asarray(sub["y"]).astype(jnp.int32)
    out = {}
    key = jax.random.key(0)

    def run_jax():
        r = evaluate_ensemble(f, x, y, key, eps=eps, version="standard", check_flags=False)
        out["jax"] = jax.block_until_ready(r)

    # The first call compiles (each stage for the bucket of points it sees); the second, with the
    # same key and data, sees the same buckets and is timed. Both are reported.
    seconds_compile = time_once(run_jax)
    seconds = time_once(run_jax)
    r = out["jax"]
    res = {"jaxadv": score.entry(np.asarray(r.x_adv), seconds)}
    res["jaxadv"]["seconds_first_call"] = seconds_compile
    res["jaxadv"]["per_attack_robust_acc"] = {
        k: float(100.0 * np.mean(np.asarray(v))) for k, v in r.per_attack_robust.items()}
    res["jaxadv"]["num_grad_mean"] = float(np.mean(np.asarray(r.num_grad)))
    res["jaxadv"]["num_forward_mean"] = float(np.mean(np.asarray(r.num_forward)))
    # The score must agree with the evaluator's own per-point verdict.
    res["jaxadv"]["evaluator_robust_acc"] = float(100.0 * np.mean(np.asarray(r.robust)))
    flags = E.gradient_masking_flags(f, x, y, key, eps=eps)
    flags["black_box_beats_white_box"] = E.black_box_flag(r.per_attack_robust, r.mask)
    res["jaxadv"]["flags"] = flags
    _add_seeds(res["jaxadv"], [res["jaxadv"]["robust_acc"]] + [score.entry(np.asarray(
        evaluate_ensemble(f, x, y, jax.random.key(s), eps=eps, version="standard",
                          check_flags=False).x_adv), 1.0)["robust_acc"] for s in range(1, seeds)])

    try:
        import torch
        from pyautoattack import AutoAttack

        from jaxadv.interop.torch_port import nchw_to_nhwc

        log = logging.getLogger("auto-attack")
        log.setLevel(logging.DEBUG)
        handler = _StageLog()
        log.addHandler(handler)
        log.propagate = False
        def run_aa(seed=0):
            aa = AutoAttack(setup["torch_model"], norm="Linf", eps=eps, version="standard",
                            device="cpu", seed=seed)
            with torch.no_grad():
                out["aa"] = aa.run_standard_evaluation(sub["x_nchw"].clone(),
                                                       sub["y_torch"].clone(), batch_size=n)[0]

        seconds = time_once(run_aa)
        res["autoattack"] = score.entry(nchw_to_nhwc(out["aa"]), seconds)
        res["autoattack"]["per_attack_robust_acc"] = dict(handler.acc)
        accs = [res["autoattack"]["robust_acc"]]
        for seed in range(1, seeds):
            run_aa(seed)
            accs.append(score.entry(nchw_to_nhwc(out["aa"]), 1.0)["robust_acc"])
        log.removeHandler(handler)
        _add_seeds(res["autoattack"], accs)
    except ImportError as e:
        res["autoattack"] = {"error": f"not installed: {e}"}
    return res


def run(setup: dict, quick: bool, *, seeds: int = 1, ensemble_n: int | None = None,
        sections=("apgd_ce", "ensemble"), ensemble_seeds: int = 1) -> dict:
    """The sections; each inner dict has ``robust_acc`` (percent), ``images_per_s`` and ``n``."""
    out = {}
    if "apgd_ce" in sections:
        out["apgd_ce"] = bench_apgd_ce(setup, quick, seeds)
        print(f"  apgd_ce: {out['apgd_ce']}", flush=True)
    if "ensemble" in sections:
        out["ensemble"] = bench_ensemble(setup, quick, ensemble_n, ensemble_seeds)
        print(f"  ensemble: {out['ensemble']}", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=1,
                        help="APGD-CE: robust accuracy over this many seeds per library")
    parser.add_argument("--ensemble_n", type=int, default=None,
                        help="the ensemble on the first N of the --n points (default all)")
    parser.add_argument("--ensemble_seeds", type=int, default=1,
                        help="the ensemble: robust accuracy over this many seeds per library")
    parser.add_argument("--sections", nargs="+", default=["apgd_ce", "ensemble"],
                        choices=["apgd_ce", "ensemble"])
    parser.add_argument("--host_devices", type=int, default=1,
                        help="XLA host devices to split jaxadv's batch over (default 1; the "
                             "PyTorch peers use their own threads)")
    parser.add_argument("--out", default=None, help="JSON file to write (optional)")
    args = parser.parse_args(argv)
    if args.host_devices > 1:
        from jaxadv.devices import use_host_devices

        use_host_devices(args.host_devices)  # before the first JAX operation
    setup = build_setup(n=args.n)
    print(f"n={args.n}, JAX/PyTorch logits agree to {setup['logits_max_abs_diff']:.2g}",
          flush=True)
    results = run(setup, args.quick, seeds=args.seeds, ensemble_n=args.ensemble_n,
                  sections=args.sections, ensemble_seeds=args.ensemble_seeds)
    results["settings"] = {
        "command": report.command("experiments.benchmarks.peer_autoattack", argv),
        "model": "official Boopathy SmallGAP adv checkpoint (PyTorch twin, identical weights)",
        "data": f"first {args.n} MNIST test images", "eps": setup["eps"], "norm": "linf",
        "apgd_steps": NUM_STEPS, "jax_devices": jax.device_count()}
    if args.out:
        report.write_json(args.out, results, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
