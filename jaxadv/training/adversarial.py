"""Adversarial-training objectives: PGD-AT, TRADES, fast AT, input-gradient regularisation.

Each is a pure objective ``(apply_fn, params, batch_stats, batch, key, *, step, ...) -> (loss,
(per_example_metrics, new_batch_stats))`` (see :mod:`jaxadv.training.objectives`). The training eps
follows Boopathy et al.'s ramp (methods.md 1.7): 0 until ``ramp_start``, linear to ``eps`` at
``ramp_end`` (set both to 0 for a constant eps). Inner attacks see the model in eval mode with
stop-gradient'ed parameters, and the adversarial example is ``stop_gradient``'ed.

The inner attacks return the best iterate of the run (for cross-entropy, a misclassified one
first, then the highest loss; :func:`jaxadv.attacks.pgd_objective`), not the last one that
Boopathy et al.'s code uses (methods.md 1.6): a labelled change, the same for every objective here
and in :mod:`jaxadv.training.interpretability`.
"""

import jax
import jax.numpy as jnp
import optax

from jaxadv.attacks import gradient
from jaxadv.attacks.losses import kl_divergence
from jaxadv.training.forward import attack_logits_fn, forward, masked_mean, pair_batch, unpair
from jaxadv.training.schedules import eps_ramp


def current_eps(step, *, eps: float, ramp_start: int, ramp_end: int):
    """The training eps at ``step`` (a traced scalar)."""
    if step is None:
        return jnp.asarray(eps, jnp.float32)
    return eps_ramp(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)


def _accuracy(logits, labels):
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def pgd_example(apply_fn, params, batch_stats, batch, key, *, eps, step_size, num_steps,
                random_start=True, loss_fn="ce"):
    """The stop-gradient'ed PGD example of the inner maximisation (Madry et al. 2018)."""
    logits_fn = attack_logits_fn(apply_fn, params, batch_stats)
    res = gradient.pgd(logits_fn, batch["image"], batch["label"], key, eps=eps,
                       step_size=step_size, num_steps=num_steps, random_start=random_start,
                       loss_fn=loss_fn)
    return jax.lax.stop_gradient(res.x_adv)


def pgd_at(apply_fn, params, batch_stats, batch, key, *, step=None, eps: float = 0.3,
           step_size: float = 0.01, num_steps: int = 40, ramp_start: int = 0, ramp_end: int = 0,
           random_start: bool = True):
    """Madry et al. (2018) PGD adversarial training: ``CE(f(x'), y)``, x' = PGD_CE(x).

    Defaults are Boopathy et al.'s MNIST settings (eps 0.3, 40 steps of 0.01, random start).
    """
    e = current_eps(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)
    x_adv = pgd_example(apply_fn, params, batch_stats, batch, key, eps=e, step_size=step_size,
                        num_steps=num_steps, random_start=random_start)
    logits, new_stats = forward(apply_fn, params, batch_stats, x_adv, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    metrics = {"loss": ce, "adv_accuracy": _accuracy(logits, batch["label"]),
               "eps": jnp.broadcast_to(e, ce.shape)}
    return masked_mean(ce, batch["mask"]), (metrics, new_stats)


def trades(apply_fn, params, batch_stats, batch, key, *, step=None, eps: float = 0.3,
           step_size: float = 0.01, num_steps: int = 40, beta: float = 6.0,
           ramp_start: int = 0, ramp_end: int = 0, batch_sum: bool = False):
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(p(x) || p(x'))``, x' maximising the KL.

    ``batch_sum=True`` reproduces Boopathy et al.'s official code (methods.md 1.6, 1.10 quirk 1):
    ``sum_i [CE_i(x) + KL_i]``, i.e. beta = 1 and a batch *sum*; pass ``beta=1`` with it. The
    default is the paper's batch mean with a configurable beta. The inner attack is PGD on the KL
    from a uniform start in the eps-box, as in Boopathy et al.'s code (methods.md 1.6).
    """
    e = current_eps(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)
    x = batch["image"]
    logits_fn = attack_logits_fn(apply_fn, params, batch_stats)
    res = gradient.trades_kl_pgd(logits_fn, x, batch["label"], key, eps=e, step_size=step_size,
                                 num_steps=num_steps)
    x_adv = jax.lax.stop_gradient(res.x_adv)
    both, new_stats = forward(apply_fn, params, batch_stats, pair_batch(x, x_adv), train=True)
    logits, logits_adv = unpair(both)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    kl = kl_divergence(logits_adv, logits)
    per_example = ce + beta * kl
    m = batch["mask"].astype(per_example.dtype)
    loss = jnp.sum(per_example * m) if batch_sum else masked_mean(per_example, batch["mask"])
    metrics = {"loss": per_example, "ce": ce, "kl": kl, "accuracy": _accuracy(logits, batch["label"]),
               "adv_accuracy": _accuracy(logits_adv, batch["label"]),
               "eps": jnp.broadcast_to(e, ce.shape)}
    return loss, (metrics, new_stats)


def fast_at(apply_fn, params, batch_stats, batch, key, *, step=None, eps: float = 0.3,
            step_size: float | None = None, ramp_start: int = 0, ramp_end: int = 0):
    """Fast adversarial training (Wong et al. 2020): FGSM from a uniform random start in the
    eps-box, step ``step_size`` (default 1.25 eps), projected; loss ``CE(f(x'), y)``.

    Its guard against catastrophic overfitting (a PGD check on a held-out batch that keeps the best
    checkpoint) is the loop's ``eval.robust_check`` setting (see :mod:`jaxadv.training.loop`).
    """
    e = current_eps(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)
    alpha = 1.25 * e if step_size is None else step_size
    logits_fn = attack_logits_fn(apply_fn, params, batch_stats)
    res = gradient.fgsm_rs(logits_fn, batch["image"], batch["label"], key, eps=e, step_size=alpha)
    x_adv = jax.lax.stop_gradient(res.x_adv)
    logits, new_stats = forward(apply_fn, params, batch_stats, x_adv, train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    metrics = {"loss": ce, "adv_accuracy": _accuracy(logits, batch["label"]),
               "eps": jnp.broadcast_to(e, ce.shape)}
    return masked_mean(ce, batch["mask"]), (metrics, new_stats)


def input_gradient_regularization(apply_fn, params, batch_stats, batch, key, *, step=None,
                                  weight: float = 1.0):
    """Input-gradient regularisation (Ross & Doshi-Velez 2018, "double backpropagation"):
    ``CE(f(x), y) + weight * ||grad_x CE(f(x), y)||_2^2`` per example.

    The penalty is differentiated w.r.t. the parameters (a second-order term), so the model needs
    a smooth activation for a useful signal (``activation='softplus'``); ReLU still works.
    """
    del key, step
    x, y = batch["image"], batch["label"]

    def ce_sum(xx, ps):
        logits, stats = forward(apply_fn, ps, batch_stats, xx, train=True)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(ce), (ce, logits, stats)

    grads_x, (ce, logits, new_stats) = jax.grad(ce_sum, has_aux=True)(x, params)
    penalty = jnp.sum(jnp.square(grads_x).reshape(x.shape[0], -1), axis=-1)
    per_example = ce + weight * penalty
    metrics = {"loss": per_example, "ce": ce, "grad_penalty": penalty,
               "accuracy": _accuracy(logits, y)}
    return masked_mean(per_example, batch["mask"]), (metrics, new_stats)
