"""What every jaxadv attack returns, and the best-so-far bookkeeping they share.

Attacks are pure functions ``attack(logits_fn, x, y, key, *, ...) -> AttackResult`` usable under
jit, vmap and grad. ``x`` is (B, ...) in ``bounds`` (default [0, 1]); ``y`` (B,) int labels (for a
targeted attack, pass ``targets=`` as a keyword: (B,) target labels).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxadv.types import Array


class AttackResult(NamedTuple):
    """Result of an attack on a batch.

    Attributes:
      x_adv: (B, ...) the strongest example found per input, inside the threat model and bounds.
      success: (B,) bool: the attack succeeded on this input at some step (misclassified, or
        classified as the target for a targeted attack). An input broken at any step stays True and
        ``x_adv`` is then an example that breaks it.
      loss: (B,) the attack objective at ``x_adv`` (higher = stronger).
    """

    x_adv: Array
    success: Array
    loss: Array


def is_success(logits: Array, y: Array, targets: Array | None = None) -> Array:
    """(B,) bool: misclassified (untargeted) or predicted as ``targets`` (targeted)."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == targets if targets is not None else pred != y


def update_best(best: AttackResult, x_new: Array, success_new: Array, loss_new: Array
                ) -> AttackResult:
    """Keeps, per example, a successful example over an unsuccessful one, then the higher loss.

    Once an example has succeeded it is only replaced by another successful example with a higher
    loss, so success never flips back to False.
    """
    better = (success_new & ~best.success) | ((success_new == best.success) & (loss_new > best.loss))
    pick = better.reshape(better.shape + (1,) * (x_new.ndim - 1))
    return AttackResult(
        x_adv=jnp.where(pick, x_new, best.x_adv),
        success=best.success | success_new,
        loss=jnp.where(better, loss_new, best.loss),
    )


def update_best_at_step(best: AttackResult, step, x_new: Array, success_new: Array,
                        loss_new: Array, *, track_start: bool) -> AttackResult:
    """:func:`update_best` with the iterate of loop step ``step`` (traced); with
    ``track_start=False`` step 0's iterate, the start, is left out (FGSM's stepped point)."""
    updated = update_best(best, x_new, success_new, loss_new)
    if track_start:
        return updated
    return jax.tree.map(lambda new, old: jnp.where(step > 0, new, old), updated, best)
