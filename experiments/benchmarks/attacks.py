"""Attack benchmark: jaxadv against torchattacks, Foolbox (JAX path) and ART on identical weights.

    python -m experiments.benchmarks.attacks --out results/attacks.json [--n 1000] [--quick]

Model: the official Boopathy et al. MNIST SmallGAP ``adv`` checkpoint
(../shared/data/boopathy-mnist/mnist_smallgap_adv_100.pkl); data: the first ``--n`` MNIST test
images (``--quick``: 100). The peers attack a PyTorch twin with the same weights
(``jaxadv.interop.torch_port.to_torch``; logits are checked to agree first); Foolbox runs its own
JAX path (``foolbox.JAXModel``) on the same jitted JAX logits function. Every library gets the
same budget:

* ``pgd``: l-inf PGD, eps 0.3, 40 steps of 0.01, one random start, cross-entropy.
* ``pgd_l2``: l2 PGD, eps 2.0, 40 steps of 0.1, one random start, cross-entropy.
* ``pgd_paired``: the l-inf and l2 PGD above, jaxadv and ART from the *same* random starts
  (uniform in the ball, drawn with numpy's ``default_rng(seed)`` for seeds 0..S-1 and given to
  jaxadv as ``x_init`` and to ART through its start sampler, ``random_sphere``, patched for the
  call): with the start's randomness removed, any gap in robust accuracy is the attacks' own.
* ``multi_eps``: 8 l-inf radii; jaxadv one eps vs all 8 in one compiled call, Foolbox one eps vs
  its ``epsilons=[8 values]`` call (which loops over them); with ``--seeds S`` > 1 also the
  robust accuracy at every radius over S random starts of both (``robust_acc_over_seeds``), and
  both from the same starts (``paired_with_foolbox``).

Each library starts where it does by default: jaxadv, ART and Foolbox uniformly in the ball
(for l2 in 784 dimensions, at about eps from x), torchattacks uniformly in the l-inf box and for
l2 at a radius uniform in [0, eps]. ``jaxadv_radial`` is jaxadv with ``random_start='radial'``
(that radius rule in both norms).

Robust accuracy is measured the same way for every library: the adversarial examples each returns
are checked to lie in the threat model and then classified by the same JAX function; an example
counts as robust if it is classified correctly on the clean input and on the returned example
(percent); ``--host_devices N`` splits jaxadv's PGD batch over N XLA host devices (the peers and
the multi-eps comparison are unchanged); with ``--seeds S`` (default 5, quick 1) each library's PGD
runs with S seeds of its random start and the mean and standard error over seeds are reported.
Timing: one warm-up call each (compilation for jaxadv), then ``--repeats`` rounds in which the
competing calls run in turn (so load changes on a shared machine hit them alike); the median per
library; images/s = n / median seconds. The benchmarks of the AutoAttack ensemble (``apgd_ce``,
``ensemble``) and of minimum-norm attacks (``cw_l2``) are added by
``experiments/benchmarks/peer_autoattack.py`` and ``peer_minnorm.py`` when those modules exist:
each exposes ``run(setup, quick) -> dict`` of JSON sections, with ``setup`` from
:func:`build_setup`.
"""

import argparse
import functools
import importlib
import importlib.util
import os
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.benchmarks.timing import median_seconds_in_rounds
from jaxadv import sharding
from jaxadv.attacks import gradient, sweep
from jaxadv.attacks.projections import norm_of, random_start

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "data" / "boopathy-mnist" / "mnist_smallgap_adv_100.pkl"
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-test"

LINF = {"eps": 0.3, "step_size": 0.01, "num_steps": 40}
L2 = {"eps": 2.0, "step_size": 0.1, "num_steps": 40}
MULTI_EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
PEER_MODULES = ("experiments.benchmarks.peer_autoattack", "experiments.benchmarks.peer_minnorm")


