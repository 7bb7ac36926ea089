"""Minimum-norm attacks: jaxadv's C&W-l2 against Foolbox, ART and torchattacks on the same weights.

Called by ``experiments/benchmarks/attacks.py`` as ``run(setup, quick) -> dict`` with the setup of
its ``build_setup`` (JAX logits function, PyTorch twin with the same weights, the same MNIST
examples), or standalone on a small sample:

    python -m experiments.benchmarks.peer_minnorm [--n 100] [--quick] [--out FILE]

Section ``cw_l2``: C&W-l2, untargeted, kappa 0, with the same budget for every library that has
a search over c: ``BINARY_STEPS`` (5) rounds of ``STEPS`` (100) optimiser steps, first c
``C_INIT`` (1), step size ``LR`` (quick: 3 rounds of 50 steps). The step size is 0.1, not
Carlini's 0.01: MNIST pixels sit at 0 or 1, where tanh(w) saturates (w = +-7.25), and 500 Adam
steps of 0.01 cannot move them (measured on 20 points: 5% success at 0.01 and 3 x 50 steps for
every library, 90% at 0.1 and 5 x 100 steps; development runs of 2026-12-02 with ``LR`` edited,
not kept as results).

* jaxadv: ``jaxadv.attacks.cw.cw_l2`` (Adam, tanh box, per-example early abort), jitted.
* foolbox: ``L2CarliniWagnerAttack`` on the PyTorch twin (the same algorithm; its early abort
  looks at the batch's summed objective). Foolbox returns an all-zero image where it found
  nothing (and its ``success`` flag, recomputed on that image, is then often True); those points
  are scored with x itself.
* art: ``CarliniL2Method`` (ART's own optimiser: gradient steps with a line search, not Adam).
  It is two orders of magnitude slower on CPU (508 s for 20 points at 3 x 50 steps in a
  development run of 2026-12-02; ``results/peer_minnorm.json`` has the current times), so it runs on
  the first ``ART_N`` points (quick: ``ART_N_QUICK``); its entry carries jaxadv's robust accuracy
  on the same points (``jaxadv_robust_acc_same_points``).
* torchattacks: ``CW`` has no search over c: it runs ``BINARY_STEPS * STEPS`` Adam steps at the
  fixed c = ``TA_C`` and keeps the smallest adversarial example it saw.

A minimum-norm attack returns an adversarial example of the smallest distance it found, so it is
scored at an l2 radius: ``robust_acc`` (percent) counts a point as robust if it is classified
correctly on the clean input and the returned example is not an adversarial example within
``EPS_L2`` (= 2.0, the radius of the l2 PGD benchmark). Every library's examples are checked to lie
in [0, 1] and judged by the same JAX function; ``success_rate`` (percent of the clean-correct
points broken at any distance) and ``median_l2`` (over the points each library broke) are also
reported, since they say more about a minimum-norm attack than one radius does. Timing: jaxadv
after one warm-up call (which compiles); the others once. ``images_per_s = n / seconds``.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.benchmarks.timing import time_once
from jaxadv.attacks.cw import cw_l2

EPS_L2 = 2.0
BINARY_STEPS, STEPS, C_INIT, LR = 5, 100, 1.0, 0.1
QUICK = {"binary_steps": 3, "steps": 50}
ART_N, ART_N_QUICK = 50, 10
TA_C = 1.0


class _Scorer:
    """Robust accuracy at EPS_L2, success rate and median l2 of returned examples (JAX model)."""

    def __init__(self, setup, n: int | None = None):
        self.f = setup["logits_fn"]
        self.x = np.asarray(setup["x"], np.float32)[:n]
        self.y = np.asarray(setup["y"])[:n]
        self.clean_ok = np.asarray(jnp.argmax(self.f(jnp.asarray(self.x)), -1)) == self.y

    def entry(self, x_adv, seconds: float) -> dict:
        x_adv = np.asarray(x_adv, np.float32)
        if x_adv.shape != self.x.shape or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise AssertionError(f"examples of shape {x_adv.shape} leave [0, 1] or do not match "
                                 f"the inputs {self.x.shape}.")
        pred = np.asarray(jnp.argmax(self.f(jnp.asarray(x_adv)), -1))
        l2 = np.linalg.norm((x_adv.astype(np.float64) - self.x).reshape(len(self.x), -1), axis=-1)
        broken = self.clean_ok & (pred != self.y)
        n = len(self.y)
        return {"robust_acc": float(100.0 * np.mean(self.clean_ok & ~(broken & (l2 <= EPS_L2)))),
                "images_per_s": n / seconds, "n": n, "seconds": seconds,
                "success_rate": float(100.0 * broken.sum() / max(self.clean_ok.sum(), 1)),
                "median_l2": float(np.median(l2[broken])) if broken.any() else None,
                "eps_l2": EPS_L2}


def bench_cw_l2(setup: dict, quick: bool) -> dict:
    import torch

    from jaxadv.interop.torch_port import nchw_to_nhwc

    binary_steps = QUICK["binary_steps"] if quick else BINARY_STEPS
    steps = QUICK["steps"] if quick else STEPS
    score = _Scorer(setup)
    f = setup["logits_fn"]
    x, y = jnp.asarray(setup["x"]), jnp.asarray(setup["y"]).astype(jnp.int32)
    out = {}

    attack = jax.jit(lambda x, y, key: cw_l2(f, x, y, key, num_binary_steps=binary_steps,
                                              num_steps=steps, c_init=C_INIT,
                                              learning_rate=LR).x_adv)
    key = jax.random.key(0)

    def run():
        out["jax"] = jax.block_until_ready(attack(x, y, key))

    run()  # compile
    res = {"jaxadv": score.entry(np.asarray(out["jax"]), time_once(run))}

    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(setup["torch_model"], bounds=(0.0, 1.0))
        fb_atk = fb.attacks.L2CarliniWagnerAttack(binary_search_steps=binary_steps, steps=steps,
                                                  stepsize=LR, confidence=0.0,
                                                  initial_const=C_INIT, abort_early=True)

        def fb_run():
            _, clipped, success = fb_atk(fmodel, setup["x_nchw"], setup["y_torch"],
                                         epsilons=None)
            out["fb"] = (clipped, success)

        seconds = time_once(fb_run)
        clipped, _ = out["fb"]
        fb_x = nchw_to_nhwc(clipped)
        # Foolbox's success flag is recomputed on what it returns, and the all-zero placeholder
        # is usually misclassified; the tanh box never reaches exactly 0, so that marks "none".
        found = np.any(fb_x != 0, axis=(1, 2, 3), keepdims=True)
        res["foolbox"] = score.entry(np.where(found, fb_x, score.x), seconds)
    except ImportError as e:
        res["foolbox"] = {"error": f"not installed: {e}"}

    try:
        from art.attacks.evasion import CarliniL2Method
        from art.estimators.classification import PyTorchClassifier

        n_art = min(len(setup["y"]), ART_N_QUICK if quick else ART_N)
        clf = PyTorchClassifier(model=setup["torch_model"], loss=torch.nn.CrossEntropyLoss(),
                                input_shape=tuple(setup["x_nchw"].shape[1:]), nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="cpu")
        art_atk = CarliniL2Method(clf, confidence=0.0, targeted=False, learning_rate=LR,
                                  binary_search_steps=binary_steps, max_iter=steps,
                                  initial_const=C_INIT, batch_size=n_art, verbose=False)
        x_np = setup["x_nchw"].numpy()[:n_art]
        y_np = np.asarray(setup["y"]).astype(np.int64)[:n_art]
        seconds = time_once(lambda: out.__setitem__("art", art_atk.generate(x=x_np, y=y_np)))
        sub = _Scorer(setup, n_art)
        res["art"] = {**sub.entry(nchw_to_nhwc(out["art"]), seconds),
                      "jaxadv_robust_acc_same_points": sub.entry(
                          np.asarray(out["jax"])[:n_art], 1.0)["robust_acc"]}
    except ImportError as e:
        res["art"] = {"error": f"not installed: {e}"}

    try:
        import torchattacks

        ta = torchattacks.CW(setup["torch_model"], c=TA_C, kappa=0.0,
                             steps=binary_steps * steps, lr=LR)
        seconds = time_once(lambda: out.__setitem__(
            "ta", ta(setup["x_nchw"].clone(), setup["y_torch"].clone())))
        res["torchattacks"] = {**score.entry(nchw_to_nhwc(out["ta"]), seconds),
                               "note": f"no search over c: c = {TA_C}, "
                                       f"{binary_steps * steps} steps"}
    except ImportError as e:
        res["torchattacks"] = {"error": f"not installed: {e}"}
    return res


def run(setup: dict, quick: bool) -> dict:
    """The ``cw_l2`` section: library -> {robust_acc (percent), images_per_s, n, ...}."""
    section = bench_cw_l2(setup, quick)
    print(f"  cw_l2: {section}", flush=True)
    return {"cw_l2": section}


def main(argv=None) -> dict:
    from experiments.benchmarks.attacks import build_setup

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="JSON file to write (optional)")
    args = parser.parse_args(argv)
    setup = build_setup(n=args.n, quick=args.quick)
    print(f"n={args.n}, JAX/PyTorch logits agree to {setup['logits_max_abs_diff']:.2g}",
          flush=True)
    results = run(setup, args.quick)
    if args.out:
        report.write_json(args.out, results, indent=2)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
