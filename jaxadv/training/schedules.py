"""Optimisers, learning-rate schedules and the eps ramp, built from plain-data configs.

Boopathy et al.'s presets (methods.md section 1.7: MNIST Adam 1e-4 constant; CIFAR-10 Adam 1e-3,
1e-4 after 40k steps, 1e-5 after 60k; eps ramp 0 until ``ramp_start`` then linear to eps at
``ramp_end``) are the configs of ``experiments/configs/boopathy.py``, built from these functions.
"""

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import optax

from jaxadv.types import Array


def learning_rate_schedule(*, learning_rate: float, schedule: str = "constant",
                           total_steps: int = 0, boundaries: Sequence[int] = (),
                           values: Sequence[float] = (), warmup_steps: int = 0) -> optax.Schedule:
    """``constant``, ``piecewise`` (``learning_rate`` until boundaries[0], then values[i] from step
    boundaries[i]; any value >= 0, 0 included), ``cosine`` (to 0 at total_steps) or ``linear`` (to
    0), with optional linear warm-up from 0 to ``learning_rate`` over ``warmup_steps``. Boundaries
    are absolute training steps, warm-up or not."""
    if schedule == "constant":
        sched = optax.constant_schedule(learning_rate)
    elif schedule == "piecewise":
        values = [float(v) for v in values]
        bounds = [int(b) for b in boundaries]
        if len(values) != len(bounds):
            raise ValueError(f"piecewise schedule needs one value per boundary; got boundaries "
                             f"{bounds} and values {values}.")
        if bounds != sorted(bounds) or any(v < 0 for v in values):
            raise ValueError(f"piecewise schedule needs increasing boundaries and values >= 0; got "
                             f"boundaries {bounds} and values {values}.")
        # join_schedules below runs this one on step - warmup_steps: shift the boundaries so that
        # they stay absolute steps.
        sched = _piecewise(learning_rate, [b - warmup_steps for b in bounds], values)
    elif schedule == "cosine":
        sched = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
    elif schedule == "linear":
        sched = optax.linear_schedule(learning_rate, 0.0, max(total_steps - warmup_steps, 1))
    else:
        raise ValueError(f"Unknown learning-rate schedule {schedule!r}; choose constant, "
                         "piecewise, cosine or linear.")
    if warmup_steps:
        sched = optax.join_schedules(
            [optax.linear_schedule(0.0, learning_rate, warmup_steps), sched], [warmup_steps])
    return sched


def _piecewise(first: float, boundaries, values) -> optax.Schedule:
    """``first`` before boundaries[0], values[i] from step boundaries[i] (absolute values; optax's
    piecewise_constant_schedule takes ratios, which a 0 value breaks)."""
    b = jnp.asarray(boundaries, jnp.int32)
    v = jnp.asarray([first, *values], jnp.float32)

    def schedule(count):
        return v[jnp.sum(jnp.asarray(count) >= b)]

    return schedule


def make_optimizer(config: Mapping, *, total_steps: int) -> optax.GradientTransformation:
    """An optax optimiser from ``config.optimizer``-style plain data:
    name (adam, adamw, sgd, momentum), learning_rate, schedule, boundaries, values, warmup_steps,
    weight_decay, momentum, nesterov, grad_clip_norm."""
    get = config.get
    lr = learning_rate_schedule(
        learning_rate=float(get("learning_rate", 1e-3)), schedule=get("schedule", "constant"),
        total_steps=total_steps, boundaries=tuple(get("boundaries", ())),
        values=tuple(get("values", ())), warmup_steps=int(get("warmup_steps", 0)))
    name = get("name", "adam")
    wd = float(get("weight_decay", 0.0))
    if name == "adam":
        tx = optax.adam(lr)
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
    elif name == "adamw":
        tx = optax.adamw(lr, weight_decay=wd)
    elif name in ("sgd", "momentum"):
        mom = float(get("momentum", 0.9)) if name == "momentum" or get("momentum", 0.0) else None
        tx = optax.sgd(lr, momentum=mom, nesterov=bool(get("nesterov", False)))
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
    else:
        raise ValueError(f"Unknown optimizer {name!r}; choose adam, adamw, sgd or momentum.")
    clip = float(get("grad_clip_norm", 0.0))
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx


def eps_ramp(step: Array, *, eps: float, ramp_start: int, ramp_end: int) -> Array:
    """Boopathy et al.'s training-eps ramp: 0 until ``ramp_start``, linear to ``eps`` at
    ``ramp_end``, then constant. Traced ``step`` is fine (no recompilation)."""
    if ramp_end <= ramp_start:
        return jnp.where(step >= ramp_start, eps, 0.0)
    frac = jnp.clip((step - ramp_start) / (ramp_end - ramp_start), 0.0, 1.0)
    return eps * frac