def build_setup(checkpoint=DEFAULT_CHECKPOINT, n: int = 1000, quick: bool = False,
                data_dir=DEFAULT_MNIST) -> dict:
    """Loads the model, its PyTorch twin and the first n MNIST test images, and checks the twin.

    Returns a dict shared with the peer benchmark modules:
      logits_fn: jitted JAX function, images (B, 28, 28, 1) in [0, 1] -> logits (B, 10).
      torch_model: the PyTorch twin (eval mode, NCHW input).
      x: (n, 28, 28, 1) float32 numpy NHWC images; y: (n,) int32 numpy labels.
      x_nchw: torch float32 tensor (n, 1, 28, 28); y_torch: torch int64 tensor (n,).
      eps: 0.3 (the l-inf radius of the benchmark); quick: bool; n: int.
      model_name, checkpoint, logits_max_abs_diff, clean_acc (percent).
      robust_acc(x_adv_nhwc) -> percent, with the JAX model (clean-correct and still correct).
      robust_acc_mask(x_nhwc) -> (n,) bool, the JAX model classifies each correctly.
      check_in_ball(x_adv_nhwc, eps, norm) -> max norm distance (raises if outside eps).
    """
    import torch

    from jaxadv.data import load_dataset
    from jaxadv.interop.torch_port import check_logits_agree, nhwc_to_nchw, to_torch
    from jaxadv.models import get_model, load_official_checkpoint

    name, params = load_official_checkpoint(checkpoint)
    model = get_model(name)
    variables = {"params": params}
    logits_fn = jax.jit(lambda x: model.apply(variables, x))
    images, labels = load_dataset("mnist_idx", "test", data_dir=str(data_dir)).arrays()
    x = np.asarray(images[:n], np.float32)
    y = np.asarray(labels[:n], np.int32)
    torch_model = to_torch(name, variables)
    diff = check_logits_agree(logits_fn, torch_model, x[:200])
    clean_ok = np.asarray(jnp.argmax(logits_fn(x), -1)) == y

    def robust_acc_mask(x_adv) -> np.ndarray:
        pred = np.asarray(jnp.argmax(logits_fn(jnp.asarray(np.asarray(x_adv, np.float32))), -1))
        return pred == y

    def robust_acc(x_adv) -> float:
        return float(100.0 * np.mean(clean_ok & robust_acc_mask(x_adv)))

    def check_in_ball(x_adv, eps: float, norm: str = "linf") -> float:
        x_adv = np.asarray(x_adv, np.float32)
        dist = float(jnp.max(norm_of(jnp.asarray(x_adv - x), norm)))
        if dist > eps * (1 + 1e-4) + 1e-5 or x_adv.min() < -1e-6 or x_adv.max() > 1 + 1e-6:
            raise AssertionError(f"adversarial examples leave the {norm} ball of radius {eps} "
                                 f"or [0, 1]: max distance {dist}.")
        return dist

    return {
        "logits_fn": logits_fn, "torch_model": torch_model, "x": x, "y": y,
        "x_nchw": nhwc_to_nchw(x), "y_torch": torch.from_numpy(y.astype(np.int64)),
        "eps": LINF["eps"], "quick": quick, "n": int(n), "model_name": name,
        "checkpoint": str(checkpoint), "logits_max_abs_diff": diff,
        "clean_acc": float(100.0 * clean_ok.mean()), "robust_acc": robust_acc,
        "robust_acc_mask": robust_acc_mask,
        "check_in_ball": check_in_ball,
    }


def _entry(setup, x_adv, seconds: float, eps: float, norm: str) -> dict:
    dist = setup["check_in_ball"](x_adv, eps, norm)
    return {"robust_acc": setup["robust_acc"](x_adv), "images_per_s": setup["n"] / seconds,
            "n": setup["n"], "seconds": seconds, "max_dist": dist}


