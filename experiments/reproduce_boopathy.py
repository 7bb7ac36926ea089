"""Regenerates Boopathy et al. (ICML 2020)'s evaluation tables with jaxadv (methods.md 1.8-1.9).

    python -m experiments.reproduce_boopathy            # full settings (hours on 2 CPU cores)
    python -m experiments.reproduce_boopathy --quick    # small settings, a few minutes

Models: the official MNIST checkpoints (``../shared/data/boopathy-mnist``) on the MNIST test set
(``../shared/data/mnist-test``), and optionally Fashion-MNIST runs of jaxadv's training loop
(``--fmnist NAME=WORKDIR``, e.g. the workdirs of ``experiments.fashion_mnist_robust``), evaluated
on the Fashion-MNIST test set. Images: the first ``--n`` test images of each set (the official
evaluation draws its 200 with ``np.random.seed(99)`` and a permutation, methods.md 1.1: a labelled
change, so the rows differ from the paper's by the sampling of the images too).

Tables (the paper's numbering, methods.md 1.9), written to ``--out`` (results/boopathy/):

* B-1: PGD accuracy against l-inf eps: untargeted CE, ``--pgd_steps`` steps of 0.01, no random
  start; radii nested (a point broken at a smaller eps stays broken).
* B-5: AAI (top-k attack on the true-class CAM, k = 8, ``--aai_steps`` signed steps of 0.01 from a
  uniform start): mean Kendall tau between clean and attacked CAM over the images whose
  prediction did not change, against eps.
* B-6: top-k (k = 8) intersection, divided by k, between each model's true-class CAM and the
  Normal model's of the same architecture, on clean images.
* B-7: ISA (``jaxadv.analysis.isa``) on the Normal models: mean normalised discrepancy at each eps
  multiplier and the normalised slope NS, for each map (CAM, CAM++, IG, rep) x class set x norm.
  IG uses the softplus copy of the network and a right Riemann sum of ``--ig_steps`` points
  (the paper uses 100; fewer keep the double backprop affordable on a CPU).
* Section 1.4 check: minimal-eps targeted attacks on the Normal models; every successful point
  must lie on or above the bound (f_t - f_t')(x) / 2 <= D_{2,1} / hw (scatter figure).

Runs accumulate in ``--out``: each run adds its sections and models to the rows already there
(e.g. ``--models --fmnist normal=DIR ...`` adds Fashion-MNIST rows to the official checkpoints'
tables), and stops before writing anything when a section's settings (SECTION_KEYS) differ from
those of its rows already there. B-6 compares each model with the Normal model of its group (the
MNIST architecture, or ``fmnist``).

Figures: ``b1_robustness.png``, ``b5_aai_kendall.png``, ``b7_isa.png``, ``margin_bound.png`` and
``cam_overlays.png`` (CAM of the true class on clean and PGD-attacked images, per method; the
Fashion-MNIST models in ``cam_overlays_fmnist.png``; drawn by runs that include B-6).
Everything lands in ``results.json`` with the settings, example counts and the command line.
"""

import argparse
import functools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import report
from experiments.shared_data import SHARED, require
from jaxadv.analysis import (
    cam_class_maps,
    cam_map_fn,
    isa,
    isa_curve,
    map_robustness,
    margin_discrepancy,
    mean_over_kept,
    top_k_attack,
)
from jaxadv.analysis.isa import attribution_class_maps, cam_plus_plus_class_maps
from jaxadv.attacks.gradient import pgd_boopathy_eval
from jaxadv.attacks.min_eps import min_eps_bisection
from jaxadv.attacks.targets import random_targets
from jaxadv.attributions import integrated_gradients
from jaxadv.data import load_dataset
from jaxadv.metrics import pgd_eval_accuracy
from jaxadv.metrics.rank import top_k_intersection
from jaxadv.models import get_model, load_official_checkpoint

METHODS = ("normal", "adv", "trades", "int", "int2", "intone", "intadv", "int2adv", "ig", "igsum")
MNIST_EPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.35, 0.4)
ISA_MAPS = ("cam", "cam++", "ig", "rep")

