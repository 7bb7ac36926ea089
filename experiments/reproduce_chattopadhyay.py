"""RoI vs RoA on MNIST: Chattopadhyay et al. (2020), "Spatially Correlated Patterns in Adversarial
Images" (arXiv 2011.10794), tables R-1 and R-2 of methods.md 3.2 / 5.6.

    python -m experiments.reproduce_chattopadhyay            # full (several hours on 2 CPU cores)
    python -m experiments.reproduce_chattopadhyay --quick    # smoke settings, ~3.5 minutes

Full: SmallGAP and Pool x normal, adv, int2 on 200 images (Boopathy et al. evaluated 200); quick:
SmallGAP normal and adv on 64 images with short attacks (measured 3.5 min on the shared 2-core
machine; DeepFool and C&W on Pool take minutes per 100 images there, hence no Pool in quick).

Each model is saved (results.json, overlay figure) as soon as it is done; a later run with the same
settings skips the models already in ``--out_dir``, so an interrupted run resumes and the models can
be run one invocation at a time (``--models pool_int2``); other settings there stop the run with an
error (``--fresh`` replaces them, ``--redo MODEL`` evaluates one of them again).

Data: the first ``--n`` MNIST test images are evaluated; the next ``--n`` are attacked to build the
data-wide RoA prior and the dataset-mean fill (``../shared/data/mnist-test``). Models: official
Boopathy et al. checkpoints (``../shared/data/boopathy-mnist``), plus optionally jaxadv-trained
Fashion-MNIST models (``--fmnist_workdir DIR ...``, evaluated on their own test set; skipped where a
directory is absent). Attacks (``jaxadv.attacks.get_attack``): FGSM and PGD l-inf at eps 0.3,
C&W-l2 and DeepFool-l2, all untargeted.

Per model and attack (every choice below is the project's, methods.md 3.2 [rec]; the paper's
abstract gives none):

* s_I: Grad-CAM of the last feature map, upsampled to 28 x 28, min-max normalised. s_A: sum_c |delta|
  smoothed by a Gaussian of ``--sigma`` px. RoI / RoA: top ``p`` fractions (default 0.2).
* R-1: IoU(RoI, RoA), |RoI & RoA| / |RoA| and the share of ||delta||^2 inside the RoI, with
  RoI = s_I(x, y) on the clean image and RoA from the true delta, averaged over the attacked images
  (clean correct and attack successful). Random regions give E[overlap] = p_I.
* R-2: neutralise M = RoA \\ RoI, x~' = x'(1 - M) + v M, over p_I x p_A x fills (zero, dataset mean,
  Gaussian blur of the input, uniform noise) in one compiled sweep, for four RoA/RoI sources:
  ``oracle_clean_roi`` (true delta and the clean image's RoI for the true label: both need the clean
  x, the upper bound); ``oracle`` (true delta; RoI of the defended input for its predicted class);
  ``proxy`` (the input re-attacked away from its prediction with the same attack, |A(x') - x'|;
  RoI as ``oracle``); ``prior`` (the mean attack map of the held-out images, one map for all).
  Clean inputs are neutralised the same way (the oracle reuses its pair's delta) to measure the
  defence's cost. Recovery rate = share of attacked images classified correctly after
  neutralisation. Control: a random region of the same size per image (zero fill, default p).

Writes ``--out_dir``/{results.json, tables.md, overlays_<model>.png, recovery_vs_pA.png}.
"""

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import resumable
from experiments.shared_data import SHARED
from jaxadv import plotting
from jaxadv.analysis import roi_roa as rr
from jaxadv.attacks import get_attack
from jaxadv.data import load_dataset
from jaxadv.models import get_model, load_official_checkpoint

ATTACKS = ("fgsm", "pgd", "cw", "deepfool")
VARIANTS = ("oracle_clean_roi", "oracle", "proxy", "prior")
FILLS = rr.FILLS


