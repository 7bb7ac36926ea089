"""Per-example attack losses ``(logits (B, K), labels (B,)) -> (B,)``.

Every loss is oriented so that an attack *maximises* it; a targeted attack passes the target labels
and minimises (the attack negates it). Take ``grad`` of the sum to get every example's input
gradient in one backward pass.
"""

import jax
import jax.numpy as jnp
import optax

from jaxadv.types import Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy, (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def cw_margin(logits: Array, labels: Array, *, kappa: float = jnp.inf) -> Array:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (clipped at ``kappa`` from above), (B,).

    Positive iff the example is misclassified. Maximise untargeted; for a targeted attack with
    target t minimise ``cw_margin(logits, t)`` (pushes z_t above every other logit).
    """
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    z_y = jnp.sum(logits * one_hot, axis=-1)
    z_other = jnp.max(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
    return jnp.minimum(z_other - z_y, kappa)


def dlr(logits: Array, labels: Array) -> Array:
    """Difference of logits ratio (Croce & Hein 2020), untargeted, (B,):
    ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)``. Needs K >= 3."""
    if logits.shape[-1] < 3:
        raise ValueError(f"DLR loss needs at least 3 classes; got {logits.shape[-1]}.")
    sorted_z = jnp.sort(logits, axis=-1)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    z_y = jnp.sum(logits * one_hot, axis=-1)
    z_other = jnp.max(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
    return -(z_y - z_other) / (sorted_z[:, -1] - sorted_z[:, -3] + 1e-12)


def dlr_targeted(logits: Array, labels: Array, targets: Array) -> Array:
    """Targeted DLR (Croce & Hein 2020), to maximise, (B,):
    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``. Needs K >= 4."""
    if logits.shape[-1] < 4:
        raise ValueError(f"Targeted DLR needs at least 4 classes; got {logits.shape[-1]}.")
    sorted_z = jnp.sort(logits, axis=-1)
    z_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    z_t = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return -(z_y - z_t) / (sorted_z[:, -1] - 0.5 * (sorted_z[:, -3] + sorted_z[:, -4]) + 1e-12)


def kl_divergence(logits_adv: Array, logits_clean: Array) -> Array:
    """KL(p(x) || p(x')) per example, (B,): the TRADES inner loss (Zhang et al. 2019).

    ``logits_clean`` take the place of labels (treat them as fixed with ``stop_gradient``)."""
    log_p = jax.nn.log_softmax(logits_clean, axis=-1)
    log_q = jax.nn.log_softmax(logits_adv, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


LOSSES = {"ce": cross_entropy, "cross_entropy": cross_entropy, "cw": cw_margin,
          "margin": cw_margin, "dlr": dlr}


def get_loss(name_or_fn):
    """A loss by name ('ce', 'cw', 'dlr') or the callable itself."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in LOSSES:
        raise ValueError(f"Unknown attack loss {name_or_fn!r}; choose one of {sorted(LOSSES)} "
                         "or pass a function (logits, labels) -> (B,).")
    return LOSSES[name_or_fn]
