"""Fashion-MNIST robust-training table: Normal, PGD-AT, TRADES, fast AT, Int, Int2, IG-Norm.

    python -m experiments.fashion_mnist_robust [--quick] [--methods ...]

Trains SmallGAP with each method (``experiments/configs/fashion_mnist_robust.py:METHOD``: eps 0.1,
the schedule stated there), in ``--root/METHOD`` (an existing finished run is reused, an
interrupted one resumes), then evaluates every model on the same data:

* clean accuracy on the full 10,000-image test set;
* PGD-200 accuracy (Boopathy et al.'s evaluation, methods.md 1.8: untargeted l-inf PGD on CE, 200
  steps of 0.01, no random start) at eps ``--eps`` on the first ``--n_pgd`` test images, radii
  nested (:func:`jaxadv.metrics.nested_robust_accuracy`);
* the AutoAttack-protocol ensemble (APGD-CE, APGD-T, FAB-T, Square) at the training eps on the
  first ``--n_ensemble`` test images;
* AAI (the top-k CAM attack, k 8, 200 signed steps of 0.01 from a random start) at the training
  eps on the first ``--n_aai`` test images: mean Kendall tau between clean and attacked CAMs over
  the images whose label did not change.

Writes ``--out`` (JSON, with the settings and wall times), a markdown table next to it (.md) and a
figure (.png). ``--quick`` trains 20 steps per method and evaluates on 100 images with 20-step
attacks (a smoke test of the whole pipeline, not a result), written by default to
``results/fashion_mnist_robust_quick.json`` (git-ignored) so that the committed results stay.

``--main`` is the project's main job (``make run``): PGD-AT and Int2 side by side, each trained for
300 steps (the configs' ``,short`` variant) in ``workdirs/main_job``, then PGD-50 accuracy on the
first 500 test images, the AAI Kendall tau on the first 100 (50 steps) and a table printed and
written to ``workdirs/main_job/comparison.{json,md,png}``, with an HTML report per run
(``jaxadv report``).
"""

import argparse
import functools
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import resumable
from experiments.configs import fashion_mnist_robust
from jaxadv.analysis import cam_map_fn, map_robustness, mean_over_kept, top_k_attack
from jaxadv.attacks.ensemble import evaluate_ensemble
from jaxadv.metrics import pgd_eval_accuracy
from jaxadv.training import restore_for_eval, train_and_evaluate
from jaxadv.training.loop import load_sources

DEFAULT_METHODS = ("normal", "pgd_at", "trades", "fast_at", "int", "int2", "ig_norm")
ROOT, OUT = "workdirs/fashion_mnist_robust", "results/fashion_mnist_robust_n2000.json"
QUICK_OUT = "results/fashion_mnist_robust_quick.json"
PROTOCOL = ("n_pgd", "pgd_steps", "aai_steps", "n_ensemble", "n_aai", "eps")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--root", default=ROOT)
    p.add_argument("--out", default=OUT,
                   help=f"results JSON (default: {OUT}; with --quick {QUICK_OUT})")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--table_only", action="store_true",
                   help="redraw the table and figure from --out without training or evaluating")
    p.add_argument("--main", action="store_true",
                   help="the main job: PGD-AT vs Int2, short runs, light evaluation")
    p.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2])
    p.add_argument("--n_pgd", type=int, default=2000)
    p.add_argument("--n_ensemble", type=int, default=500)
    p.add_argument("--n_aai", type=int, default=200)
    p.add_argument("--chunk", type=int, default=250)
    p.add_argument("--pgd_steps", type=int, default=200)
    p.add_argument("--aai_steps", type=int, default=200)
    return p.parse_args(argv)