def attack_settings(quick: bool) -> dict[str, tuple[str, dict]]:
    """name -> (registry name, hyperparameters). Quick settings are a smoke test, not a result."""
    if quick:
        return {
            "fgsm": ("fgsm", {"eps": 0.3}),
            "pgd": ("pgd", {"eps": 0.3, "step_size": 0.075, "num_steps": 10}),
            "cw": ("cw_l2", {"num_binary_steps": 1, "num_steps": 40, "c_init": 2.0,
                             "learning_rate": 0.1}),
            "deepfool": ("deepfool", {"num_steps": 10, "overshoot": 0.02}),
        }
    return {
        "fgsm": ("fgsm", {"eps": 0.3}),
        "pgd": ("pgd", {"eps": 0.3, "step_size": 0.01, "num_steps": 100}),
        # lr 0.1: MNIST pixels saturate tanh (see experiments/benchmarks/peer_minnorm.py).
        # 5 x 200 steps from c = 0.1 instead of Carlini's 9 x 10,000 from 1e-3: the search still
        # spans 0.1..1e3, and 1,000 steps per image is what a 2-core CPU affords here.
        "cw": ("cw_l2", {"num_binary_steps": 5, "num_steps": 200, "c_init": 0.1,
                         "learning_rate": 0.1}),
        "deepfool": ("deepfool", {"num_steps": 50, "overshoot": 0.02}),
    }


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out_dir", default=None,
                   help="results directory (default: results/chattopadhyay, with --quick "
                        "results/chattopadhyay_quick)")
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--models", nargs="+", default=None,
                   help="official checkpoint stems without the mnist_ prefix and _100 suffix, "
                   "e.g. smallgap_normal pool_adv")
    p.add_argument("--fmnist_workdir", nargs="*", default=[],
                   help="jaxadv training directories of Fashion-MNIST models (skipped if absent)")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    p.add_argument("--n", type=int, default=None, help="evaluated images (and as many held out)")
    p.add_argument("--p_importance", type=float, nargs="+", default=None)
    p.add_argument("--p_attack", type=float, nargs="+", default=None)
    p.add_argument("--p_default", type=float, default=0.2)
    p.add_argument("--importance", default="grad_cam", choices=rr.IMPORTANCE_METHODS)
    p.add_argument("--smoothing", default="gaussian", choices=["gaussian", "box", "none"])
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--blur_sigma", type=float, default=1.5)
    p.add_argument("--num_examples", type=int, default=1, help="overlay rows per attack")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true",
                   help="ignore (and replace) results already in --out_dir; by default models "
                        "already there with the same settings are skipped")
    p.add_argument("--redo", nargs="+", default=[], metavar="MODEL",
                   help="evaluate these models again although --out_dir has them (keys as in "
                        "results.json, e.g. mnist_pool_int2); the others already there are kept")
    p.add_argument("--table_only", action="store_true",
                   help="only rewrite tables.md and the claim from --out_dir/results.json")
    args = p.parse_args(argv)
    q = args.quick
    args.out_dir = args.out_dir or ("results/chattopadhyay_quick" if q else "results/chattopadhyay")
    if args.models is None:
        args.models = (["smallgap_normal", "smallgap_adv"] if q else
                       [f"{a}_{m}" for a in ("smallgap", "pool")
                        for m in ("normal", "adv", "int2")])
    args.n = args.n or (64 if q else 200)
    args.p_importance = args.p_importance or ([0.1, 0.2] if q else [0.05, 0.1, 0.2, 0.3, 0.5])
    args.p_attack = args.p_attack or ([0.05, 0.1, 0.2, 0.4] if q else
                                      [0.05, 0.1, 0.2, 0.3, 0.4, 0.5])
    for name in ("p_importance", "p_attack"):
        if args.p_default not in getattr(args, name):
            setattr(args, name, sorted([*getattr(args, name), args.p_default]))
    return args


class Runner:
    """Jitted functions of one architecture; the variables are an argument, so checkpoints of the
    same architecture share every compilation."""

    def __init__(self, model, args):
        self.model, self.args = model, args
        self._attacks = {}
        self.predict = jax.jit(lambda v, x: jnp.argmax(self._logits(v)(x), -1))
        self.importance = jax.jit(lambda v, x, t: rr.importance_map(
            self._logits(v), x, t, method=args.importance, features_fn=self._features(v),
            head_fn=self._head(v)))
        self.sweep = jax.jit(self._sweep)

    def _logits(self, v):
        return lambda x: self.model.apply(v, x, train=False)

    def _features(self, v):
        return lambda x: self.model.apply(v, x, train=False, method="features")

    def _head(self, v):
        return lambda a: self.model.apply(v, a, method="head")

    def attack(self, name, registry_name, hyper, v, x, y, key):
        if name not in self._attacks:
            fn = get_attack(registry_name, **hyper)
            self._attacks[name] = jax.jit(
                lambda v_, x_, y_, k_: (lambda r: (r.x_adv, r.success))(
                    fn(self._logits(v_), x_, y_, k_)))
        return self._attacks[name](v, x, y, key)

    def _sweep(self, v, x, y, x_adv, maps, p_i, p_a, fills_adv, fills_clean, key):
        return rr.neutralization_sweep(self._logits(v), x, y, x_adv, p_importance=p_i,
                                       p_attack=p_a, fills_adv=fills_adv,
                                       fills_clean=fills_clean, key=key, **maps)