class Runner:
    """One library's attack on the whole benchmark batch: ``run()`` attacks (blocking) and keeps
    the result; ``x_adv()`` returns the last result as (n, 28, 28, 1) numpy; ``reseed(s)`` sets
    the seed of the library's random start for the following runs."""

    def __init__(self, run, x_adv, reseed):
        self.run, self.x_adv, self.reseed = run, x_adv, reseed


def runner_jaxadv(setup, cfg: dict, norm: str, start: bool | str = True) -> Runner:
    """jaxadv's PGD; ``start`` is its ``random_start`` (True: uniform in the ball, the default;
    'radial': radius uniform in [0, eps], torchattacks' l2 start)."""
    f = setup["logits_fn"]
    # The batch split over every device (one unless --host_devices): a data mesh.
    x, y = sharding.shard_batch((setup["x"], setup["y"]), sharding.data_mesh())

    @jax.jit
    def attack(x, y, key, eps, step):
        return gradient.pgd(f, x, y, key, eps=eps, step_size=step, num_steps=cfg["num_steps"],
                            norm=norm, random_start=start).x_adv

    eps, step = jnp.float32(cfg["eps"]), jnp.float32(cfg["step_size"])
    out = {"key": jax.random.key(0)}

    def run():
        out["x"] = jax.block_until_ready(attack(x, y, out["key"], eps, step))

    def reseed(seed):
        out["key"] = jax.random.key(seed)

    return Runner(run, lambda: np.asarray(out["x"]), reseed)


def runner_torchattacks(setup, cfg: dict, norm: str) -> Runner:
    import torch
    import torchattacks

    from jaxadv.interop.torch_port import nchw_to_nhwc

    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    atk = cls(setup["torch_model"], eps=cfg["eps"], alpha=cfg["step_size"],
              steps=cfg["num_steps"], random_start=True)
    torch.manual_seed(0)
    out = {}

    def run():
        out["x"] = atk(setup["x_nchw"], setup["y_torch"])

    return Runner(run, lambda: nchw_to_nhwc(out["x"]), torch.manual_seed)


def runner_foolbox(setup, cfg: dict, norm: str) -> Runner:
    import foolbox as fb

    fmodel = fb.JAXModel(setup["logits_fn"], bounds=(0.0, 1.0))
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    atk = cls(abs_stepsize=cfg["step_size"], steps=cfg["num_steps"], random_start=True)
    x, y = jnp.asarray(setup["x"]), jnp.asarray(setup["y"])
    out = {}

    def run():
        _, clipped, _ = atk(fmodel, x, y, epsilons=cfg["eps"])
        out["x"] = jax.block_until_ready(clipped)

    def reseed(seed):  # eagerpy's JAX tensors draw from one class-level key
        import eagerpy.tensor.jax

        eagerpy.tensor.jax.JAXTensor.key = jax.random.PRNGKey(seed)

    return Runner(run, lambda: np.asarray(out["x"]), reseed)


def runner_art(setup, cfg: dict, norm: str) -> Runner:
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier
    from torch import nn

    from jaxadv.interop.torch_port import nchw_to_nhwc

    clf = PyTorchClassifier(model=setup["torch_model"], loss=nn.CrossEntropyLoss(),
                            input_shape=(1, 28, 28), nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="cpu")
    atk = ProjectedGradientDescent(clf, norm=np.inf if norm == "linf" else 2, eps=cfg["eps"],
                                   eps_step=cfg["step_size"], max_iter=cfg["num_steps"],
                                   num_random_init=1, batch_size=setup["n"], verbose=False)
    x_nchw = setup["x_nchw"].numpy()
    out = {}

    def run():
        out["x"] = atk.generate(x=x_nchw, y=setup["y"].astype(np.int64))

    return Runner(run, lambda: nchw_to_nhwc(out["x"]), np.random.seed)  # ART draws from numpy


PEERS = {"jaxadv": runner_jaxadv,
         "jaxadv_radial": functools.partial(runner_jaxadv, start="radial"),
         "torchattacks": runner_torchattacks,
         "foolbox": runner_foolbox, "art": runner_art}