def evaluate_model(state, model, test_src, args) -> dict:
    """Robust accuracies and AAI Kendall tau of one trained model (module docstring)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    logits_fn = functools.partial(_logits, model.apply, variables)
    out, timings = {}, {}
    n = min(args.n_pgd, len(test_src))
    x, y = test_src.get(np.arange(n))
    tic = time.perf_counter()
    out["pgd"] = pgd_eval_accuracy(model.apply, variables, x, y, epsilons=[0.0, *args.eps],
                                   num_steps=args.pgd_steps, chunk=args.chunk)
    timings["pgd_s"] = time.perf_counter() - tic

    eps = fashion_mnist_robust.EPS
    m = min(args.n_ensemble, len(test_src))
    if m:
        tic = time.perf_counter()
        xe, ye = test_src.get(np.arange(m))
        res = evaluate_ensemble(logits_fn, jnp.asarray(xe), jnp.asarray(ye), jax.random.key(0),
                                eps=eps, check_flags=False)
        out["ensemble"] = {f"{eps:g}": float(np.mean(np.asarray(res.robust)))}
        timings["ensemble_s"] = time.perf_counter() - tic

    k = min(args.n_aai, len(test_src))
    if k:
        tic = time.perf_counter()
        xa, ya = test_src.get(np.arange(k))
        xa, ya = jnp.asarray(xa), jnp.asarray(ya)
        map_fn = cam_map_fn(model.apply, variables)
        attack = jax.jit(lambda xb, yb: top_k_attack(
            map_fn, xb, yb, jax.random.key(1), eps=eps, k=8, step_size=0.01,
            num_steps=args.aai_steps).x_adv)
        x_adv = attack(xa, ya)
        r = map_robustness(map_fn, logits_fn, xa, ya, x_adv, k=8)
        out["aai"] = {"eps": eps, "kendall_tau": float(mean_over_kept(r.kendall_tau,
                                                                      r.label_kept)),
                      "top_k_kept": float(mean_over_kept(r.top_k_kept, r.label_kept)),
                      "label_kept": float(jnp.mean(r.label_kept))}
        timings["aai_s"] = time.perf_counter() - tic
    out["eval_seconds"] = timings
    return out


def _logits(apply_fn, variables, x):
    return apply_fn(variables, x)


def write_table(results: dict, eps: list[float], path: pathlib.Path) -> None:
    s = results["settings"]
    steps, ensemble = s["pgd_steps"], s["n_ensemble"] > 0
    counts = {r.get("num_test_examples") for r in results["methods"].values()}
    n_clean = counts.pop() if len(counts) == 1 else None  # None: differs, or an older results file
    clean = ("clean accuracy on the full test set" if n_clean in (None, 10000) else
             f"clean accuracy on the first {n_clean} test images")
    cols = ([f"clean ({n_clean if n_clean not in (None, 10000) else '10k'})"]
            + [f"PGD-{steps} {e:g}" for e in eps]
            + (["ensemble 0.1"] if ensemble else []) + ["AAI tau", "train s"])
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, r in results["methods"].items():
        row = [f"{100 * r['test_accuracy']:.2f}"]
        row += [f"{100 * r['pgd'][f'{e:g}']:.1f}" for e in eps]
        if ensemble:
            row.append(f"{100 * r['ensemble']['0.1']:.1f}" if "ensemble" in r else "-")
        row.append(f"{r['aai']['kendall_tau']:.3f}" if "aai" in r else "-")
        row.append(f"{r['train_seconds']:.0f}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    where = (f"ensemble (APGD-CE, APGD-T, FAB-T, Square) on the first {s['n_ensemble']}, "
             if ensemble else "no ensemble, ")
    notes = [
        "", f"Data: Fashion-MNIST; {clean}; PGD-{steps} (step 0.01, no "
        f"random start, radii nested) on the first {s['n_pgd']} test images, {where}AAI "
        f"({s['aai_steps']} steps, top-8, eps 0.1; Kendall tau over images whose label survived) "
        f"on the first {s['n_aai']}. Model: SmallGAP. Training: {s['training']}; 'train s' is "
        "the wall time on the machine that ran it.",
        f"Command: `{s['command']}`." + (f" {s['note']}" if s.get("note") else ""), ""]
    path.write_text("\n".join(lines + notes))


def write_figure(results: dict, eps: list[float], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxadv import plotting

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    grid = [0.0, *eps]
    plotting.robustness_curves(
        a1, grid, {m: [r['pgd'][f"{e:g}"] for e in grid] for m, r in
                   results["methods"].items()},
        title=f"SmallGAP / Fashion-MNIST: PGD-{results['settings']['pgd_steps']} "
              f"(n={results['settings']['n_pgd']})")
    plotting.bars(a2, {m: r["aai"]["kendall_tau"] for m, r in results["methods"].items()
                       if "aai" in r}, ylabel="Kendall tau (clean vs AAI CAM)",
                  title="Interpretation robustness at eps 0.1 (higher is better)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.quick and args.main:
        raise ValueError("--quick and --main are exclusive; --main is already short.")
    variant = ",quick" if args.quick else ",short" if args.main else ""
    if args.quick:
        args.n_pgd, args.n_ensemble, args.n_aai = 100, 0, 50
        args.pgd_steps, args.aai_steps = 20, 20
        if args.out == OUT:  # a smoke run does not touch the committed full-protocol results
            args.out = QUICK_OUT
    if args.main:
        if args.methods == list(DEFAULT_METHODS):
            args.methods = ["pgd_at", "int2"]
        args.n_pgd, args.n_ensemble, args.n_aai = 500, 0, 100
        args.pgd_steps, args.aai_steps = 50, 50
        if args.root == ROOT:
            args.root = "workdirs/main_job"
        if args.out == OUT:
            args.out = os.path.join(args.root, "comparison.json")
    out = pathlib.Path(args.out)
    if args.table_only:
        results = json.loads(out.read_text())
        write_table(results, results["settings"]["eps"], out.with_suffix(".md"))
        write_figure(results, results["settings"]["eps"], out.with_suffix(".png"))
        return results
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("methods", {})
    kept_settings = results.get("settings", {})
    base = fashion_mnist_robust.get_config(args.methods[0] + variant)
    ramp = fashion_mnist_robust.get_config("pgd_at" + variant).objective.kwargs  # every robust one
    results["settings"] = {
        "training": "quick: 20 steps" if args.quick else (
            f"{_length(base.train)} of batch {base.train.batch_size}, Adam "
            f"{base.optimizer.learning_rate:g} constant, eps 0.1 ramped from step "
            f"{ramp.ramp_start} to {ramp.ramp_end}, inner PGD 10 x 0.025 (see "
            "experiments/configs/fashion_mnist_robust.py)"),
        "n_pgd": args.n_pgd, "pgd_steps": args.pgd_steps, "aai_steps": args.aai_steps,
        "n_ensemble": args.n_ensemble, "n_aai": args.n_aai,
        "eps": args.eps, "command": " ".join(["python -m experiments.fashion_mnist_robust",
                                              *(argv if argv is not None else os.sys.argv[1:])]),
    }
    previous = kept_settings if results["methods"] else {}
    if previous.get("note"):
        results["settings"]["note"] = previous["note"]  # how the rows already there were made
    differ = resumable.differing(previous, results["settings"], PROTOCOL)
    if differ:
        raise SystemExit(
            f"{out} holds rows evaluated with other settings ("
            + ", ".join(f"{k}={previous[k]}" for k in differ) + "); pass another --out, or the "
            "same settings, so that one table has one protocol (nothing was changed).")
    for method in args.methods:
        config = fashion_mnist_robust.get_config(method + variant)
        workdir = os.path.join(args.root + ("_quick" if args.quick else ""), method)
        done = pathlib.Path(workdir, "results.json")
        if done.exists():
            trained = json.loads(done.read_text())
        else:
            trained = train_and_evaluate(config, workdir, verbose=False)
        state, model = restore_for_eval(config, workdir,
                                        best=bool(config.train.get("final_from_best", False)))
        _, test_src = load_sources(config)
        r = {"test_accuracy": trained["test_accuracy"],
             "num_test_examples": trained.get("num_test_examples"),
             "train_seconds": trained["train_seconds"], "train_step": trained["step"],
             **evaluate_model(state, model, test_src, args)}
        results["methods"][method] = r
        print(method, json.dumps(r), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    write_table(results, args.eps, out.with_suffix(".md"))
    write_figure(results, args.eps, out.with_suffix(".png"))
    if args.main:
        from jaxadv.report import write_report

        for method in args.methods:
            write_report(os.path.join(args.root, method))
        print(out.with_suffix(".md").read_text())
        print(f"Reports: {', '.join(os.path.join(args.root, m, 'report.html') for m in args.methods)}")
    return results


def _length(train) -> str:
    steps = train.get("num_steps", -1)
    return f"{steps} steps" if steps and steps > 0 else f"{train.num_epochs:g} epochs"


if __name__ == "__main__":
    from experiments.script_errors import run_script
    from jaxadv.devices import use_host_devices_unless_set

    use_host_devices_unless_set()  # one XLA host device per core on CPU, as `jaxadv train` does
    run_script(main, "experiments.fashion_mnist_robust")
