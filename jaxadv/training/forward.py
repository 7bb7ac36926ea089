"""Running a model inside objectives: training-mode forward passes, eval-mode attack functions, CAM.

Inner attacks run the model in eval mode (batch norm uses running statistics, so examples never
interact and no statistics are updated) on parameters wrapped in ``stop_gradient``: the adversarial
example is a constant of the outer loss (Madry et al. 2018), and its loop is never differentiated.
"""

import jax
import jax.numpy as jnp

from jaxadv.types import Array


def masked_mean(values: Array, mask: Array) -> Array:
    """Mean of ``values`` (B,) over examples where ``mask`` is True (0 if none)."""
    m = mask.astype(values.dtype)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def pair_batch(x: Array, x_adv: Array) -> Array:
    """(B, ...) and (B, ...) -> (2B, ...) with example i's clean and adversarial input in rows 2i
    and 2i + 1, for one forward pass over both (batch-norm statistics over the 2B inputs).

    Interleaved rather than concatenated: with the batch sharded over devices, each device's rows
    stay on it (a concatenation along the sharded axis makes XLA move half of every shard with
    all-to-alls, and on XLA:CPU's host devices those collectives have deadlocked a long run)."""
    return jnp.stack([x, x_adv], axis=1).reshape(2 * x.shape[0], *x.shape[1:])


def unpair(both: Array) -> tuple[Array, Array]:
    """The inverse of :func:`pair_batch` on its outputs: (2B, ...) -> ((B, ...), (B, ...))."""
    pairs = both.reshape(both.shape[0] // 2, 2, *both.shape[1:])
    return pairs[:, 0], pairs[:, 1]


def _variables(params, batch_stats) -> dict:
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    return variables


def forward(apply_fn, params, batch_stats, x: Array, *, train: bool):
    """Runs the model; in training mode with batch norm, also returns the updated statistics."""
    variables = _variables(params, batch_stats)
    if batch_stats and train:
        logits, updates = apply_fn(variables, x, train=True, mutable=["batch_stats"])
        return logits, updates["batch_stats"]
    return apply_fn(variables, x, train=train), batch_stats


def attack_logits_fn(apply_fn, params, batch_stats):
    """An eval-mode ``logits_fn`` on stop-gradient'ed parameters, for inner maximisations."""
    variables = jax.lax.stop_gradient(_variables(params, batch_stats))
    return lambda x: apply_fn(variables, x, train=False)


def logits_and_cam(apply_fn, params, batch_stats, x: Array, *, train: bool = False):
    """``(logits (B, K), CAM (B, h, w, K), new_batch_stats)`` in one pass through the features,
    differentiable w.r.t. params and x. In training mode with batch norm, the statistics update."""
    variables = _variables(params, batch_stats)
    if batch_stats and train:
        (logits, cam), updates = apply_fn(variables, x, train=True, method="logits_and_cam",
                                          mutable=["batch_stats"])
        return logits, cam, updates["batch_stats"]
    logits, cam = apply_fn(variables, x, train=train, method="logits_and_cam")
    return logits, cam, batch_stats