@functools.cache
def _attack_map_fn(smoothing, sigma):
    return jax.jit(lambda d: rr.attack_map(d, smoothing=smoothing, sigma=sigma))


def _mean_over(values, where) -> float | None:
    w = np.asarray(where, bool)
    return float(np.mean(np.asarray(values)[w])) if w.any() else None


def evaluate(runner: Runner, variables, x_all, y_all, args, key) -> tuple[dict, dict]:
    """One model: every attack's R-1 and R-2 entries, and the arrays for the overlay figure."""
    n = args.n
    x, y = jnp.asarray(x_all[:n]), jnp.asarray(y_all[:n])
    x_held, y_held = jnp.asarray(x_all[n:2 * n]), jnp.asarray(y_all[n:2 * n])
    smoothing = None if args.smoothing == "none" else args.smoothing
    amap = _attack_map_fn(smoothing, args.sigma)
    raw_map = _attack_map_fn(None, 1.0)
    p_i, p_a = jnp.asarray(args.p_importance), jnp.asarray(args.p_attack)
    pd = args.p_default
    mean = float(jnp.mean(x_held))  # dataset-mean fill from the held-out images
    pred_clean = runner.predict(variables, x)
    out = {"clean_accuracy": float(jnp.mean(pred_clean == y)), "attacks": {}}
    figure = {}
    for ai, name in enumerate(args.attacks):
        tic = time.perf_counter()
        reg_name, hyper = attack_settings(args.quick)[name]
        k_att, k_proxy, k_fill, k_ctrl, k_tie = jax.random.split(jax.random.fold_in(key, ai), 5)
        # One batch of 2n for the evaluated and held-out images, and one for the proxy re-attacks
        # of x' and x (each away from its own prediction): a single compilation per attack.
        xa2, succ2 = runner.attack(name, reg_name, hyper, variables, jnp.concatenate([x, x_held]),
                                   jnp.concatenate([y, y_held]), k_att)
        x_adv, success = xa2[:n], succ2[:n]
        pred_adv = runner.predict(variables, x_adv)
        both = jnp.concatenate([x_adv, x])
        xp2, _ = runner.attack(name, reg_name, hyper, variables, both,
                               jnp.concatenate([pred_adv, pred_clean]), k_proxy)
        # rr.proxy_attack_map(attack, logits_fn, x_in, key) does the same per input.
        s_proxy = amap(xp2 - both)
        s_oracle = amap(x_adv - x)
        held_maps = amap(xa2[n:] - x_held)
        held_ok = (runner.predict(variables, x_held) == y_held) & succ2[n:]
        prior = rr.prior_attack_map(held_maps, weights=held_ok.astype(jnp.float32))
        s_prior = jnp.broadcast_to(prior, s_oracle.shape)
        imp = runner.importance(variables, jnp.concatenate([x, x, x_adv]),
                                jnp.concatenate([y, pred_clean, pred_adv]))
        s_i_true, s_i_clean, s_i_adv = imp[:n], imp[n:2 * n], imp[2 * n:]
        attacked = np.asarray((pred_clean == y) & (pred_adv != y))
        delta = x_adv - x
        norms = np.sqrt(np.asarray(jnp.sum(delta ** 2, axis=(1, 2, 3))))
        linf = np.asarray(jnp.max(jnp.abs(delta), axis=(1, 2, 3)))

        # R-1 (clean RoI for the true label vs the true RoA).
        r1 = {}
        for tag, s_a in (("", s_oracle), ("_raw", raw_map(delta))):
            reg = rr.segregate(s_i_true, s_a, p_importance=pd, p_attack=pd, key=k_tie)
            m = rr.overlap_metrics(reg.roi, reg.roa, delta)
            for f in m._fields:
                r1[f + tag] = _mean_over(getattr(m, f), attacked)

        # R-2 sweeps.
        fills_adv = rr.fill_values(x_adv, FILLS, key=k_fill, mean=mean, blur_sigma=args.blur_sigma)
        fills_clean = rr.fill_values(x, FILLS, key=k_fill, mean=mean, blur_sigma=args.blur_sigma)
        sources = {
            "oracle_clean_roi": dict(importance_adv=s_i_true, attack_adv=s_oracle,
                                     importance_clean=s_i_true, attack_clean=s_oracle),
            "oracle": dict(importance_adv=s_i_adv, attack_adv=s_oracle,
                           importance_clean=s_i_clean, attack_clean=s_oracle),
            "proxy": dict(importance_adv=s_i_adv, attack_adv=s_proxy[:n],
                          importance_clean=s_i_clean, attack_clean=s_proxy[n:]),
            "prior": dict(importance_adv=s_i_adv, attack_adv=s_prior,
                          importance_clean=s_i_clean, attack_clean=s_prior),
        }
        r2, control = {}, {}
        ii, ja = args.p_importance.index(pd), args.p_attack.index(pd)
        for variant, maps in sources.items():
            sw = runner.sweep(variables, x, y, x_adv, maps, p_i, p_a, fills_adv, fills_clean,
                              k_tie)
            summ = {k: np.asarray(v) for k, v in rr.summarize_outcome(sw.outcome).items()}
            r2[variant] = {
                "neutralized_accuracy": summ["neutralized_accuracy"].tolist(),
                "neutralized_clean_accuracy": summ["neutralized_clean_accuracy"].tolist(),
                "recovery_rate": np.where(np.isnan(summ["recovery_rate"]), None,
                                          summ["recovery_rate"]).tolist(),
                "mask_fraction": np.asarray(jnp.mean(sw.mask_fraction, -1)).tolist(),
            }
            # Control: a random region of the size of RoA \ RoI, each fill, default fractions.
            reg = rr.segregate(maps["importance_adv"], maps["attack_adv"], p_importance=pd,
                               p_attack=pd, key=k_tie)
            mask = rr.isolate(*reg).attack_only
            rand = rr.random_region_like(mask, k_ctrl)
            control[variant] = {
                f: _mean_over(runner.predict(variables, rr.neutralize(x_adv, rand, fills_adv[i]))
                              == y, attacked) for i, f in enumerate(FILLS)}
            if variant == "oracle_clean_roi":
                x_n = rr.neutralize(x_adv, mask, "zero")
                figure[name] = {
                    "x": np.asarray(x), "x_adv": np.asarray(x_adv), "s_i": np.asarray(s_i_true),
                    "s_a": np.asarray(s_oracle), "roi": np.asarray(reg.roi),
                    "roa": np.asarray(reg.roa), "x_neutralized": np.asarray(x_n),
                    "y": np.asarray(y), "pred_adv": np.asarray(pred_adv),
                    "pred_neutralized": np.asarray(runner.predict(variables, x_n)),
                    "attacked": attacked,
                }
        out["attacks"][name] = {
            "n": n, "num_attacked": int(attacked.sum()),
            "success_rate": float(jnp.mean(success)),
            "attacked_accuracy": float(jnp.mean(pred_adv == y)),
            "median_l2": _median(norms, attacked), "median_linf": _median(linf, attacked),
            "prior_from": int(held_ok.sum()),
            "r1": r1, "r2": r2, "random_control_recovery": control,
            "seconds": time.perf_counter() - tic,
        }
        print(f"  {name}: attacked {int(attacked.sum())}/{n}, IoU {_fmt(r1['iou'], 3)}, recovery "
              f"(p {pd}, zero) " + ", ".join(
                  f"{v} {_fmt(r2[v]['recovery_rate'][ii][ja][0])}" for v in VARIANTS)
              + f" ({time.perf_counter() - tic:.0f} s)", flush=True)
    return out, figure