def bench_pgd(setup, cfg: dict, norm: str, repeats: int, seeds: int = 1) -> dict:
    """Every library's PGD with the same budget, timed in turn in each round
    (``timing.median_seconds_in_rounds``).

    With ``seeds`` > 1 each library then attacks again with seeds 1..seeds-1 of its random start
    (seed 0 is the timed run); ``robust_acc`` is the mean over the seeds, ``robust_acc_seeds``
    each, and ``robust_acc_se`` the standard error of the mean over seeds."""
    results, runners = {}, {}
    for lib, make in PEERS.items():
        try:
            runners[lib] = make(setup, cfg, norm)
        except ImportError as e:  # a peer library that is not installed is reported, not fatal
            results[lib] = {"error": f"not installed: {e}"}

    def seed0_run(r):
        # Every timed call starts from seed 0, so the result kept (the last call's) is seed 0's,
        # not a later draw of a library that advances a global generator (numpy, torch).
        def run():
            r.reseed(0)
            r.run()
        return run

    seconds = median_seconds_in_rounds({lib: seed0_run(r) for lib, r in runners.items()},
                               repeats=repeats)
    for lib, r in runners.items():
        results[lib] = _entry(setup, r.x_adv(), seconds[lib], cfg["eps"], norm)
        accs = [results[lib]["robust_acc"]]
        for seed in range(1, seeds):
            r.reseed(seed)
            r.run()
            x_adv = r.x_adv()
            setup["check_in_ball"](x_adv, cfg["eps"], norm)
            accs.append(setup["robust_acc"](x_adv))
        if seeds > 1:
            results[lib].update(
                robust_acc=float(np.mean(accs)), robust_acc_seeds=accs,
                robust_acc_se=float(np.std(accs, ddof=1) / np.sqrt(len(accs))))
        print(f"  {norm} PGD {lib}: {results[lib]}", flush=True)
    return {lib: results[lib] for lib in PEERS}


def ball_starts(rng: np.random.Generator, n: int, d: int, eps: float, norm: str) -> np.ndarray:
    """(n, d) float32 points uniform in the ``norm`` ball of radius eps (ART's start distribution:
    uniform in the l-inf box; for l2 a Gaussian direction at radius eps * U^(1/d))."""
    if norm == "linf":
        return rng.uniform(-eps, eps, (n, d)).astype(np.float32)
    g = rng.standard_normal((n, d))
    r = eps * rng.uniform(size=n) ** (1.0 / d)
    return (g / np.linalg.norm(g, axis=1, keepdims=True) * r[:, None]).astype(np.float32)


