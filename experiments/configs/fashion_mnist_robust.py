"""Robust training of SmallGAP on Fashion-MNIST at l-inf eps 0.1: one config per method.

Boopathy et al.'s MNIST protocol (methods.md 1.7: eps 0.3, 40 PGD steps of 0.01, Adam, the eps
ramped from 0 after 2k steps to eps at 10k, gamma 0.01, 100 epochs) scaled to finish on a 2-core
CPU: eps 0.1, inner PGD of 10 steps of 0.025 from a uniform start, Adam 1e-3 constant, batch 128,
``num_epochs`` (2) epochs with the eps ramped from 0 at step 100 to 0.1 at step 400, gamma 0.01.

Launch one method (METHOD in normal, pgd_at, trades, fast_at, int, int2, ig_norm, ...):
  jaxadv train --config experiments/configs/fashion_mnist_robust.py:METHOD --workdir DIR
Add ``,quick`` (e.g. ``:int2,quick``) for a smoke run of 20 steps, or ``,short`` for the main
job's 300 steps (eps ramped from step 30 to 150). All methods plus their evaluation:
``python -m experiments.fashion_mnist_robust`` (see that script for the results); the main job
(``make run``) is ``python -m experiments.fashion_mnist_robust --main`` (PGD-AT vs Int2, short).

TRADES (``trades``) is Zhang et al. (2019)'s loss, CE + beta KL averaged over the batch with
their beta = 6: a labelled fix of Boopathy et al.'s code, which sums CE + KL over the batch (beta
1, methods.md 1.10 quirk 1); ``trades_b`` runs that form. ``int_ig`` / ``int_ig_adv`` are the
official code's Int-IG / Int-IG-Adv, 0.02 ||IG||_1 (quirk 2).

Fast AT (``fast_at``) holds out the last 1,000 training images and keeps the checkpoint with the
best PGD-10 accuracy on them (Wong et al. 2020's guard against catastrophic overfitting).
"""

import ml_collections

from experiments.configs import fashion_mnist_smallgap

EPS = 0.1
INNER = {"eps": EPS, "step_size": 0.025, "num_steps": 10, "ramp_start": 100, "ramp_end": 400}
METHODS = {
    "normal": ("cross_entropy", {}),
    "pgd_at": ("pgd_at", INNER),
    "trades": ("trades", dict(INNER, beta=6.0)),
    "trades_b": ("trades", dict(INNER, beta=1.0, batch_sum=True)),
    "fast_at": ("fast_at", {"eps": EPS, "ramp_start": 100, "ramp_end": 400}),
    "int": ("int", dict(INNER, gamma=0.01)),
    "int_one": ("int_one", dict(INNER, gamma=0.01)),
    "int_adv": ("int_adv", dict(INNER, gamma=0.01)),
    "int2": ("int2", dict(INNER, gamma=0.01)),
    "int2_adv": ("int2_adv", dict(INNER, gamma=0.01)),
    "ig_norm": ("ig_norm", dict(INNER, weight=1.0)),
    "ig_sum_norm": ("ig_sum_norm", dict(INNER, weight=1.0)),
    "int_ig": ("int_ig", INNER),
    "int_ig_adv": ("int_ig_adv", INNER),
    "input_gradient": ("input_gradient", {"weight": 1.0}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "int2").split(",") if p]
    method, variants = parts[0], parts[1:]
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {sorted(METHODS)}.")
    config = fashion_mnist_smallgap.get_config()
    name, kwargs = METHODS[method]
    config.method = method
    config.objective.name = name
    config.objective.kwargs = ml_collections.ConfigDict(kwargs)
    config.optimizer.learning_rate = 1e-3
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.train.num_epochs = 2.0
    config.train.log_every = 50
    config.train.checkpoint_every = 200
    config.eval.robust_attack = "pgd"
    config.eval.robust_kwargs = ml_collections.ConfigDict(
        {"eps": EPS, "step_size": 0.025, "num_steps": 10})
    config.eval.robust_examples = 1000
    if method == "fast_at":
        config.dataset.validation_examples = 1000
        config.train.eval_every = 100
        config.train.best_metric = "robust_accuracy"
        config.train.final_from_best = True
    for v in variants:
        if v not in ("quick", "short"):
            raise ValueError(f"Unknown config variant {v!r}; use ',quick', ',short' or nothing.")
        if v == "short":
            config.train.num_steps = 300
            config.train.log_every = 25
            config.train.checkpoint_every = 100
            config.train.eval_every = 100 if method == "fast_at" else 0
            config.eval.robust_examples = 500
            if "ramp_start" in kwargs:
                config.objective.kwargs.ramp_start, config.objective.kwargs.ramp_end = 30, 150
            continue
        config.train.num_steps = 20
        config.train.log_every = 10
        config.train.checkpoint_every = 10
        config.train.eval_every = 10 if method == "fast_at" else 0
        config.eval.num_examples = 500
        config.eval.robust_examples = 100
        if method == "fast_at":
            config.dataset.validation_examples = 64
        if "ramp_start" in kwargs:
            config.objective.kwargs.ramp_start, config.objective.kwargs.ramp_end = 0, 5
    return config
