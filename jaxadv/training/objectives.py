"""Training objectives: pure functions of (apply_fn, params, batch_stats, batch, key).

An objective returns ``(loss, (per_example_metrics, new_batch_stats))`` where ``loss`` is the scalar
that the step differentiates w.r.t. ``params``, ``per_example_metrics`` maps names to (B,) arrays
(reduced by the step with the batch mask into (sum, count) pairs), and ``new_batch_stats`` are the
updated batch-norm statistics ({} for models without batch norm).

``batch`` is ``{"image": (B, H, W, C) in [0, 1], "label": (B,), "mask": (B,) bool}``; padded examples
(mask False) contribute nothing. Objectives are looked up by name with :func:`get_objective`, so
configs stay plain data; later objectives (adversarial, interpretability-aware) register here too.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxadv.types import Array

Objective = Callable[..., tuple[Array, tuple[dict[str, Array], Any]]]


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` (B,) over examples where ``mask`` is True (0 if none)."""
    m = mask.astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def forward(apply_fn, params, batch_stats, x: Array, *, train: bool) -> tuple[Array, Any]:
    """Runs the model; in training mode with batch norm, also returns the updated statistics."""
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
        if train:
            logits, updates = apply_fn(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
    return apply_fn(variables, x, train=train), batch_stats


def cross_entropy(apply_fn, params, batch_stats, batch, key, *, label_smoothing: float = 0.0):
    """Standard training ("Normal" in Boopathy et al.): mean softmax cross-entropy on clean inputs.

    Returns per-example metrics ``loss`` and ``accuracy``.
    """
    del key
    logits, new_stats = forward(apply_fn, params, batch_stats, batch["image"], train=True)
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes, dtype=logits.dtype),
                                  label_smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
    loss = masked_mean(ce, batch["mask"])
    acc = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return loss, ({"loss": ce, "accuracy": acc}, new_stats)


_OBJECTIVES: dict[str, Objective] = {"cross_entropy": cross_entropy, "normal": cross_entropy}


def register_objective(name: str, fn: Objective) -> None:
    """Registers a training objective under ``name`` (for configs)."""
    _OBJECTIVES[name] = fn


def available_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str, **kwargs) -> Objective:
    """The objective ``name`` with its hyperparameters bound (keyword-only)."""
    if name not in _OBJECTIVES:
        raise ValueError(f"Unknown objective {name!r}; available: {available_objectives()}.")
    return functools.partial(_OBJECTIVES[name], **kwargs) if kwargs else _OBJECTIVES[name]