def bench_pgd_paired(setup, cfg: dict, norm: str, seeds: int) -> dict:
    """jaxadv's and ART's PGD from identical starts, ``seeds`` draws: robust accuracy per seed,
    the mean difference (jaxadv - ART) and its standard error, and per seed the points robust
    against one library and broken by the other."""
    import art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_pytorch as mod
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier
    from torch import nn

    from jaxadv.interop.torch_port import nchw_to_nhwc

    x_nhwc, n = setup["x"], setup["n"]
    x_nchw = setup["x_nchw"].numpy()
    clf = PyTorchClassifier(model=setup["torch_model"], loss=nn.CrossEntropyLoss(),
                            input_shape=x_nchw.shape[1:], nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="cpu")
    art_pgd = ProjectedGradientDescent(
        clf, norm=np.inf if norm == "linf" else 2, eps=cfg["eps"], eps_step=cfg["step_size"],
        max_iter=cfg["num_steps"], num_random_init=1, batch_size=n, verbose=False)
    f = setup["logits_fn"]
    x, y = sharding.shard_batch((x_nhwc, setup["y"]), sharding.data_mesh())

    @jax.jit
    def jaxadv_pgd(x, y, x_init):
        return gradient.pgd(f, x, y, jax.random.key(0), eps=cfg["eps"],
                            step_size=cfg["step_size"], num_steps=cfg["num_steps"], norm=norm,
                            x_init=x_init).x_adv

    clean_ok = setup["robust_acc_mask"](x_nhwc)
    accs = {"jaxadv": [], "art": []}
    only = {"jaxadv": [], "art": []}
    original = mod.random_sphere
    for seed in range(seeds):
        start = ball_starts(np.random.default_rng(seed), n, int(np.prod(x_nchw.shape[1:])),
                            cfg["eps"], norm)
        calls = []

        def fixed_start(nb_points, nb_dims, radius, norm_, start=start, calls=calls):
            if (nb_points, nb_dims) != start.shape:
                raise AssertionError(f"ART asked for {nb_points} x {nb_dims} starts, not "
                                     f"{start.shape}")
            calls.append(1)
            return start.copy()

        mod.random_sphere = fixed_start
        try:
            x_art = nchw_to_nhwc(art_pgd.generate(x=x_nchw, y=setup["y"].astype(np.int64)))
        finally:
            mod.random_sphere = original
        if not calls:
            raise AssertionError("ART's PGD no longer draws its start through random_sphere: "
                                 "the paired comparison cannot give it jaxadv's start.")
        start_nhwc = nchw_to_nhwc(start.reshape(x_nchw.shape))
        x_jax = np.asarray(jaxadv_pgd(x, y, jnp.asarray(x_nhwc + start_nhwc)))
        robust = {}
        for lib, xa in (("jaxadv", x_jax), ("art", x_art)):
            setup["check_in_ball"](xa, cfg["eps"], norm)
            robust[lib] = clean_ok & setup["robust_acc_mask"](xa)
            accs[lib].append(float(100.0 * robust[lib].mean()))
        only["jaxadv"].append(int(np.sum(robust["jaxadv"] & ~robust["art"])))
        only["art"].append(int(np.sum(robust["art"] & ~robust["jaxadv"])))
        print(f"  paired {norm} seed {seed}: jaxadv {accs['jaxadv'][-1]:.1f} ART "
              f"{accs['art'][-1]:.1f}", flush=True)
    diff = np.asarray(accs["jaxadv"]) - np.asarray(accs["art"])
    se = float(np.std(diff, ddof=1) / np.sqrt(seeds)) if seeds > 1 else float("nan")
    return {
        "seeds": seeds, "n": n, "settings": cfg, "norm": norm,
        **{lib: {"robust_acc": float(np.mean(a)), "robust_acc_seeds": a} for lib, a in
           accs.items()},
        "diff_mean": float(diff.mean()), "diff_se": se,
        "robust_only_against_jaxadv": only["jaxadv"], "robust_only_against_art": only["art"]}


