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
attacks (a smoke test of the whole pipeline, not a result).
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

from experiments.configs import fashion_mnist_robust
from jaxadv.analysis import cam_map_fn, map_robustness, mean_over_kept, top_k_attack
from jaxadv.attacks.ensemble import evaluate_ensemble
from jaxadv.attacks.gradient import pgd_boopathy_eval
from jaxadv.metrics import nested_robust_accuracy
from jaxadv.training import restore_for_eval, train_and_evaluate
from jaxadv.training.loop import load_sources

DEFAULT_METHODS = ("normal", "pgd_at", "trades", "fast_at", "int", "int2", "ig_norm")


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--root", default="workdirs/fashion_mnist_robust")
    p.add_argument("--out", default="results/fashion_mnist_robust.json")
    p.add_argument("--quick", action="store_true")
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
    success = jax.jit(lambda xb, yb, e: pgd_boopathy_eval(logits_fn, xb, yb, jax.random.key(0),
                                                          eps=e, num_steps=args.pgd_steps).success)
    predict = jax.jit(lambda xb: jnp.argmax(logits_fn(xb), -1))
    chunk = min(args.chunk, n)
    pgd = nested_robust_accuracy(success, predict, x, y, epsilons=[0.0, *args.eps], chunk=chunk)
    out["pgd200"] = {f"{e:g}": v for e, v in pgd.items()}  # named for the default 200 steps
    timings["pgd200_s"] = time.perf_counter() - tic

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
    cols = ["clean (10k)"] + [f"PGD-200 {e:g}" for e in eps] + ["ensemble 0.1", "AAI tau",
                                                                  "train s"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method, r in results["methods"].items():
        row = [f"{100 * r['test_accuracy']:.2f}"]
        row += [f"{100 * r['pgd200'][f'{e:g}']:.1f}" for e in eps]
        row.append(f"{100 * r['ensemble']['0.1']:.1f}" if "ensemble" in r else "-")
        row.append(f"{r['aai']['kendall_tau']:.3f}" if "aai" in r else "-")
        row.append(f"{r['train_seconds']:.0f}")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    s = results["settings"]
    notes = [
        "", f"Data: Fashion-MNIST; clean accuracy on the full test set; PGD-200 on the first "
        f"{s['n_pgd']} test images, ensemble on the first {s['n_ensemble']}, AAI on the first "
        f"{s['n_aai']}. Model: SmallGAP. Training: {s['training']}.",
        f"Command: `{s['command']}`.", ""]
    path.write_text("\n".join(lines + notes))


def write_figure(results: dict, eps: list[float], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxadv import plotting

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    grid = [0.0, *eps]
    plotting.robustness_curves(
        a1, grid, {m: [r["pgd200"][f"{e:g}"] for e in grid] for m, r in
                   results["methods"].items()},
        title=f"SmallGAP / Fashion-MNIST: PGD-200 (n={results['settings']['n_pgd']})")
    plotting.bars(a2, {m: r["aai"]["kendall_tau"] for m, r in results["methods"].items()
                       if "aai" in r}, ylabel="Kendall tau (clean vs AAI CAM)",
                  title="Interpretation robustness at eps 0.1 (higher is better)", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.quick:
        args.n_pgd, args.n_ensemble, args.n_aai = 100, 0, 50
        args.pgd_steps, args.aai_steps = 20, 20
    out = pathlib.Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results.setdefault("methods", {})
    base = fashion_mnist_robust.get_config(args.methods[0] + (",quick" if args.quick else ""))
    results["settings"] = {
        "training": (f"{base.train.num_epochs:g} epochs of batch {base.train.batch_size}, Adam "
                     f"{base.optimizer.learning_rate:g} constant, eps 0.1 ramped from step "
                     "100 to 400, inner PGD 10 x 0.025 (see experiments/configs/"
                     "fashion_mnist_robust.py)") if not args.quick else "quick: 20 steps",
        "n_pgd": args.n_pgd, "pgd_steps": args.pgd_steps, "aai_steps": args.aai_steps,
        "n_ensemble": args.n_ensemble, "n_aai": args.n_aai,
        "eps": args.eps, "command": "python -m experiments.fashion_mnist_robust "
        + " ".join(argv if argv is not None else os.sys.argv[1:]),
    }
    for method in args.methods:
        config = fashion_mnist_robust.get_config(method + (",quick" if args.quick else ""))
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
             "train_seconds": trained["train_seconds"], "train_step": trained["step"],
             **evaluate_model(state, model, test_src, args)}
        results["methods"][method] = r
        print(method, json.dumps(r), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
    write_table(results, args.eps, out.with_suffix(".md"))
    write_figure(results, args.eps, out.with_suffix(".png"))
    return results


if __name__ == "__main__":
    main()
