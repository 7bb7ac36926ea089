"""Robust accuracy of the official Boopathy et al. (ICML 2020) MNIST checkpoints.

Regenerates ``results/boopathy_mnist.json``:

    python -m experiments.boopathy_mnist --out results/boopathy_mnist.json

Data: the first ``--n`` images of the MNIST test set (``../shared/data/mnist-test``; the official
code used 200, the default here is 1,000). Models: the 20 official checkpoints in
``../shared/data/boopathy-mnist`` (SmallGAP and PoolGAP x normal, adv, trades, int, int2, intone,
intadv, int2adv, ig, igsum). Attack: the paper's evaluation PGD (methods.md 1.8): untargeted l-inf
PGD on cross-entropy, 200 steps of 0.01, no random start, at each eps of ``--eps``.

Accuracy at eps is the share of the n points that are classified correctly on the clean input and
on the attack's example at every radius up to eps (eps are run in ascending order and a point broken
at a smaller radius stays broken: its example lies in every larger ball), so each radius attacks
only the points still robust. Optionally (``--ensemble_eps``) the AutoAttack-protocol ensemble
(APGD-CE, APGD-T, FAB-T, Square; ``jaxadv.attacks.ensemble``) on the first ``--ensemble_n`` points,
in blocks of ``--ensemble_block`` images (the block starting at image i draws its randomness from
``fold_in(key(0), i)``, the first from ``key(0)``).

The JSON maps each checkpoint file stem to {"<eps>": accuracy}, plus "ensemble" {"<eps>":
accuracy} and "ensemble_n" {"<eps>": images} where run, and a "settings" record. The file is
written after every checkpoint and every ensemble block, and a later run skips what is there:
an interrupted run continues where it stopped, and a larger ``--ensemble_n`` extends the
ensemble columns block by block (over several sessions if need be) instead of starting again.
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

from experiments import report, resumable
from experiments.shared_data import SHARED, require
from jaxadv.attacks.ensemble import evaluate_ensemble
from jaxadv.data import load_dataset
from jaxadv.metrics import pgd_eval_accuracy
from jaxadv.models import get_model, load_official_checkpoint

ENSEMBLE = ("AutoAttack-protocol standard ensemble (APGD-CE, APGD-T 9 targets, FAB-T, Square 5000 "
            "queries)")  # on the first ensemble_n images of each row
METHODS = ("normal", "adv", "trades", "int", "int2", "intone", "intadv", "int2adv", "ig", "igsum")


@functools.cache
def _model(name: str):
    """One Flax module per architecture, so the attack compiles once for all its checkpoints."""
    return get_model(name)


def pgd_accuracies(name, params, x, y, *, epsilons, chunk, num_steps, step_size):
    """{"<eps>": accuracy} of the evaluation PGD, radii nested (see the module docstring); the
    step loop is a lax.fori_loop (as fast as unrolled for these models on CPU, and quick to compile)."""
    return pgd_eval_accuracy(_model(name).apply, {"params": params}, x, y, epsilons=epsilons,
                             chunk=chunk, num_steps=num_steps, step_size=step_size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/boopathy_mnist.json")
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, nargs="+",
                        default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.35, 0.4])
    parser.add_argument("--num_steps", type=int, default=200)
    parser.add_argument("--step_size", type=float, default=0.01)
    parser.add_argument("--chunk", type=int, default=250)
    parser.add_argument("--models", nargs="+", default=["smallgap", "pool"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--ensemble_eps", type=float, nargs="*", default=[0.3, 0.4])
    parser.add_argument("--ensemble_n", type=int, default=1000)
    parser.add_argument("--ensemble_block", type=int, default=200,
                        help="images per ensemble call (the file is saved after each)")
    parser.add_argument("--table_only", action="store_true",
                        help="only rewrite the markdown table from --out")
    args = parser.parse_args(argv)
    if args.table_only:
        out_path = pathlib.Path(args.out)
        print(write_table(json.loads(out_path.read_text()), out_path.with_suffix(".md")))
        return

    shared = pathlib.Path(args.shared)
    require(shared / "mnist-test")
    images, labels = load_dataset("mnist_idx", "test", data_dir=str(shared / "mnist-test")).get(
        np.arange(max(args.n, args.ensemble_n if args.ensemble_eps else 0)))
    out_path = pathlib.Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    old = results.get("settings", {})
    settings = {
        "data": f"first {args.n} MNIST test images", "attack": (
            f"PGD l-inf on CE, {args.num_steps} steps of {args.step_size}, no random start "
            "(Boopathy et al. evaluation); eps ascending, a point broken at a smaller eps stays "
            "broken"),
        "ensemble": (ENSEMBLE if args.ensemble_eps else None),
    }
    not_run = "not run (--ensemble_eps empty)"
    diff = resumable.differing({k: v for k, v in old.items() if v != not_run},  # one protocol
                               {k: v for k, v in settings.items() if v}, settings)
    if diff:
        raise SystemExit(f"{out_path} holds results for " + ", ".join(
            f"{k} = {old[k]!r}, not {settings[k]!r}" for k in diff)
            + "; pass another --out (nothing was changed).")
    command = "python -m experiments.boopathy_mnist " + " ".join(
        sys.argv[1:] if argv is None else argv)
    commands = old.get("commands", [old["command"]] if "command" in old else [])
    results["settings"] = {
        "data": settings["data"], "attack": settings["attack"],
        "ensemble": settings["ensemble"] or old.get("ensemble", not_run),
        "commands": commands + [command] * (command not in commands),
    }
    if old.get("note"):
        results["settings"]["note"] = old["note"]  # how the rows already there were made
    for arch in args.models:
        for method in args.methods:
            stem = f"mnist_{arch}_{method}_100"
            path = shared / "boopathy-mnist" / f"{stem}.pkl"
            require(path)
            done = results.get(stem, {})
            need_ens = [e for e in args.ensemble_eps
                        if done.get("ensemble_n", {}).get(f"{e:g}", 0) < args.ensemble_n]
            if all(f"{e:g}" in done for e in args.eps) and not need_ens:
                continue
            name, params = load_official_checkpoint(path)
            model = _model(name)
            params = jax.tree.map(jnp.asarray, params)
            tic = time.perf_counter()
            if not all(f"{e:g}" in done for e in args.eps):
                done.update(pgd_accuracies(
                    name, params, images[:args.n], labels[:args.n], epsilons=args.eps, chunk=args.chunk,
                    num_steps=args.num_steps, step_size=args.step_size))
                results[stem] = done
                _save(results, out_path)
            ens, ens_n = done.setdefault("ensemble", {}), done.setdefault("ensemble_n", {})
            logits_fn = functools.partial(_apply, model, params)
            for eps in need_ens:
                k = f"{eps:g}"
                have = ens_n.get(k, 0)
                robust = round(ens.get(k, 0.0) * have)
                while have < args.ensemble_n:
                    stop = min(args.ensemble_n, have + args.ensemble_block)
                    key = jax.random.key(0) if have == 0 else jax.random.fold_in(
                        jax.random.key(0), have)
                    res = evaluate_ensemble(logits_fn, jnp.asarray(images[have:stop]),
                                            jnp.asarray(labels[have:stop]), key, eps=eps,
                                            check_flags=False)
                    robust += int(np.sum(np.asarray(res.robust)))
                    have = stop
                    ens[k], ens_n[k] = robust / have, have
                    results[stem] = done
                    _save(results, out_path)
                    print(f"{stem}: ensemble at {k} on {have} images: {100 * ens[k]:.1f} % "
                          f"({time.perf_counter() - tic:.0f} s)", flush=True)
            if not ens:
                del done["ensemble"], done["ensemble_n"]
            results[stem] = done
            _save(results, out_path)
            print(f"{stem}: {json.dumps(done)} ({time.perf_counter() - tic:.0f} s)", flush=True)
    print(write_table(results, out_path.with_suffix(".md")))


def _save(results: dict, out_path: pathlib.Path) -> None:
    """Atomic write: an interrupted run never leaves half a file."""
    report.write_json(out_path, results, sort_keys=True)


def write_table(results: dict, path: pathlib.Path) -> str:
    """Markdown table of ``results`` (rows: checkpoints, columns: eps) and a sentence on the
    paper's claim that Int and Int2 beat adversarial training at large eps: with PGD-200 at 0.35
    and 0.4, and with the ensemble at its radii where the file has them."""
    stems = sorted(k for k in results if k.startswith("mnist_"))
    eps = sorted({e for k in stems for e in results[k] if e not in ("ensemble", "ensemble_n")},
                 key=float)
    ens = sorted({e for k in stems for e in results[k].get("ensemble", {})}, key=float)
    lines = ["| checkpoint | " + " | ".join([f"eps {e}" for e in eps]
                                           + [f"ensemble {e}" for e in ens]) + " |",
             "|---" * (len(eps) + len(ens) + 1) + "|"]
    for k in stems:
        r, e_r = results[k], results[k].get("ensemble", {})
        cells = ([f"{100 * r[e]:.0f}" if e in r else "-" for e in eps]
                 + [f"{100 * e_r[e]:.0f}" if e in e_r else "-" for e in ens])
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    claims = []
    for arch in ("smallgap", "pool"):
        adv = results.get(f"mnist_{arch}_adv_100", {})
        for m in ("int", "int2"):
            r = results.get(f"mnist_{arch}_{m}_100", {})
            for e in ("0.35", "0.4"):
                if e in adv and e in r:
                    claims.append((arch, m, e, r[e] > adv[e], r[e], adv[e]))
    if claims:
        held = sum(c[3] for c in claims)
        lines += ["", f"Int/Int2 beat adversarial training (adv) in {held} of {len(claims)} "
                  "comparisons at eps 0.35 and 0.4: " + "; ".join(
                      f"{a} {m} at {e}: {100 * r:.0f} vs {100 * v:.0f}"
                      for a, m, e, _, r, v in claims) + "."]
    ens_claims = []
    for arch in ("smallgap", "pool"):
        adv = results.get(f"mnist_{arch}_adv_100", {}).get("ensemble", {})
        for m in ("int", "int2"):
            r = results.get(f"mnist_{arch}_{m}_100", {}).get("ensemble", {})
            ens_claims += [(arch, m, e, r[e] > adv[e], r[e], adv[e]) for e in ens
                           if e in adv and e in r]
    if ens_claims:
        held = sum(c[3] for c in ens_claims)
        lines += ["", f"Under the ensemble, Int/Int2 beat adversarial training in {held} of "
                  f"{len(ens_claims)} comparisons: " + "; ".join(
                      f"{a} {m} at {e}: {100 * r:.1f} vs {100 * v:.1f}"
                      for a, m, e, _, r, v in ens_claims) + "."]
    s = results.get("settings", {})
    counts = {e: sorted({results[k]["ensemble_n"][e] for k in stems
                         if e in results[k].get("ensemble_n", {})}) for e in ens}
    counts = {e: c for e, c in counts.items() if c}

    def first(c):
        return (f"the first {c[0]} images" if len(c) == 1 else
                f"the first {c[0]} to {c[-1]} images (ensemble_n per row in the JSON)")

    if not counts:
        on = ""
    elif len({tuple(c) for c in counts.values()}) == 1:
        on = "; on " + first(next(iter(counts.values())))
    else:
        on = "; " + "; ".join(f"eps {e} on {first(c)}" for e, c in counts.items())
    lines += ["", f"Accuracy (%) on the {s.get('data', '?')}; {s.get('attack', '')}."
              + (f" Ensemble columns: {s['ensemble']}{on}." if ens and "ensemble" in s else ""),
              "Commands: " + "; ".join(f"`{c}`" for c in s.get("commands", [s.get("command")])
                                       if c) + "." + (f" {s['note']}" if s.get("note") else "")]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _apply(model, params, x):
    return model.apply({"params": params}, x)


if __name__ == "__main__":
    from experiments.script_errors import run_script
    from jaxadv.devices import use_host_devices_unless_set

    use_host_devices_unless_set()  # one XLA host device per core on CPU, as `jaxadv train` does
    run_script(main, "experiments.boopathy_mnist")