def bench_multi_eps(setup, repeats: int, seeds: int = 1) -> dict:
    """8 radii in one call against one radius (timed), and the robust accuracy at each radius.
    With ``seeds`` > 1 the robust accuracies are also measured (not timed) for random starts
    1..seeds-1 of both libraries (jaxadv ``jax.random.key(s)``, independent radii; Foolbox's
    next draws) and reported per seed, with the mean over seeds and the standard error of the
    mean difference at each radius (``robust_acc_over_seeds``)."""
    import foolbox as fb

    f = setup["logits_fn"]
    x, y = jnp.asarray(setup["x"]), jnp.asarray(setup["y"])
    key = jax.random.key(0)
    kw = dict(step_size=LINF["step_size"], num_steps=LINF["num_steps"])

    @jax.jit
    def one(x, y, key, eps):
        return gradient.pgd(f, x, y, key, eps=eps, **kw).x_adv

    def all_eps_fn(eps_batch_size, nested=False):
        @jax.jit
        def all_eps(x, y, key, eps):
            return sweep.attack_over_eps(gradient.pgd, f, x, y, key, epsilons=eps,
                                         eps_batch_size=eps_batch_size, nested=nested, **kw)
        return all_eps

    eps_all = jnp.asarray(MULTI_EPS, jnp.float32)
    # Two ways to run the 8 radii in one compiled call: all vmapped (an 8 * n batch; the default
    # off CPU) and lax.map over the radii (eps_batch_size=1, the default on CPU), which avoids the
    # growth of the per-example convolution cost with the batch size on CPU. Both are reported;
    # s_all is the faster one.
    # A third, `nested=True`: the radii in increasing order, attacking only the examples that no
    # smaller radius has broken (the others keep their example, adversarial in every larger ball).
    all_vmap, all_map, all_nested = all_eps_fn(None), all_eps_fn(1), all_eps_fn(1, nested=True)
    jt = median_seconds_in_rounds({
        "one": lambda: jax.block_until_ready(one(x, y, key, jnp.float32(0.3))),
        "vmap": lambda: jax.block_until_ready(all_vmap(x, y, key, eps_all)),
        "eps_batch_size_1": lambda: jax.block_until_ready(all_map(x, y, key, eps_all)),
        "nested": lambda: jax.block_until_ready(all_nested(x, y, key, eps_all)),
    }, repeats=repeats)
    s_one = jt.pop("one")
    s_modes = jt
    best_mode = min(s_modes, key=s_modes.get)
    swept = all_vmap(x, y, key, eps_all)
    jax_acc = [setup["robust_acc"](c) for c in np.asarray(swept.clipped)]
    nested_acc = [setup["robust_acc"](c)
                  for c in np.asarray(all_nested(x, y, key, eps_all).clipped)]

    fmodel = fb.JAXModel(f, bounds=(0.0, 1.0))
    atk = fb.attacks.LinfPGD(abs_stepsize=LINF["step_size"], steps=LINF["num_steps"])
    fb_out = {}

    def fb_run(eps):
        def run():
            fb_out[np.ndim(eps)] = jax.block_until_ready(atk(fmodel, x, y, epsilons=eps)[1])
        return run

    ft = median_seconds_in_rounds({"one": fb_run(0.3), "all": fb_run(list(MULTI_EPS))},
                          repeats=repeats)
    f_one, f_all = ft["one"], ft["all"]
    fb_acc = [setup["robust_acc"](c) for c in fb_out[1]]  # the 8-radius call
    s_all = s_modes[best_mode]
    paired = _multi_eps_paired(setup, fb, fmodel, f, x, y, key, kw)
    over_seeds = {}
    if seeds > 1:
        acc_j, acc_f = [jax_acc], [[float(a) for a in fb_acc]]
        for s in range(1, seeds):
            acc_j.append([setup["robust_acc"](c) for c in np.asarray(
                all_map(x, y, jax.random.key(s), eps_all).clipped)])
            fb_run(list(MULTI_EPS))()
            acc_f.append([float(setup["robust_acc"](c)) for c in fb_out[1]])
            print(f"  multi_eps seed {s}: jaxadv {acc_j[-1]} Foolbox {acc_f[-1]}", flush=True)
        diff = np.asarray(acc_j) - np.asarray(acc_f)
        over_seeds = {"robust_acc_over_seeds": {
            "seeds": seeds, "jaxadv": acc_j, "foolbox": acc_f,
            "jaxadv_mean": np.mean(acc_j, axis=0).tolist(),
            "foolbox_mean": np.mean(acc_f, axis=0).tolist(),
            "diff_mean": diff.mean(axis=0).tolist(),
            "diff_se": (diff.std(axis=0, ddof=1) / np.sqrt(seeds)).tolist()}}
    return {"eps": MULTI_EPS, "jaxadv_s_one": s_one, "jaxadv_s_all": s_all,
            "foolbox_s_one": f_one, "foolbox_s_all": f_all,
            "jaxadv_all_mode": best_mode,
            **{f"jaxadv_s_all_{mode}": v for mode, v in s_modes.items()},
            "jaxadv_all_over_one": s_all / s_one, "foolbox_all_over_one": f_all / f_one,
            "jaxadv_robust_acc": jax_acc, "jaxadv_robust_acc_nested": nested_acc,
            "foolbox_robust_acc": [float(a) for a in fb_acc],
            "paired_with_foolbox": paired, **over_seeds, "n": setup["n"]}


