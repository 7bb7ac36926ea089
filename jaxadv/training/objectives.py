"""Training objectives: pure functions of (apply_fn, params, batch_stats, batch, key, *, step).

An objective returns ``(loss, (per_example_metrics, new_batch_stats))`` where ``loss`` is the scalar
that the step differentiates w.r.t. ``params``, ``per_example_metrics`` maps names to (B,) arrays
(reduced by the step with the batch mask into (sum, count) pairs), and ``new_batch_stats`` are the
updated batch-norm statistics ({} for models without batch norm).

``batch`` is ``{"image": (B, H, W, C) in [0, 1], "label": (B,), "mask": (B,) bool}``; padded examples
(mask False) contribute nothing. ``step`` is the (traced) optimiser step, for eps ramps.

Objectives are looked up by name with :func:`get_objective`, so configs stay plain data: the
adversarial ones live in :mod:`jaxadv.training.adversarial`, the interpretability-aware ones in
:mod:`jaxadv.training.interpretability`.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxadv import validation
from jaxadv.training.forward import forward, masked_mean
from jaxadv.types import Array

Objective = Callable[..., tuple[Array, tuple[dict[str, Array], Any]]]


def cross_entropy(apply_fn, params, batch_stats, batch, key, *, step=None,
                  label_smoothing: float = 0.0):
    """Standard training ("Normal" in Boopathy et al.): mean softmax cross-entropy on clean inputs.

    Returns per-example metrics ``loss`` and ``accuracy``.
    """
    del key, step
    logits, new_stats = forward(apply_fn, params, batch_stats, batch["image"], train=True)
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes, dtype=logits.dtype),
                                  label_smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
    loss = masked_mean(ce, batch["mask"])
    acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return loss, ({"loss": ce, "accuracy": acc}, new_stats)


def _registry() -> dict[str, Objective]:
    from jaxadv.training import adversarial, interpretability

    return {
        "cross_entropy": cross_entropy, "normal": cross_entropy,
        "pgd_at": adversarial.pgd_at, "adv": adversarial.pgd_at,
        "trades": adversarial.trades, "fast_at": adversarial.fast_at,
        "input_gradient": adversarial.input_gradient_regularization,
        "int": interpretability.int_, "int_one": interpretability.int_one,
        "intone": interpretability.int_one, "int_adv": interpretability.int_adv,
        "intadv": interpretability.int_adv, "int2": interpretability.int2,
        "int2_adv": interpretability.int2_adv, "int2adv": interpretability.int2_adv,
        "ig_norm": interpretability.ig_norm, "ig": interpretability.ig_norm,
        "ig_sum_norm": interpretability.ig_sum_norm, "igsum": interpretability.ig_sum_norm,
        "int_ig": interpretability.int_ig, "intig": interpretability.int_ig,
        "int_ig_adv": interpretability.int_ig_adv, "intigadv": interpretability.int_ig_adv,
    }


_OBJECTIVES: dict[str, Objective] = {}


def _objectives() -> dict[str, Objective]:
    if not _OBJECTIVES:
        _OBJECTIVES.update(_registry())
    return _OBJECTIVES


def register_objective(name: str, fn: Objective) -> None:
    """Registers a training objective under ``name`` (for configs)."""
    _objectives()[name] = fn


def available_objectives() -> list[str]:
    """Names accepted by :func:`get_objective` (aliases use the checkpoint tags of Boopathy et
    al.: adv, intone, intadv, int2adv, ig, igsum, intig, intigadv)."""
    return sorted(_objectives())


#: Hyperparameters that must be finite numbers >= 0, and counts (minimum), wherever an objective
#: takes them (checked by :func:`get_objective`, before anything is traced).
_NONNEGATIVE = ("eps", "step_size", "gamma", "beta", "weight")
_COUNTS = {"num_steps": 0, "ig_steps": 1, "ramp_start": 0, "ramp_end": 0}


def check_hyperparameters(name: str, kwargs: Mapping) -> None:
    """ValueError naming the objective and the value for a negative or non-finite eps, step size
    or weight, a bad count, or TRADES' batch sum with beta != 1. Inside a jitted step these are
    traced and would fail silently (a negative eps collapses the projection onto x - |eps|; zero
    IG steps make the loss NaN)."""
    for k in _NONNEGATIVE:
        if kwargs.get(k) is not None:
            validation.check_nonnegative(f"{name}: {k}", kwargs[k])
    for k, minimum in _COUNTS.items():
        if k in kwargs:
            validation.check_int(f"{name}: {k}", kwargs[k], minimum)
    if name == "trades" and kwargs.get("batch_sum") and kwargs.get("beta", 6.0) != 1.0:
        raise ValueError("trades: batch_sum=True reproduces Boopathy et al.'s official code, which "
                         "is beta = 1 with a batch sum (methods.md 1.10); pass beta=1.0 with it, "
                         f"or batch_sum=False for the paper's batch mean (got beta "
                         f"{kwargs.get('beta', 6.0)}).")


def get_objective(name: str, **kwargs) -> Objective:
    """The objective ``name`` with its hyperparameters bound (keyword-only; checked by
    :func:`check_hyperparameters`)."""
    objectives = _objectives()
    if name not in objectives:
        raise ValueError(f"Unknown objective {name!r}; available: {available_objectives()}.")
    check_hyperparameters(name, kwargs)
    return functools.partial(objectives[name], **kwargs) if kwargs else objectives[name]
