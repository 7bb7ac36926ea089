"""Boopathy et al. (ICML 2020)'s training presets (methods.md 1.6-1.8): MNIST and CIFAR-10.

One config per (dataset, model, method), with the paper's hyperparameters (methods.md 1.7):

| | MNIST (smallgap, pool) | CIFAR-10 (smallgap, boopathy_wresnet) |
|---|---|---|
| eps (l-inf) | 0.3 | 8/255 |
| inner PGD | 40 steps of 0.01, uniform start | 10 steps of 2/255, uniform start |
| batch / epochs | 50 / 100 | 128 / 200 |
| Adam learning rate | 1e-4 constant | 1e-3; 1e-4 from step 40k; 1e-5 from 60k |
| eps ramp | 0 until step 2k, linear to eps at 10k | 0 until 5k, linear to eps at 70k |
| gamma (Int family) | 0.01 | 0.01 |

and the evaluation of methods.md 1.8: PGD-200 without random start, steps of 0.01, at the training
eps (``eval.robust_*``; the whole eps grid is ``experiments.boopathy_mnist``'s job).

Methods (the checkpoint tags of Table B-1): normal, adv, trades, int, int2, intone, intadv,
int2adv, ig, igsum, intig, intigadv. Variants (comma-separated after the method):

* ``paper_compat``: the official code's quirks where the default fixes them (methods.md 1.10):
  TRADES summed over the batch with beta = 1 (quirk 1) instead of Zhang et al.'s batch mean with
  beta = 6. The other quirks hold in both modes: IG-Norm / IG-Sum-Norm weight 1 and Int-IG's
  0.02 ||IG||_1 (quirk 2; the corrected "2-class" Int-IG is not defined by the paper), the Int
  inner attack's sign steps (quirk 3), evaluation PGD without random start (quirk 4).
* ``quick``: a smoke run (20 steps, the eps ramp over steps 0-5, 200 test images).

Launch (MNIST train, CIFAR-10: tensorflow-datasets, prepared on a machine with the network):
  jaxadv train --config experiments/configs/boopathy.py:mnist,smallgap,int2 --workdir DIR
  jaxadv train --config experiments/configs/boopathy.py:cifar10,boopathy_wresnet,trades,paper_compat ...

The gamma x eps ablation of Table B-8 (``ABLATION``): one run per grid point, e.g.
  ... boopathy.py:mnist,smallgap,int2 --config.objective.kwargs.gamma=0.005 \\
      --config.objective.kwargs.eps=0.2
(and the ``adv`` method at each eps). Restricted ImageNet has no preset: jaxadv has no data source
for it (ImageNet grouped into 9 super-classes).
"""

import ml_collections

from experiments.configs import fashion_mnist_smallgap

DATASETS = {
    "mnist": {
        "models": ("smallgap", "pool"), "eps": 0.3, "step_size": 0.01, "num_steps": 40,
        "batch_size": 50, "num_epochs": 100.0, "learning_rate": 1e-4, "schedule": "constant",
        "boundaries": (), "values": (), "ramp_start": 2_000, "ramp_end": 10_000},
    "cifar10": {
        "models": ("smallgap", "boopathy_wresnet"), "eps": 8 / 255, "step_size": 2 / 255,
        "num_steps": 10, "batch_size": 128, "num_epochs": 200.0, "learning_rate": 1e-3,
        "schedule": "piecewise", "boundaries": (40_000, 60_000), "values": (1e-4, 1e-5),
        "ramp_start": 5_000, "ramp_end": 70_000},
}
GAMMA = 0.01
# Table B-1's twelve methods: tag -> (objective, its hyperparameters beyond the inner attack's)
METHODS = {
    "normal": ("cross_entropy", None), "adv": ("pgd_at", {}), "trades": ("trades", {"beta": 6.0}),
    "int": ("int", {"gamma": GAMMA}), "int2": ("int2", {"gamma": GAMMA}),
    "intone": ("int_one", {"gamma": GAMMA}), "intadv": ("int_adv", {"gamma": GAMMA}),
    "int2adv": ("int2_adv", {"gamma": GAMMA}), "ig": ("ig_norm", {"weight": 1.0}),
    "igsum": ("ig_sum_norm", {"weight": 1.0}), "intig": ("int_ig", {"weight": 0.02}),
    "intigadv": ("int_ig_adv", {"weight": 0.02}),
}
# Table B-8 (methods.md 1.7): gamma x training eps, Small network, with Adv at each eps.
ABLATION = {
    "mnist": {"gamma": (0.001, 0.005, 0.01, 0.015, 0.02), "eps": (0.2, 0.3, 0.4)},
    "cifar10": {"gamma": (0.001, 0.005, 0.01, 0.015, 0.02), "eps": (6 / 255, 8 / 255, 10 / 255)},
}
VARIANTS = ("paper_compat", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "mnist,smallgap,int2").split(",") if p]
    if len(parts) < 3:
        raise ValueError(f"Expected DATASET,MODEL,METHOD[,variant...]; got {arg!r} (e.g. "
                         "'mnist,smallgap,int2' or 'cifar10,boopathy_wresnet,trades,paper_compat').")
    dataset, model, method, variants = parts[0], parts[1], parts[2], parts[3:]
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; presets exist for {sorted(DATASETS)} "
                         "(Restricted ImageNet has no data source in jaxadv).")
    d = DATASETS[dataset]
    if model not in d["models"]:
        raise ValueError(f"Unknown model {model!r} for {dataset}; use one of {d['models']}.")
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {sorted(METHODS)}.")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"Unknown variant {v!r}; use any of {VARIANTS}.")

    config = fashion_mnist_smallgap.get_config()
    config.method = method
    config.paper_compat = "paper_compat" in variants
    config.dataset.name = dataset
    config.dataset.data_dir = ""  # tensorflow-datasets' default directory
    config.model.name = model
    config.model.kwargs = ml_collections.ConfigDict({"num_classes": 10, "activation": "relu"})

    name, extra = METHODS[method]
    kwargs = {}
    if extra is not None:
        kwargs = {"eps": d["eps"], "step_size": d["step_size"], "num_steps": d["num_steps"],
                  "ramp_start": d["ramp_start"], "ramp_end": d["ramp_end"], **extra}
        if method == "trades" and config.paper_compat:
            kwargs.update(beta=1.0, batch_sum=True)
    config.objective.name = name
    config.objective.kwargs = ml_collections.ConfigDict(kwargs)

    config.optimizer.name = "adam"
    config.optimizer.learning_rate = d["learning_rate"]
    config.optimizer.schedule = d["schedule"]
    config.optimizer.boundaries = d["boundaries"]
    config.optimizer.values = d["values"]
    config.optimizer.warmup_steps = 0
    config.train.batch_size = d["batch_size"]
    config.train.num_epochs = d["num_epochs"]
    config.train.checkpoint_every = 2_000
    config.eval.robust_attack = "pgd"
    config.eval.robust_kwargs = ml_collections.ConfigDict(
        {"eps": d["eps"], "step_size": 0.01, "num_steps": 200, "random_start": False})
    config.eval.robust_examples = 200

    if "quick" in variants:
        config.train.num_steps = 20
        config.train.log_every = 10
        config.train.checkpoint_every = 10
        config.eval.num_examples = 200
        config.eval.robust_examples = 20
        config.eval.robust_kwargs.num_steps = 5
        if "ramp_start" in kwargs:
            config.objective.kwargs.ramp_start, config.objective.kwargs.ramp_end = 0, 5
    return config