def _multi_eps_paired(setup, fb, fmodel, f, x, y, key, kw) -> dict:
    """jaxadv's PGD and Foolbox's LinfPGD from the same starts at every radius: the uniform draw
    u of ``random_start(key)`` scaled by each eps (Foolbox's ``get_random_start`` overridden to
    return it; both then clip to [0, 1]), so any difference in robust accuracy is the attacks'
    own, not their random draws'. Reports both robust accuracies and the points they disagree on."""
    import eagerpy as ep

    u = random_start(key, x, 1.0, "linf")

    class FromJaxadvStart(fb.attacks.LinfPGD):
        def get_random_start(self, x0, epsilon):
            return x0 + ep.astensor(u * epsilon)

    atk = FromJaxadvStart(abs_stepsize=kw["step_size"], steps=kw["num_steps"])
    x_fb = atk(fmodel, x, y, epsilons=list(MULTI_EPS))[1]
    one = jax.jit(lambda x, y, eps, x_init: gradient.pgd(f, x, y, key, eps=eps, x_init=x_init,
                                                         **kw).x_adv)
    out = {"jaxadv": [], "foolbox": [], "disagreements": []}
    for eps, xf in zip(MULTI_EPS, x_fb, strict=True):
        xj = np.asarray(one(x, y, jnp.float32(eps), jnp.clip(x + u * eps, 0.0, 1.0)))
        xf = np.asarray(xf)
        setup["check_in_ball"](xj, eps, "linf")
        setup["check_in_ball"](xf, eps, "linf")
        rj, rf = setup["robust_acc_mask"](xj), setup["robust_acc_mask"](xf)
        out["jaxadv"].append(float(100.0 * rj.mean()))
        out["foolbox"].append(float(100.0 * rf.mean()))
        out["disagreements"].append(int(np.sum(rj != rf)))
    return out


def run_peer_modules(setup: dict, quick: bool) -> dict:
    sections = {}
    for name in PEER_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        print(f"Running {name} ...", flush=True)
        sections.update(importlib.import_module(name).run(setup, quick))
    return sections