def _median(v, where):
    w = np.asarray(where, bool)
    return float(np.median(v[w])) if w.any() else None


TIES = ("in a random order per image and attack (rr.segregate and rr.neutralization_sweep with "
        "key=), the same order for every fraction")
_TIES_BY_POSITION = (
    "by position (results from before 2026-12-07, without a key): for FGSM and PGD, whose |delta| "
    "equals eps on most pixels, the raw RoA is then mostly the image's top rows (a position, not "
    "a region of the attack), so only their smoothed columns and the raw columns of C&W and "
    "DeepFool are informative")


def _ties(settings: dict) -> str:
    """How the results' regions broke ties (files from before the key say nothing: by position)."""
    return settings.get("ties", _TIES_BY_POSITION)


def _fmt(v, digits=None):
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if digits is not None else f"{100 * v:.0f}"


def model_keys(args) -> list[str]:
    """The keys of the models :func:`load_models` yields (a workdir it skips included)."""
    return ([f"mnist_{m}" for m in args.models]
            + [f"fmnist_{pathlib.Path(wd).name}" for wd in args.fmnist_workdir])


def load_models(args):
    """Yields (model key, model, variables, images, labels) for every requested model."""
    shared = pathlib.Path(args.shared)
    need = [shared / "mnist-test"] + [shared / "boopathy-mnist" / f"mnist_{m}_100.pkl"
                                      for m in args.models]
    for path in need:
        if not path.exists():
            raise SystemExit(f"{path} is missing: this script needs ../shared/data (the MNIST test "
                             "set and the official Boopathy et al. checkpoints); pass --shared DIR "
                             "or --models with the checkpoints you have.")
    x, y = load_dataset("mnist_idx", "test", data_dir=str(shared / "mnist-test")).get(
        np.arange(2 * args.n))
    keys = iter(model_keys(args))
    for m in args.models:
        name, params = load_official_checkpoint(shared / "boopathy-mnist" / f"mnist_{m}_100.pkl")
        yield (next(keys), name, get_model(name),
               {"params": jax.tree.map(jnp.asarray, params)}, x, y)
    for wd, mkey in zip(args.fmnist_workdir, keys, strict=True):
        if not pathlib.Path(wd, "config.json").exists():
            print(f"skipping {wd}: not a jaxadv training directory (no config.json)", flush=True)
            continue
        from jaxadv.training import load_trained_model
        from jaxadv.training.loop import load_sources

        model, variables, config = load_trained_model(wd)
        _, test = load_sources(config)
        fx, fy = test.get(np.arange(min(2 * args.n, len(test))))
        if len(fx) < 2 * args.n:
            print(f"skipping {wd}: fewer than {2 * args.n} test images", flush=True)
            continue
        yield (mkey, f"fmnist:{wd}", model, variables, fx, fy)