FULL = dict(n=200, models=("smallgap", "pool"), methods=METHODS, eps=MNIST_EPS, pgd_steps=200,
            aai_steps=200, n_isa=100, isa_maps=ISA_MAPS, isa_classes=("one", "two", "all"),
            isa_norms=("l1", "l2"), multipliers=(1.0, 1.2, 1.4, 1.6, 1.8, 2.0), isa_rounds=10,
            ig_steps=20, n_ig=20, ig_classes=("one", "two"), n_scatter=200)
QUICK = dict(n=20, models=("smallgap",), methods=("normal", "adv", "int2"), eps=(0.0, 0.1, 0.3),
             pgd_steps=20, aai_steps=20, n_isa=8, isa_maps=("cam", "cam++", "ig", "rep"),
             isa_classes=("one", "two"), isa_norms=("l1",), multipliers=(1.0, 1.5, 2.0),
             isa_rounds=4, ig_steps=4, n_ig=4, ig_classes=("two",), n_scatter=20)


# The settings a section's numbers depend on: rows of one section from several runs (e.g. the
# official checkpoints first, Fashion-MNIST models later) share one table only if these agree.
SECTION_KEYS = {"b1": ("n", "eps", "pgd_steps"), "b5": ("n", "eps", "aai_steps"), "b6": ("n",),
                "b7": ("multipliers", "isa_rounds", "ig_steps"), "margin": ("n_scatter",)}


def _check_compatible(results: dict, name: str, settings: dict, out: pathlib.Path) -> None:
    """Stops (before anything is written) when ``name`` already holds rows made with other
    settings than this run's."""
    key = "margin_check" if name == "margin" else name
    before = results.get("section_settings", {}).get(name)
    if not results.get(key) or before is None:
        return
    differ = [k for k in SECTION_KEYS[name]
              if k in before and _plain(before[k]) != _plain(settings[k])]
    if differ:
        raise SystemExit(
            f"{out / 'results.json'} already has section {name} rows made with "
            + ", ".join(f"{k}={before[k]}" for k in differ) + " (this run: "
            + ", ".join(f"{k}={settings[k]}" for k in differ) + "). Pass the same values to "
            "add rows to that table, or another --out for a separate one; nothing was changed.")


def _plain(v):
    return list(v) if isinstance(v, (tuple, list)) else v


class Subject:
    """One evaluated model: a label, its (shared per architecture) Flax module and variables,
    and the data it is evaluated on."""

    def __init__(self, label, arch_key, model, variables, data):
        self.label, self.arch_key, self.model, self.variables, self.data = (
            label, arch_key, model, variables, data)

    def logits_fn(self, variables=None):
        v = self.variables if variables is None else variables
        return lambda x: self.model.apply(v, x)


def _group(label: str) -> str:
    """The table group of a row label: the MNIST architecture, or ``fmnist``."""
    return label.split("/")[0]


def load_subjects(args, cfg) -> list[Subject]:
    shared = pathlib.Path(args.shared)
    require(shared / "mnist-test")
    mnist = load_dataset("mnist_idx", "test", data_dir=str(shared / "mnist-test")).get(
        np.arange(cfg["n"]))
    subjects = []
    for arch in cfg["models"]:
        model = None
        for method in cfg["methods"]:
            path = shared / "boopathy-mnist" / f"mnist_{arch}_{method}_100.pkl"
            require(path)
            name, params = load_official_checkpoint(path)
            model = model or get_model(name)
            subjects.append(Subject(f"{arch}/{method}", name, model,
                                    {"params": jax.tree.map(jnp.asarray, params)}, mnist))
    for spec in args.fmnist:
        label, _, workdir = spec.partition("=")
        if not os.path.isdir(workdir):
            print(f"skipping Fashion-MNIST run {label}: {workdir} does not exist", flush=True)
            continue
        from jaxadv.training import load_trained_model

        model, variables, config = load_trained_model(workdir)
        data = load_dataset("fashion_mnist", "test").get(np.arange(cfg["n"]))
        subjects.append(Subject(f"fmnist/{label}", f"fmnist:{config.model.name}:{workdir}",
                                model, variables, data))
    return subjects


# ----------------------------------------------------------------------------- compiled pieces


@functools.cache
def _pgd_adv(model, num_steps):
    """Evaluation-PGD examples (the CAM overlays), jitted once per architecture."""
    return jax.jit(lambda v, xb, yb, e: pgd_boopathy_eval(
        functools.partial(model.apply, v), xb, yb, jax.random.key(0), eps=e,
        num_steps=num_steps).x_adv)