def markdown_table(results: dict) -> str:
    lines = ["| benchmark | library | robust acc (%) | images/s | n |", "|---|---|---|---|---|"]
    for section, libs in results.items():
        if section in ("multi_eps", "setup", "pgd_paired") or not isinstance(libs, dict):
            continue
        for lib, r in libs.items():
            if not isinstance(r, dict):
                continue
            if "error" in r:
                lines.append(f"| {section} | {lib} | {r['error']} | | |")
                continue
            se = f" +- {r['robust_acc_se']:.1f}" if "robust_acc_se" in r else ""
            lines.append(f"| {section} | {lib} | {r.get('robust_acc', float('nan')):.1f}{se} | "
                         f"{r.get('images_per_s', float('nan')):.1f} | {r.get('n', '')} |")
    paired = results.get("pgd_paired")
    if paired:
        lines += ["", "| PGD from the same starts | seeds | jaxadv | ART | jaxadv - ART | "
                  "robust only vs jaxadv / only vs ART (points, all seeds) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {norm} | {r['seeds']} | {r['jaxadv']['robust_acc']:.2f} | "
                  f"{r['art']['robust_acc']:.2f} | {r['diff_mean']:+.2f} +- {r['diff_se']:.2f} | "
                  f"{sum(r['robust_only_against_jaxadv'])} / "
                  f"{sum(r['robust_only_against_art'])} |" for norm, r in paired.items()]
    m = results.get("multi_eps")
    if m:
        lines += ["", "| multi_eps (8 radii) | one eps (s) | all 8 in one call (s) | ratio |",
                  "|---|---|---|---|",
                  f"| jaxadv ({m['jaxadv_all_mode']}) | {m['jaxadv_s_one']:.3f} | "
                  f"{m['jaxadv_s_all']:.3f} | {m['jaxadv_s_all'] / m['jaxadv_s_one']:.2f} |",
                  f"| foolbox | {m['foolbox_s_one']:.3f} | {m['foolbox_s_all']:.3f} | "
                  f"{m['foolbox_s_all'] / m['foolbox_s_one']:.2f} |"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write.")
    parser.add_argument("--n", type=int, default=None, help="examples (default 1000; quick 100)")
    parser.add_argument("--quick", action="store_true", help="100 examples, fewer repeats")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per PGD measurement, median (default 3)")
    parser.add_argument("--multi_eps_repeats", type=int, default=None,
                        help="timed rounds of the multi_eps measurement (default: 2 quick, 3 full)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="random starts per library for the PGD robust accuracy, mean and "
                             "standard error reported (default 5; quick 1)")
    parser.add_argument("--sections", nargs="+",
                        default=["pgd", "pgd_l2", "pgd_paired", "multi_eps"],
                        choices=["pgd", "pgd_l2", "pgd_paired", "multi_eps"],
                        help="which of this module's benchmarks to run (default all)")
    parser.add_argument("--host_devices", type=int, default=1,
                        help="XLA host devices to split jaxadv's PGD batch over (default 1)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--skip_peers", action="store_true",
                        help="do not run peer_autoattack.py / peer_minnorm.py")
    args = parser.parse_args(argv)
    if args.host_devices > 1:
        from jaxadv.devices import use_host_devices

        use_host_devices(args.host_devices)  # before the first JAX operation
    n = args.n or (100 if args.quick else 1000)
    repeats = args.repeats or 3
    multi_repeats = args.multi_eps_repeats or (2 if args.quick else 3)
    seeds = args.seeds or (1 if args.quick else 5)
    setup = build_setup(args.checkpoint, n, args.quick)
    print(f"{setup['model_name']} on {n} MNIST test images: clean accuracy "
          f"{setup['clean_acc']:.1f}%, JAX/PyTorch logits agree to "
          f"{setup['logits_max_abs_diff']:.2g}", flush=True)
    results = {"setup": {
        "checkpoint": setup["checkpoint"], "n": n, "quick": args.quick, "repeats": repeats,
        "multi_eps_repeats": multi_repeats, "seeds": seeds,
        "jaxadv_pgd_host_devices": jax.device_count(),
        "clean_acc": setup["clean_acc"], "logits_max_abs_diff": setup["logits_max_abs_diff"],
        "pgd_linf": LINF, "pgd_l2": L2, "robust_acc_unit": "percent",
        "jax": jax.__version__, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "note": "same weights and examples for every library; robust accuracy measured by the "
                "same JAX function on each library's examples; timings are medians after a "
                "warm-up call"}}
    if "pgd" in args.sections:
        results["pgd"] = bench_pgd(setup, LINF, "linf", repeats, seeds)
    if "pgd_l2" in args.sections:
        results["pgd_l2"] = bench_pgd(setup, L2, "l2", repeats, seeds)
    if "pgd_paired" in args.sections:
        results["pgd_paired"] = {norm: bench_pgd_paired(setup, cfg, norm, seeds)
                                 for norm, cfg in (("linf", LINF), ("l2", L2))}
    if "multi_eps" in args.sections:
        results["multi_eps"] = bench_multi_eps(setup, multi_repeats, seeds)
    if not args.skip_peers:
        results.update(run_peer_modules(setup, args.quick))
    out = report.write_json(args.out, results, indent=2)
    print(markdown_table(results))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