def main(argv=None) -> dict:
    args = _parse(argv)
    t0 = time.perf_counter()
    out_dir = pathlib.Path(args.out_dir)
    if args.table_only:
        if not (out_dir / "results.json").exists():
            raise SystemExit(f"--table_only needs {out_dir / 'results.json'} from an earlier run; "
                             "run without --table_only first (or pass its --out_dir).")
        results = json.loads((out_dir / "results.json").read_text())
        results["settings"]["seconds"] = _total_seconds(results)  # a stopped run left none
        results["claim"] = claim_check(results)
        results = resumable.save_results(results, out_dir)
        (out_dir / "tables.md").write_text(write_tables(results))
        recovery_figure(results, out_dir / "recovery_vs_pA.png")
        return results
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"settings": {
        "mode": "quick" if args.quick else "full",
        "data": f"first {args.n} test images evaluated; the next {args.n} build the RoA prior and "
                "the dataset-mean fill",
        "attacks": {k: {"attack": v[0], **v[1]} for k, v in attack_settings(args.quick).items()
                    if k in args.attacks},
        "importance": f"{args.importance}, upsampled bilinearly, min-max normalised",
        "attack_map": f"sum_c |delta|, {args.smoothing} smoothing sigma {args.sigma} px, max "
                      "normalised",
        "p_importance": args.p_importance, "p_attack": args.p_attack, "p_default": args.p_default,
        "fills": list(FILLS), "blur_sigma": args.blur_sigma, "noise": "uniform [0, 1]",
        "variants": list(VARIANTS), "seed": args.seed, "ties": TIES,
        "command": "python -m experiments.reproduce_chattopadhyay " + " ".join(
            sys.argv[1:] if argv is None else argv),
    }, "models": {}}
    results["models"] = resumable.earlier_models(out_dir / "results.json", results["settings"],
                                                 fresh=args.fresh)
    resumable.check_redo(args.redo, model_keys(args))
    runners = {}
    key = jax.random.key(args.seed)
    for mi, (mkey, arch, model, variables, x, y) in enumerate(load_models(args)):
        if resumable.already_saved(results, mkey, out_dir, redo=args.redo):
            continue
        print(f"{mkey}:", flush=True)
        tic = time.perf_counter()
        if arch not in runners:
            runners[arch] = Runner(model, args)
        res, fig = evaluate(runners[arch], variables, x, y, args, jax.random.fold_in(key, mi))
        res["seconds"] = time.perf_counter() - tic
        res["command"] = results["settings"]["command"]
        results["models"][mkey] = res
        resumable.save_results(results, out_dir)  # each finished model survives an interruption
        overlay_figure(fig, mkey, out_dir / f"overlays_{mkey}.png", args.num_examples)
    results["settings"]["seconds"] = _total_seconds(results)
    results["claim"] = claim_check(results)
    results = resumable.save_results(results, out_dir)
    (out_dir / "tables.md").write_text(write_tables(results))
    recovery_figure(results, out_dir / "recovery_vs_pA.png")
    print(f"wrote {out_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    return results


def _total_seconds(results: dict) -> float:
    return sum(m.get("seconds", 0.0) for m in results["models"].values())


# --------------------------------------------------------------------------- tables

def _r2_at(entry, variant, s, field, pi=None, pa=None, fill="zero"):
    ii = s["p_importance"].index(s["p_default"] if pi is None else pi)
    ja = s["p_attack"].index(s["p_default"] if pa is None else pa)
    return entry["r2"][variant][field][ii][ja][s["fills"].index(fill)]


def claim_check(results: dict, *, data: str | None = None) -> dict:
    """Section 3.1: neutralising RoA \\ RoI recovers predictions. Project's criterion, per fill at
    the default fractions: the oracle's recovery (pooled over the attacked images of every model
    and attack) beats neutralising a random region of the same size by more than 10 points, and
    neutralising clean inputs costs less than 10 points of accuracy (mean over rows).

    Pooled over every model; where the models come from more than one dataset, ``per_data`` holds
    the same check over each dataset's models (``data``: only the models whose key starts with
    ``data + '_'``, e.g. 'mnist' or 'fmnist')."""
    s = results["settings"]
    models = {k: m for k, m in results["models"].items()
              if data is None or k.startswith(data + "_")}
    groups = sorted({k.split("_")[0] for k in models})
    per_fill = {}
    for fill in s["fills"]:
        rows = []
        for mkey, m in models.items():
            for att, e in m["attacks"].items():
                if not e["num_attacked"]:
                    continue
                row = {"model": mkey, "attack": att, "n": e["num_attacked"],
                       "clean": m["clean_accuracy"]}
                for v in VARIANTS:
                    row[v] = _r2_at(e, v, s, "recovery_rate", fill=fill)
                    row[v + "_clean"] = _r2_at(e, v, s, "neutralized_clean_accuracy", fill=fill)
                    row[v + "_control"] = e["random_control_recovery"][v][fill]
                rows.append(row)
        if not rows:
            return {"verdict": "no attacked images"}
        mean = {}
        for k in rows[0]:
            if k in ("model", "attack", "n"):
                continue
            vals = [(r[k], r["n"]) for r in rows if r[k] is not None]
            plain = k == "clean" or k.endswith("_clean")
            w = np.asarray([1.0 if plain else n for _, n in vals])
            mean[k] = float(np.sum(w * np.asarray([v for v, _ in vals])) / np.sum(w))
        gain = mean["oracle"] - mean["oracle_control"]
        cost = mean["clean"] - mean["oracle_clean"]
        per_fill[fill] = {"mean": mean, "oracle_gain_over_control": gain,
                          "oracle_clean_cost": cost,
                          "verdict": "supported" if gain > 0.1 and cost < 0.1 else "not supported"}
    held = [f for f, c in per_fill.items() if c["verdict"] == "supported"]
    out = {"per_fill": per_fill, "supported_for_fills": held,
           "verdict": "supported" if held else "not supported"}
    if data is None and len(groups) > 1:
        out["per_data"] = {g: claim_check(results, data=g) for g in groups}
    return out


def write_tables(results: dict) -> str:
    s = results["settings"]
    pd = s["p_default"]
    data = " and ".join({"mnist": "MNIST", "fmnist": "Fashion-MNIST"}.get(g, g) for g in sorted(
        {k.split("_")[0] for k in results["models"]}, reverse=True))
    lines = [f"# RoI vs RoA (Chattopadhyay et al. 2020) on {data or 'no'} models: {s['mode']} run",
             ""]
    if s["mode"] == "quick":
        lines += ["**Quick mode: smoke-test settings (few images, short attacks); not a result.**",
                  ""]
    lines += [f"Settings: {s['data']}. Importance: {s['importance']}. Attack map: "
              f"{s['attack_map']}. Attacks: " + "; ".join(
                  f"{k} = {v['attack']}(" + ", ".join(f"{a}={b}" for a, b in v.items()
                                                      if a != "attack") + ")"
                  for k, v in s["attacks"].items()) + f". Command: {resumable.commands(results)} "
              f"({s.get('seconds', 0):.0f} s of evaluation).", ""]
    pi, pa = pd, pd
    rand_iou = pi * pa / (pi + pa - pi * pa)
    lines += [f"## R-1: RoI (Grad-CAM of the true class on x) vs RoA (true delta), p_I = p_A = {pd}",
              "", "Means over the attacked images (clean correct, attack successful). Random "
              f"regions would give IoU {rand_iou:.3f}, overlap {pi:.2f}, energy share {pi:.2f}. "
              f"'raw' = unsmoothed attack map. Ties between equal scores: {_ties(s)}.", "",
              "| model | attack | attacked / n | median l2 | IoU | overlap | energy share | IoU raw "
              "| overlap raw |", "|---" * 9 + "|"]
    for mkey, m in results["models"].items():
        for att, e in m["attacks"].items():
            r = e["r1"]
            lines.append(f"| {mkey} | {att} | {e['num_attacked']} / {e['n']} | "
                         f"{_fmt(e['median_l2'], 2)} | {_fmt(r['iou'], 3)} | "
                         f"{_fmt(r['overlap'], 3)} | {_fmt(r['energy_share'], 3)} | "
                         f"{_fmt(r['iou_raw'], 3)} | {_fmt(r['overlap_raw'], 3)} |")
    lines += ["", f"## R-2a: accuracy (%) and recovery at p_I = p_A = {pd}, zero fill", "",
              "Per RoA source: neutralised accuracy / neutralised-clean accuracy / recovery rate; "
              "'ctrl' = recovery when a random region of the same size is zeroed instead.", "",
              "| model | attack | clean | attacked | " + " | ".join(VARIANTS) + " | ctrl oracle |"
              " ctrl proxy |", "|---" * (6 + len(VARIANTS)) + "|"]
    for mkey, m in results["models"].items():
        for att, e in m["attacks"].items():
            cells = [f"{_fmt(_r2_at(e, v, s, 'neutralized_accuracy'))} / "
                     f"{_fmt(_r2_at(e, v, s, 'neutralized_clean_accuracy'))} / "
                     f"{_fmt(_r2_at(e, v, s, 'recovery_rate'))}" for v in VARIANTS]
            ctrl = {v: c["zero"] for v, c in e["random_control_recovery"].items()}
            lines.append(f"| {mkey} | {att} | {_fmt(m['clean_accuracy'])} | "
                         f"{_fmt(e['attacked_accuracy'])} | " + " | ".join(cells)
                         + f" | {_fmt(ctrl['oracle'])} | {_fmt(ctrl['proxy'])} |")
    lines += ["", f"## R-2b: recovery (%) per fill at p_I = p_A = {pd}", "",
              "Each cell: recovery / neutralised-clean accuracy / recovery of the random-region "
              "control with that fill.", "",
              "| model | attack | source | " + " | ".join(s["fills"]) + " |",
              "|---" * (3 + len(s["fills"])) + "|"]
    for mkey, m in results["models"].items():
        for att, e in m["attacks"].items():
            for v in VARIANTS:
                cells = [f"{_fmt(_r2_at(e, v, s, 'recovery_rate', fill=f))} / "
                         f"{_fmt(_r2_at(e, v, s, 'neutralized_clean_accuracy', fill=f))} / "
                         f"{_fmt(e['random_control_recovery'][v][f])}"
                         for f in s["fills"]]
                lines.append(f"| {mkey} | {att} | {v} | " + " | ".join(cells) + " |")
    for axis, label, other in (("p_attack", "p_A", "p_I"), ("p_importance", "p_I", "p_A")):
        lines += ["", f"## R-2{'c' if axis == 'p_attack' else 'd'}: recovery (%) vs {label} "
                  f"({other} = {pd}, zero fill)", "",
                  "Each cell: recovery / neutralised-clean accuracy.", "",
                  "| model | attack | source | " + " | ".join(f"{label} {p:g}" for p in s[axis])
                  + " |", "|---" * (3 + len(s[axis])) + "|"]
        for mkey, m in results["models"].items():
            for att, e in m["attacks"].items():
                for v in VARIANTS:
                    kw = [{"pa": p} if axis == "p_attack" else {"pi": p} for p in s[axis]]
                    cells = [f"{_fmt(_r2_at(e, v, s, 'recovery_rate', **k))} / "
                             f"{_fmt(_r2_at(e, v, s, 'neutralized_clean_accuracy', **k))}"
                             for k in kw]
                    lines.append(f"| {mkey} | {att} | {v} | " + " | ".join(cells) + " |")
    claims = [("", results["claim"])] + [
        (f" ({g} models only)", c) for g, c in results["claim"].get("per_data", {}).items()]
    for which, c in claims:
        lines += _claim_lines(c, pd, which)
    return "\n".join(lines) + "\n"


def _claim_lines(c: dict, pd, which: str) -> list[str]:
    lines = []
    if "per_fill" in c:
        lines += ["", f"## Claim (section 3.1){which}: neutralising RoA \\ RoI recovers "
                  "predictions", "",
                  f"At p_I = p_A = {pd}; recovery pooled over the attacked images of every model "
                  "and attack, clean accuracies averaged over the rows. Project's criterion: the "
                  "oracle beats the random-region control by > 10 points and costs < 10 points of "
                  "clean accuracy.", "",
                  "| fill | " + " | ".join(f"recovery {v}" for v in VARIANTS)
                  + " | control (oracle size) | clean | neutralised clean (oracle) | verdict |",
                  "|---" * (5 + len(VARIANTS)) + "|"]
        for fill, fc in c["per_fill"].items():
            mn = fc["mean"]
            lines.append(f"| {fill} | " + " | ".join(_fmt(mn[v]) for v in VARIANTS)
                         + f" | {_fmt(mn['oracle_control'])} | {_fmt(mn['clean'])} | "
                         f"{_fmt(mn['oracle_clean'])} | {fc['verdict']} |")
        lines += ["", f"Overall: **{c['verdict']}**"
                  + (f" (fills: {', '.join(c['supported_for_fills'])})"
                     if c["supported_for_fills"] else "") + "."]
    return lines


# --------------------------------------------------------------------------- figures
def overlay_figure(fig_data: dict, mkey: str, path: pathlib.Path, num_examples: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlay = plotting.roi_roa_overlay
    show = plotting.show_image
    heat = plotting.map_image
    rows = [(a, i) for a, d in fig_data.items() for i in np.flatnonzero(d["attacked"])[:num_examples]]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 6, figsize=(9, 1.6 * len(rows) + 0.4), squeeze=False)
    for r, (att, i) in enumerate(rows):
        d = fig_data[att]
        show(axes[r, 0], d["x"][i], title=f"x (y={d['y'][i]})")
        show(axes[r, 1], d["x_adv"][i], title=f"{att}: x' -> {d['pred_adv'][i]}")
        heat(axes[r, 2], d["s_i"][i], title="s_I Grad-CAM")
        heat(axes[r, 3], d["s_a"][i], title="s_A |delta| smoothed", cmap="magma")
        overlay(axes[r, 4], d["x_adv"][i], d["roi"][i], d["roa"][i],
                title="RoI blue, RoA red, both mag.")
        show(axes[r, 5], d["x_neutralized"][i],
             title=f"RoA\\RoI zeroed -> {d['pred_neutralized'][i]}")
    fig.suptitle(f"{mkey}: oracle RoA, clean RoI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recovery_figure(results: dict, path: pathlib.Path, fills=("zero", "blur")) -> None:
    """Recovery rate against p_A (p_I at its default), one panel per RoA source and fill; legend
    entries give the number of attacked images each rate is over."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = plotting.recovery_curves
    s = results["settings"]
    fills = [f for f in fills if f in s["fills"]]
    fig, axes = plt.subplots(len(fills), len(VARIANTS), figsize=(4 * len(VARIANTS),
                                                                  3.4 * len(fills)), squeeze=False)
    for row, fill in zip(axes, fills, strict=True):
        for ax, v in zip(row, VARIANTS, strict=True):
            rates = {f"{mk.removeprefix('mnist_')} {att} (n={e['num_attacked']})": [
                _r2_at(e, v, s, "recovery_rate", pa=p, fill=fill) for p in s["p_attack"]]
                for mk, m in results["models"].items() for att, e in m["attacks"].items()}
            curves(ax, s["p_attack"], rates,
                   title=f"{v} (p_I {s['p_default']}, {fill} fill)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    from experiments.script_errors import run_script

    run_script(main, "experiments.reproduce_chattopadhyay")
