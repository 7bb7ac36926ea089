"""Which stage of the AutoAttack-protocol ensemble breaks the official Boopathy et al. checkpoints.

    python -m experiments.ensemble_stages [--checkpoints mnist_smallgap_int2_100 ...] [--eps 0.4]
        [--n 200] [--out results/boopathy_ensemble_stages.json]

For each official MNIST checkpoint (``../shared/data/boopathy-mnist``) and radius, the
``standard`` ensemble (:func:`jaxadv.attacks.ensemble.evaluate_ensemble`: APGD-CE, APGD-T with 9
targets, FAB-T, Square with 5,000 queries; seed 0) on the first ``--n`` MNIST test images:
robust accuracy after each stage (cumulative), next to Boopathy et al.'s PGD-200 evaluation (200
steps of 0.01, no random start) on the same images, and the gradient-masking flags. It explains
the ensemble columns of ``results/boopathy_mnist.json``: where the two evaluations disagree, it
shows which attack closes the gap. Runs on one XLA host device per core.
"""

import argparse
import json
import pathlib
import time

from experiments import report
from experiments.shared_data import SHARED, require

DEFAULT = ("mnist_smallgap_adv_100", "mnist_smallgap_int_100", "mnist_smallgap_int2_100",
           "mnist_smallgap_int2adv_100")


def run(stems, *, eps_list, n, shared=SHARED, num_steps=100, num_queries=5000) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxadv.attacks.ensemble import evaluate_ensemble
    from jaxadv.data import load_dataset
    from jaxadv.metrics import pgd_eval_accuracy
    from jaxadv.models import get_model, load_official_checkpoint

    x, y = load_dataset("mnist_idx", "test", data_dir=str(shared / "mnist-test")).get(
        np.arange(n))
    out = {}
    for stem in stems:
        path = shared / "boopathy-mnist" / f"{stem}.pkl"
        require(path)
        name, params = load_official_checkpoint(path)
        model = get_model(name)
        params = jax.tree.map(jnp.asarray, params)
        variables = {"params": params}

        def logits_fn(v, model=model, variables=variables):
            return model.apply(variables, v)

        pgd = pgd_eval_accuracy(model.apply, variables, x, y, epsilons=eps_list, chunk=n,
                                num_steps=200, step_size=0.01)
        rows = {}
        for eps in eps_list:
            tic = time.perf_counter()
            r = evaluate_ensemble(logits_fn, jnp.asarray(x), jnp.asarray(y), jax.random.key(0),
                                  eps=eps, num_steps=num_steps, num_queries=num_queries)
            rows[f"{eps:g}"] = {
                "pgd200": pgd[f"{eps:g}"],
                "after": {k: float(np.mean(np.asarray(v)))
                          for k, v in r.per_attack_robust.items()},
                "robust": float(np.mean(np.asarray(r.robust))),
                "flags": {k: (v.item() if hasattr(v, "item") else v) for k, v in r.flags.items()},
                "seconds": time.perf_counter() - tic}
            print(f"{stem} eps {eps:g}: {json.dumps(rows[f'{eps:g}'])}", flush=True)
        out[stem] = rows
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=list(DEFAULT))
    p.add_argument("--eps", type=float, nargs="+", default=[0.4])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--num_steps", type=int, default=100, help="APGD / FAB iterations")
    p.add_argument("--num_queries", type=int, default=5000, help="Square's queries")
    p.add_argument("--shared", default=str(SHARED))
    p.add_argument("--out", default="results/boopathy_ensemble_stages.json")
    args = p.parse_args(argv)
    results = run(args.checkpoints, eps_list=args.eps, n=args.n,
                  shared=pathlib.Path(args.shared), num_steps=args.num_steps,
                  num_queries=args.num_queries)
    results["settings"] = {
        "command": report.command("experiments.ensemble_stages", argv),
        "data": f"first {args.n} MNIST test images",
        "ensemble": (f"standard: APGD-CE, APGD-T (9 targets), FAB-T, Square ({args.num_queries}"
                     f" queries), {args.num_steps} iterations, seed 0"),
        "pgd200": "200 steps of 0.01, no random start, radii nested (Boopathy et al.)"}
    report.write_json(args.out, results)
    return results


if __name__ == "__main__":
    from experiments.script_errors import run_script
    from jaxadv.devices import use_host_devices_unless_set

    use_host_devices_unless_set()  # one XLA host device per core on CPU, as `jaxadv train` does
    run_script(main, "experiments.ensemble_stages")
