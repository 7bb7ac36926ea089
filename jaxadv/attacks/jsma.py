"""JSMA, the Jacobian-based saliency map attack (Papernot et al. 2016): a targeted l0 attack that
changes the features of greatest adversarial saliency, two at a time.

Papernot, McDaniel, Jha, Fredrikson, Celik & Swami, "The limitations of deep learning in
adversarial settings", EuroS&P 2016 (methods.md 2.3 and 5.2). For target t, with the forward
derivatives ``a_i = d Z_t / d x_i`` and ``b_i = sum_{j != t} d Z_j / d x_i`` (Z the logits, or
the softmax probabilities with ``saliency_on="probs"`` as in the paper's first version):

    pairs (default): over pairs p != q of the search domain, alpha = a_p + a_q, beta = b_p + b_q;
        increasing (theta > 0): valid if alpha > 0 and beta < 0; decreasing: alpha < 0, beta > 0;
        choose the valid pair maximising alpha |beta| = -alpha beta.
    single features (``pairs=False``): the adversarial saliency map of methods.md 2.3,
        ASM_i = a_i |b_i| where a_i > 0 and b_i < 0 (mirrored when decreasing); choose its argmax.

The chosen features move by ``theta * (high - low)`` (clipped to the box) and leave the search
domain, which starts as the features not already at the bound they move towards. An example
stops when it is classified as t, when ``gamma`` (the largest fraction of features it may change)
is used up (``ceil(gamma d / 2)`` pair steps or ``ceil(gamma d)`` single steps), or when no valid
pair (feature) is left. Features are the entries of x (pixels times channels), as in cleverhans
and torchattacks. Unlike those, an example with no valid pair stops instead of changing an
arbitrary first feature.

The pair search materialises (B, d, d) scores per step: about 3 * 4 B d^2 bytes (B = 100 MNIST
images: under 1 GB); attack larger batches in pieces. Each step costs one forward pass and two
backward passes (grad Z_t and grad sum_j Z_j); the loop is a ``lax.while_loop``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxadv.attacks.apgd import is_tracer, per_example
from jaxadv.attacks.base import AttackResult
from jaxadv.attacks.cw import prepare
from jaxadv.types import Array, LogitsFn

SALIENCY_OUTPUTS = ("logits", "probs")


def _pick(a: Array, b: Array, domain: Array, increase: bool, pairs: bool
          ) -> tuple[Array, Array, Array]:
    """(p (B,), q (B,), found (B,)): the most salient valid pair (p = q for single features)."""
    d = a.shape[-1]
    if pairs:
        alpha = a[:, :, None] + a[:, None, :]
        beta = b[:, :, None] + b[:, None, :]
        ok = domain[:, :, None] & domain[:, None, :] & ~jnp.eye(d, dtype=jnp.bool_)[None]
    else:
        alpha, beta, ok = a, b, domain
    sign_ok = (alpha > 0) & (beta < 0) if increase else (alpha < 0) & (beta > 0)
    valid = ok & sign_ok
    score = jnp.where(valid, -alpha * beta, -jnp.inf).reshape(a.shape[0], -1)
    idx = jnp.argmax(score, axis=-1)
    found = jnp.any(valid.reshape(a.shape[0], -1), axis=-1)
    if pairs:
        return idx // d, idx % d, found
    return idx, idx, found


def jsma(logits_fn: LogitsFn, x: Array, y: Array, key: jax.Array, *, targets="random",
         theta: float = 1.0, gamma: float = 0.1, pairs: bool = True,
         saliency_on: str = "logits", bounds: tuple[float, float] = (0.0, 1.0)) -> AttackResult:
    """JSMA (module docstring), a targeted attack.

    Args:
      logits_fn: images (B, ...) -> logits (B, K).
      x: (B, ...) clean inputs in ``bounds``.
      y: (B,) int labels (only used to choose ``"random"`` / ``"least_likely"`` targets).
      key: typed PRNG key (``targets="random"``).
      targets: (B,) int targets, ``"random"`` (a uniformly drawn class != y) or
        ``"least_likely"``. JSMA has no untargeted form; None raises.
      theta: signed change per chosen feature, in units of ``high - low`` (static; > 0 raises
        features, < 0 lowers them; 1.0 in the paper).
      gamma: largest fraction of features an example may change, in (0, 1] (static).
      pairs: pick pairs of features (Papernot et al.'s Algorithm 3, default) or single features.
      saliency_on: "logits" (cleverhans, torchattacks) or "probs" (softmax, the paper).
      bounds: (low, high) box.

    Returns:
      AttackResult: ``x_adv`` (B, ...) the first example classified as the target (x where the
      attack failed); ``success`` (B,); ``loss`` (B,) = minus the fraction of features changed
      (-inf on failure).

    Raises:
      ValueError: no targets, theta = 0, gamma outside (0, 1], unknown ``saliency_on``, targets
        or labels out of range, shape mismatch.
    """
    if targets is None:
        raise ValueError("JSMA is a targeted attack: pass targets=(B,) labels, 'random' or "
                         "'least_likely'.")
    if is_tracer(theta) or is_tracer(gamma):
        raise ValueError("theta and gamma must be Python floats (they fix the search domain and "
                         "the number of steps).")
    if not float(theta) != 0.0 or not np.isfinite(theta):
        raise ValueError(f"theta must be finite and non-zero; got {theta}.")
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1]; got {gamma}.")
    if saliency_on not in SALIENCY_OUTPUTS:
        raise ValueError(f"Unknown saliency_on {saliency_on!r}; choose one of "
                         f"{SALIENCY_OUTPUTS}.")
    x, y, t, _ = prepare(logits_fn, x, y, key, targets, bounds)
    b, dt = x.shape[0], x.dtype
    d = int(np.prod(x.shape[1:]))
    lo, hi = bounds
    increase = theta > 0
    max_steps = int(np.ceil(d * gamma / 2.0)) if pairs else int(np.ceil(d * gamma))
    step = float(theta) * (hi - lo)
    t_hot = jax.nn.one_hot(t, jax.eval_shape(logits_fn, x).shape[-1], dtype=dt)

    def outputs(z_flat):
        out = logits_fn(z_flat.reshape(x.shape))
        return jax.nn.softmax(out, axis=-1) if saliency_on == "probs" else out

    def derivatives(z_flat):
        _, vjp = jax.vjp(outputs, z_flat)
        a = vjp(t_hot)[0]
        total = vjp(jnp.ones_like(t_hot))[0]
        return a, total - a

    def predicts_target(z_flat):
        return jnp.argmax(logits_fn(z_flat.reshape(x.shape)), axis=-1) == t

    x0 = x.reshape(b, -1)
    domain0 = x0 < hi if increase else x0 > lo

    def cond(carry):
        i, _, _, active = carry
        return (i < max_steps) & jnp.any(active)

    def body(carry):
        i, z, domain, active = carry
        a, bsum = derivatives(z)
        p, q, found = _pick(a, bsum, domain, increase, pairs)
        move = active & found
        chosen = (jax.nn.one_hot(p, d, dtype=jnp.bool_) | jax.nn.one_hot(q, d, dtype=jnp.bool_))
        chosen = chosen & move[:, None]
        z = jnp.where(chosen, jnp.clip(z + step, lo, hi), z)
        domain = domain & ~chosen
        active = move & ~predicts_target(z)
        return i + 1, z, domain, active

    init = (jnp.asarray(0, jnp.int32), x0, domain0, ~predicts_target(x0))
    _, z, _, _ = lax.while_loop(cond, body, init)
    success = predicts_target(z)
    x_adv = jnp.where(per_example(success, x), z.reshape(x.shape), x)
    changed = jnp.mean((x_adv != x).reshape(b, -1).astype(dt), axis=-1)
    return AttackResult(x_adv, success, jnp.where(success, -changed, -jnp.inf))


__all__ = ["SALIENCY_OUTPUTS", "jsma"]