@functools.cache
def _aai_fn(arch_key, model, num_steps):
    def run(v, x, y, eps):
        map_fn = cam_map_fn(model.apply, v)
        logits_fn = lambda z: model.apply(v, z)  # noqa: E731
        x_adv = top_k_attack(map_fn, x, y, jax.random.key(1), eps=eps, k=8, step_size=0.01,
                             num_steps=num_steps).x_adv
        r = map_robustness(map_fn, logits_fn, x, y, x_adv, k=8)
        return r.kendall_tau, r.label_kept

    return jax.jit(run)


def _cam_true(subject, x, y):
    return cam_map_fn(subject.model.apply, subject.variables)(jnp.asarray(x), jnp.asarray(y))


# ----------------------------------------------------------------------------- tables


def table_b1(subjects, cfg) -> dict:
    out = {}
    for s in subjects:
        x, y = s.data
        out[s.label] = pgd_eval_accuracy(s.model.apply, s.variables, x, y, epsilons=cfg["eps"],
                                         num_steps=cfg["pgd_steps"], chunk=min(len(x), 100))
        print("B-1", s.label, json.dumps(out[s.label]), flush=True)
    return out


def table_b5(subjects, cfg) -> dict:
    out = {}
    for s in subjects:
        x, y = (jnp.asarray(a) for a in s.data)
        run = _aai_fn(s.arch_key, s.model, cfg["aai_steps"])
        row = {}
        for e in cfg["eps"]:
            if e == 0:
                continue
            tau, kept = run(s.variables, x, y, jnp.float32(e))
            row[f"{e:g}"] = {"kendall_tau": float(mean_over_kept(tau, kept)),
                             "label_kept": float(jnp.mean(kept))}
        out[s.label] = row
        print("B-5", s.label, json.dumps(row), flush=True)
    return out


def table_b6(subjects) -> dict:
    out = {}
    # the reference of a model is the Normal model of its group ("smallgap", "pool", "fmnist")
    normals = {_group(s.label): s for s in subjects if s.label.endswith("/normal")}
    for s in subjects:
        ref = normals.get(_group(s.label))
        if ref is None:
            continue
        x, y = s.data
        inter = top_k_intersection(_cam_true(s, x, y), _cam_true(ref, x, y), k=8)
        out[s.label] = float(jnp.mean(inter))
    print("B-6", json.dumps(out), flush=True)
    return out


def _maps_fn(kind, subject, cfg):
    model, v = subject.model, subject.variables
    features = lambda x: model.apply(v, x, method="features")  # noqa: E731
    if kind == "cam":
        return cam_class_maps(features, lambda a: model.apply(v, a, method="cam"))
    if kind == "cam++":
        return cam_plus_plus_class_maps(features, lambda a: model.apply(v, a, method="head"))
    if kind == "rep":
        from jaxadv.analysis.isa import representation_maps

        return representation_maps(features)
    if kind == "ig":
        smooth = model.clone(activation="softplus")
        logits = lambda x: smooth.apply(v, x)  # noqa: E731
        return attribution_class_maps(lambda x, t: integrated_gradients(
            logits, x, t, baseline="zero", rule="riemann_right", num_steps=cfg["ig_steps"]))
    raise ValueError(kind)


