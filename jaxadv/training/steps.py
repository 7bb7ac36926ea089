"""``make_train_step`` and ``make_eval_step``: pure step functions, jitted once by the caller."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxadv.training.objectives import Objective, forward
from jaxadv.training.state import TrainState
from jaxadv.types import Array

Metrics = dict[str, tuple[Array, Array]]
"""Metric name -> (masked sum, count), summed over devices and steps; mean = sum / count."""


def reduce_metrics(per_example: dict[str, Array], mask: Array) -> Metrics:
    m = mask.astype(jnp.float32)
    return {k: (jnp.sum(v.astype(jnp.float32) * m), jnp.sum(m)) for k, v in per_example.items()}


def make_train_step(*, objective: Objective, ema_decay: float | None = None
                    ) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, Metrics]]:
    """Returns ``step(state, batch, key) -> (state, metrics)``.

    The per-step key is ``fold_in(key, state.step)``, so a resumed run draws exactly the keys of an
    uninterrupted one and no key needs checkpointing. ``metrics`` are masked (sum, count) pairs.
    Jit the returned function once (with ``donate_argnums=0``); under a mesh, shard the batch on
    its leading axis and replicate the state -- XLA reduces the gradients and metrics across devices.
    """

    def step(state: TrainState, batch: dict, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)

        def loss_fn(params):
            return objective(state.apply_fn, params, state.batch_stats, batch, step_key,
                             step=state.step)

        (loss, (per_example, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None and ema_decay is not None:
            ema = optax.incremental_update(params, ema, 1.0 - ema_decay)
        metrics = reduce_metrics(per_example, batch["mask"])
        metrics["objective"] = (loss, jnp.ones(()))  # mean over steps of the batch objective
        metrics["grad_norm"] = (optax.global_norm(grads), jnp.ones(()))
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                                  opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    return step


def make_eval_step(*, use_ema: bool = False) -> Callable[[TrainState, dict], Metrics]:
    """Returns ``eval_step(state, batch) -> metrics`` with clean loss and accuracy (masked)."""

    def eval_step(state: TrainState, batch: dict) -> Metrics:
        params = state.ema_params if (use_ema and state.ema_params is not None) else state.params
        logits, _ = forward(state.apply_fn, params, state.batch_stats, batch["image"],
                            train=False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return reduce_metrics({"loss": ce, "accuracy": acc}, batch["mask"])

    return eval_step


def accumulating(step_fn: Callable[..., tuple[TrainState, Metrics]]
                 ) -> Callable[..., tuple[TrainState, Metrics]]:
    """Wraps ``step(state, batch, key) -> (state, metrics)`` as
    ``step(state, totals, batch, key) -> (state, totals + metrics)``.

    The running sums stay inside the step's own compiled computation: jit the result once with
    ``donate_argnums=(0, 1)``, start from :func:`zero_metrics`, and fetch (``summarize``) only at
    log steps. No other computation is dispatched between steps -- which matters with several
    XLA:CPU host devices: an eager ``jnp.add`` of each step's metrics, dispatched while the next
    2-device step ran, deadlocked Fashion-MNIST training runs (2026-12-03; gdb: one device in the
    step's all-reduce, the step's launch on the other device waiting for a launch slot held by the
    addition, which waited for the step's outputs).
    """

    def step(state: TrainState, totals: Metrics, batch: dict, key: jax.Array):
        state, metrics = step_fn(state, batch, key)
        return state, jax.tree.map(jnp.add, totals, metrics)

    return step


def zero_metrics(step_fn: Callable[..., tuple[TrainState, Metrics]], *args) -> Metrics:
    """Host (numpy) zeros with the structure of the metrics ``step_fn(*args)[1]`` (traced
    abstractly; nothing runs): place them (e.g. ``sharding.replicate``) as the first ``totals``
    of :func:`accumulating`, and again after each fetch."""
    shapes = jax.eval_shape(step_fn, *args)[1]
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def add_metrics(a: Metrics | None, b: Metrics) -> Metrics:
    """Adds a step's (sum, count) pairs ``b`` to ``a`` on the host (``b`` is fetched, which waits
    for the step): for evaluation loops, which fetch every batch anyway. Training loops keep
    their sums on device with :func:`accumulating`."""
    b = jax.device_get(b)
    if a is None:
        return b
    return jax.tree.map(np.add, a, b)


def summarize(metrics: Metrics) -> dict[str, float]:
    """Fetches metrics to the host: name -> mean (this is a device sync)."""
    host = jax.device_get(metrics)
    return {k: float(s) / max(float(c), 1e-12) for k, (s, c) in host.items()}


def make_robust_eval_step(*, attack: str, attack_kwargs: dict | None = None,
                          use_ema: bool = False) -> Callable[[TrainState, dict, jax.Array],
                                                             Metrics]:
    """Returns ``robust_eval_step(state, batch, key) -> metrics`` with ``robust_accuracy``: the
    share of (unmasked) examples classified correctly on the clean input and on the example of
    ``attack`` (a name of :func:`jaxadv.attacks.get_attack`, run on the eval-mode model).

    Example: ``make_robust_eval_step(attack="pgd", attack_kwargs={"eps": 0.1, "step_size": 0.01,
    "num_steps": 20})``.
    """
    from jaxadv.attacks import get_attack
    from jaxadv.training.forward import attack_logits_fn

    attack_fn = get_attack(attack, **(attack_kwargs or {}))

    def robust_eval_step(state: TrainState, batch: dict, key: jax.Array) -> Metrics:
        params = state.ema_params if (use_ema and state.ema_params is not None) else state.params
        logits_fn = attack_logits_fn(state.apply_fn, params, state.batch_stats)
        x, y = batch["image"], batch["label"]
        res = attack_fn(logits_fn, x, y, key)
        clean_ok = jnp.argmax(logits_fn(x), -1) == y
        adv_ok = jnp.argmax(logits_fn(res.x_adv), -1) == y
        return reduce_metrics({"robust_accuracy": (clean_ok & adv_ok).astype(jnp.float32)},
                              batch["mask"])

    return robust_eval_step