def table_b7(subjects, cfg) -> dict:
    out = {}
    isa_models = cfg.get("isa_models")
    for s in (s for s in subjects if s.label.endswith("/normal")
              and (not isa_models or _group(s.label) in isa_models)):
        rows = {}
        for kind in cfg["isa_maps"]:
            # rep maps have no classes: one row (the loss sums over the feature map, the report
            # averages the per-channel l1 / range)
            classes_list = (cfg["ig_classes"] if kind == "ig" else ("all",) if kind == "rep"
                            else cfg["isa_classes"])
            n = cfg["n_ig"] if kind == "ig" else cfg["n_isa"]
            x, y = (jnp.asarray(a[:n]) for a in s.data)
            maps_fn = _maps_fn(kind, s, cfg)
            for classes in classes_list:
                for norm in cfg["isa_norms"]:
                    tic = time.perf_counter()
                    res = jax.jit(functools.partial(
                        isa, s.logits_fn(), maps_fn, multipliers=cfg["multipliers"],
                        classes=classes, norm=norm, eps_rounds=cfg["isa_rounds"],
                        gamma_rounds=cfg["isa_rounds"]))(x, y, jax.random.key(2))
                    c = isa_curve(res)
                    key = f"{kind}/{classes}/{norm}"
                    rows[key] = {
                        "multipliers": [float(m) for m in c.multipliers],
                        "eps": [float(e) for e in c.eps],
                        "discrepancy": [float(d) for d in c.discrepancy],
                        "kendall": [float(t) for t in c.kendall],
                        "normalized_slope": c.normalized_slope,
                        "reference_normalized_slope": c.reference_normalized_slope,
                        "reference_mean_discrepancy": c.reference_mean_discrepancy,
                        "includes_plain": c.includes_plain,
                        "num_images": c.num_images, "of": int(n),
                        "seconds": round(time.perf_counter() - tic, 1)}
                    print("B-7", s.label, key, json.dumps(rows[key]), flush=True)
        out[s.label] = rows
    return out


def margin_check(subjects, cfg) -> dict:
    out = {}
    for s in (s for s in subjects if s.label.endswith("/normal")):
        x, y = (jnp.asarray(a[:cfg["n_scatter"]]) for a in s.data)
        logits_fn = s.logits_fn()
        # random targets t' != y, drawn once and passed to the attack (the same draw that
        # targets="random" makes inside it with this key)
        t = random_targets(jax.random.fold_in(jax.random.key(3), 1), y,
                           logits_fn(x[:1]).shape[-1])
        res = jax.jit(lambda xx, yy, tt, lf=logits_fn: min_eps_bisection(
            lf, xx, yy, jax.random.key(3), targets=tt))(x, y, t)
        md = margin_discrepancy(logits_fn, _maps_fn("cam", s, cfg), x, res.x_adv, y, t)
        ok = np.asarray(md.success)
        bound, disc = np.asarray(md.bound)[ok], np.asarray(md.discrepancy)[ok]
        out[s.label] = {"bound": bound.tolist(), "discrepancy": disc.tolist(),
                        "num_successful": int(ok.sum()), "of": int(len(ok)),
                        "violations": int(np.sum(disc < bound - 1e-5))}
        print("bound", s.label, out[s.label]["num_successful"], "successful,",
              out[s.label]["violations"], "violations", flush=True)
    return out


# ----------------------------------------------------------------------------- outputs


def write_tables(results: dict, path: pathlib.Path) -> str:
    st = results["settings"]
    per = results.get("section_settings", {})

    def n_of(section, key="n"):
        return per.get(section, st).get(key, "?")

    lines = ["# Boopathy et al. (ICML 2020) regenerated with jaxadv", "",
             f"Data: {st['data']}. Commands per section: " + "; ".join(
                 f"{k}: `{v}`" for k, v in results.get("commands", {}).items())
             + f". Seconds per section: {results.get('seconds', {})}.", ""]
    b1 = results.get("b1", {})
    if b1:
        eps = list(next(iter(b1.values())))
        lines += [f"## B-1: PGD-{st['pgd_steps']} accuracy (%) against l-inf eps "
                  f"({n_of('b1')} images)", "",
                  "| model | " + " | ".join(eps) + " |", "|---" * (len(eps) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{100 * v[e]:.1f}" for e in eps) + " |"
                  for k, v in b1.items()]
        lines.append("")
    b5 = results.get("b5", {})
    if b5:
        eps = list(next(iter(b5.values())))
        lines += [f"## B-5: AAI Kendall tau (CAM, k = 8, {st['aai_steps']} steps), over images "
                  f"whose label was kept ({n_of('b5')} images)", "",
                  "| model | " + " | ".join(eps) + " |",
                  "|---" * (len(eps) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(f"{v[e]['kendall_tau']:.3f}" for e in eps) + " |"
                  for k, v in b5.items()]
        lines.append("")
    b6 = results.get("b6", {})
    if b6:
        lines += [f"## B-6: top-8 CAM intersection with the Normal model ({n_of('b6')} clean "
                  "images)", "",
                  "| model | intersection / k |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in b6.items()]
        lines.append("")
    b7 = results.get("b7", {})
    for model, rows in b7.items():
        first = next(iter(rows.values())) if rows else {}
        mult = first.get("multipliers", [])
        ref = int(bool(rows) and all("reference_normalized_slope" in r for r in rows.values()))
        # Rows since 2026-12-07 (session 10) start at the plain attack (gamma = 0 at eps_adv)
        cols = ["plain" if i == 0 and first.get("includes_plain") else f"x{m:g}"
                for i, m in enumerate(mult)]
        ig = (f" (IG: {n_of('b7', 'ig_steps')}-point right Riemann sum on a softplus copy)"
              if any(k.startswith("ig/") for k in rows) else "")
        lines += [f"## B-7: ISA on {model}: mean normalised discrepancy at eps multiplier, and NS"
                  + ig,
                  "", "| map/classes/norm | images | " + " | ".join(cols)
                  + " | NS |" + (" mean D, NS (reference's summary) |" if ref else ""),
                  "|---" * (len(mult) + 3 + ref) + "|"]
        for k, r in rows.items():
            lines.append(f"| {k} | {r['num_images']}/{r['of']} | " + " | ".join(
                f"{d:.3f}" for d in r["discrepancy"]) + f" | {r['normalized_slope']:.3f} |"
                + (f" {r['reference_mean_discrepancy']:.3f}, {r['reference_normalized_slope']:.3f} |"
                   if ref else ""))
        if ref:
            lines += ["", "The reference's summary (`jaxadv.analysis.isa_reference_summary`): "
                      "each image over its own successful points, the sums of discrepancies and "
                      "of per-image slopes divided by the number of points, as the official "
                      "code prints them."]
        lines.append("")
    mc = results.get("margin_check", {})
    if mc:
        lines += ["## Section 1.4 bound: D_{2,1}/hw >= (f_t - f_t')(x)/2 for successful targeted "
                  "minimal-eps attacks", "", "| model | successful | violations |", "|---|---|---|"]
        lines += [f"| {k} | {v['num_successful']}/{v['of']} | {v['violations']} |"
                  for k, v in mc.items()]
        lines.append("")
    lines += claims(results)
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def claims(results: dict) -> list[str]:
    """Sentences on the abstract's claims (methods.md 1.9), computed from the numbers."""
    out = ["## Claims", ""]
    b7 = results.get("b7", {})
    for model, rows in b7.items():
        one = [r["normalized_slope"] for k, r in rows.items() if "/one/" in k]
        two = [r["normalized_slope"] for k, r in rows.items() if "/two/" in k]
        if one and two:
            out.append(f"- (1) {model}: mean NS {np.nanmean(one):.3f} for the 1-class measure vs "
                       f"{np.nanmean(two):.3f} for the 2-class measure; the paper's claim that ISA "
                       f"cannot keep the proper 2-class discrepancy small "
                       f"{'holds' if np.nanmean(two) < np.nanmean(one) else 'is not seen'} here "
                       "(a smaller slope means the discrepancy falls less as eps grows).")
    b1 = results.get("b1", {})
    for arch in ("smallgap", "pool"):
        adv = b1.get(f"{arch}/adv")
        for m in ("int", "int2"):
            r = b1.get(f"{arch}/{m}")
            if adv and r:
                big = [e for e in ("0.35", "0.4", "0.3") if e in adv]
                if big:
                    e = big[0]
                    out.append(f"- (2) {arch}: {m} {100 * r[e]:.1f}% vs adv {100 * adv[e]:.1f}% at "
                               f"eps {e}: {'beats' if r[e] > adv[e] else 'does not beat'} "
                               "adversarial training.")
    mc = results.get("margin_check", {})
    if mc:
        v = sum(x["violations"] for x in mc.values())
        out.append(f"- Section 1.4 bound: {v} violations over "
                   f"{sum(x['num_successful'] for x in mc.values())} successful attacks.")
    return out


def write_figures(results: dict, subjects, cfg, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxadv import plotting

    if results.get("b1"):
        archs = sorted({k.split("/")[0] for k in results["b1"]})
        fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4), squeeze=False)
        for ax, arch in zip(axes[0], archs, strict=True):
            rows = {k.split("/", 1)[1]: v for k, v in results["b1"].items()
                    if k.split("/")[0] == arch}
            eps = [float(e) for e in next(iter(rows.values()))]
            plotting.robustness_curves(ax, eps, {k: list(v.values()) for k, v in rows.items()},
                                       title=f"{arch}: PGD-{cfg['pgd_steps']}")
        fig.tight_layout()
        fig.savefig(out / "b1_robustness.png", dpi=100)
        plt.close(fig)
    if results.get("b5"):
        fig, ax = plt.subplots(figsize=(6, 4))
        plotting.curves(ax, [], {k: ([float(e) for e in v], [r["kendall_tau"] for r in v.values()])
                                 for k, v in results["b5"].items()},
                        xlabel="l-inf eps", ylabel="Kendall tau (CAM)", title="AAI (top-8)")
        fig.tight_layout()
        fig.savefig(out / "b5_aai_kendall.png", dpi=100)
        plt.close(fig)
    if results.get("b7"):
        models = list(results["b7"])
        fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rows = results["b7"][model]
            plotting.curves(ax, [], {k: (r["eps"], r["discrepancy"]) for k, r in rows.items()
                                     if k.endswith("/l1")},
                            xlabel="actual l-inf eps", ylabel="normalised discrepancy",
                            title=f"ISA on {model}", logy=True)
        fig.tight_layout()
        fig.savefig(out / "b7_isa.png", dpi=100)
        plt.close(fig)
    if results.get("margin_check"):
        mc = results["margin_check"]
        fig, axes = plt.subplots(1, len(mc), figsize=(5 * len(mc), 4), squeeze=False)
        for ax, (model, r) in zip(axes[0], mc.items(), strict=True):
            plotting.margin_scatter(ax, r["bound"], r["discrepancy"], title=model)
        fig.tight_layout()
        fig.savefig(out / "margin_bound.png", dpi=100)
        plt.close(fig)
    # CAM overlays: clean vs PGD-attacked (eps 0.2), true class, 3 images, one row per model;
    # the first MNIST architecture in cam_overlays.png, Fashion-MNIST in cam_overlays_fmnist.png
    for prefix, name in ((cfg["models"][0] if cfg["models"] else None, "cam_overlays.png"),
                         ("fmnist", "cam_overlays_fmnist.png")):
        shown = [s for s in subjects if _group(s.label) == prefix]
        if shown:
            _cam_overlays(shown, cfg, out / name)


def _cam_overlays(shown, cfg, path: pathlib.Path) -> None:
    """CAM of the true class on clean and PGD-attacked (eps 0.2) images, one row per model."""
    import matplotlib.pyplot as plt

    from jaxadv import plotting

    fig, axes = plt.subplots(len(shown), 6, figsize=(9, 1.6 * len(shown)), squeeze=False)
    for row, s in zip(axes, shown, strict=True):
        x, y = (jnp.asarray(a[:3]) for a in s.data)
        adv = _pgd_adv(s.model, cfg["pgd_steps"])
        x_adv = adv(s.variables, x, y, jnp.float32(0.2))
        clean, attacked = _cam_true(s, x, y), _cam_true(s, x_adv, y)
        for i in range(3):
            plotting.map_overlay(row[2 * i], x[i], clean[i],
                                 title=f"{s.label} clean" if i == 0 else "clean")
            plotting.map_overlay(row[2 * i + 1], x_adv[i], attacked[i], title="PGD eps 0.2")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings (minutes)")
    parser.add_argument("--out", default=None, help="output directory (default results/boopathy"
                        " or results/boopathy_quick)")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--fmnist", nargs="*", default=[], metavar="NAME=WORKDIR",
                        help="Fashion-MNIST training runs to evaluate too")
    parser.add_argument("--n", type=int, default=None, help="override the number of images")
    parser.add_argument("--isa_maps", nargs="+", default=None, choices=list(ISA_MAPS),
                        help="override the maps of B-7")
    parser.add_argument("--isa_models", nargs="+", default=None,
                        help="architectures whose Normal model B-7 attacks (default: all)")
    for name in ("n_isa", "n_ig", "ig_steps", "isa_rounds"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"override {name}")
    for name in ("isa_classes", "isa_norms", "ig_classes", "methods"):
        parser.add_argument(f"--{name}", nargs="+", default=None, help=f"override {name}")
    parser.add_argument("--models", nargs="*", default=None,
                        help="override models (MNIST architectures; none: only --fmnist runs)")
    parser.add_argument("--table_only", action="store_true",
                        help="only rewrite tables.md from --out/results.json")
    parser.add_argument("--sections", nargs="+", default=["b1", "b5", "b6", "b7", "margin"],
                        choices=["b1", "b5", "b6", "b7", "margin"])
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.n is not None:
        cfg["n"] = args.n
        cfg["n_isa"] = min(cfg["n_isa"], args.n)
        cfg["n_ig"] = min(cfg["n_ig"], args.n)
        cfg["n_scatter"] = min(cfg["n_scatter"], args.n)
    if args.isa_maps:
        cfg["isa_maps"] = tuple(args.isa_maps)
    for name in ("n_isa", "n_ig", "ig_steps", "isa_rounds", "isa_classes", "isa_norms",
                 "ig_classes", "isa_models", "models", "methods"):
        value = getattr(args, name)
        if value is not None:
            cfg[name] = tuple(value) if isinstance(value, list) else value
    out = pathlib.Path(args.out or ("results/boopathy_quick" if args.quick else
                                    "results/boopathy"))
    out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        results = json.loads((out / "results.json").read_text())
        write_figures(results, [], cfg, out)  # every figure but the CAM overlays
        print(write_tables(results, out / "tables.md"))
        return results
    # Sections and models accumulate: a run adds its rows to those already in --out (other
    # sections, other models, other B-7 maps), provided each section's settings agree.
    previous = out / "results.json"
    results = json.loads(previous.read_text()) if previous.exists() else {}
    sources = dict(results.get("data_sources") or (
        {"mnist": results["settings"]["data"]} if "settings" in results else {}))
    if cfg["models"]:
        sources["mnist"] = f"first {cfg['n']} MNIST test images (official checkpoints)"
    fmnist_runs = {**results.get("fmnist_runs", {}),
                   **dict(spec.partition("=")[::2] for spec in args.fmnist)}
    if fmnist_runs:
        sources["fmnist"] = (f"first {cfg['n']} Fashion-MNIST test images of jaxadv-trained "
                             "models (" + ", ".join(f"{k}={v}" for k, v in fmnist_runs.items())
                             + ")")
    settings = {
        **{k: _plain(v) for k, v in cfg.items()},
        "data": "; ".join(sources.values()),
        "command": "python -m experiments.reproduce_boopathy " + " ".join(
            sys.argv[1:] if argv is None else argv)}
    for name in args.sections:
        _check_compatible(results, name, settings, out)
    subjects = load_subjects(args, cfg)
    results["settings"], results["data_sources"] = settings, sources
    if fmnist_runs:
        results["fmnist_runs"] = fmnist_runs
    timings = dict(results.get("seconds", {}))
    steps = {"b1": lambda: table_b1(subjects, cfg), "b5": lambda: table_b5(subjects, cfg),
             "b6": lambda: table_b6(subjects), "b7": lambda: table_b7(subjects, cfg),
             "margin": lambda: margin_check(subjects, cfg)}
    for name in args.sections:
        t0 = time.perf_counter()
        key = "margin_check" if name == "margin" else name
        merged = results.get(key, {})
        for model, rows in steps[name]().items():
            if name == "b7":  # ISA rows per map (maps may be run separately)
                merged.setdefault(model, {}).update(rows)
            else:
                merged[model] = rows
        results[key] = merged
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 1)
        cmds = results.setdefault("commands", {})
        command = settings["command"]
        cmds[name] = (cmds[name] + " ; " + command if cmds.get(name)
                      and command not in cmds[name].split(" ; ") else command)
        results.setdefault("section_settings", {})[name] = dict(settings)
        report.write_json(out / "results.json", results)
    # The CAM overlays show every model of a run, so only a run of B-6 (which compares the CAMs of
    # all its models) redraws them: a later run on fewer models (one map of B-7, say) keeps them.
    write_figures(results, subjects if "b6" in args.sections else [], cfg, out)
    results["seconds"] = timings
    report.write_json(out / "results.json", results)
    print(write_tables(results, out / "tables.md"))
    return results


if __name__ == "__main__":
    from experiments.script_errors import run_script

    run_script(main, "experiments.reproduce_boopathy")
