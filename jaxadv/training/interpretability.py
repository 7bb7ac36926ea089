"""Interpretability-aware robust training: Int, Int-one, Int-Adv, Int2, Int2-Adv (Boopathy et al.,
ICML 2020) and IG-Norm / IG-Sum-Norm (Chen et al. 2019), as in methods.md sections 1.3 and 1.6.

The interpretation is the CAM of the model's GAP head, I(x, c) (B, h, w, K). The label-free
training discrepancy of Boopathy et al. is

    D~(x, x') = ||dI_y||_1 + sum_{i != y} p^_i(x') ||dI_i||_1,
    p^_i = softmax(f(x'))_i / sum_{j != y} softmax(f(x'))_j,   dI_c = I(x', c) - I(x, c),

with gradients flowing through p^ and no 1/2 (as in the official code). Inner maximisations use
signed-gradient PGD from a uniform start in the eps-box (so gamma does not change the inner attack:
methods.md 1.10 quirk 3); the adversarial example is stop-gradient'ed. Outer losses differentiate
the discrepancy w.r.t. the parameters through both CAMs.

| objective | inner maximisation | outer loss |
|---|---|---|
| ``int`` | gamma D~(x, x') | CE(x) + gamma D~(x, x') |
| ``int_one`` | gamma ||dI_y||_1 | CE(x) + gamma ||dI_y||_1 |
| ``int_adv`` | CE(x') + gamma D~ | CE(x') + gamma D~ |
| ``int2`` | CE(x') (standard PGD) | CE(x) + gamma D~(x, x'_PGD) |
| ``int2_adv`` | CE(x') | CE(x') + gamma D~ |
| ``ig_norm`` | CE(x) + ||IG_CE(x -> x')||_1 | CE(x) + lam ||IG_CE(x -> x')||_1 |
| ``ig_sum_norm`` | CE(x') + ||IG_CE(x -> x')||_1 | CE(x') + lam ||IG_CE(x -> x')||_1 |

IG_CE(x -> x') = (x' - x) * (1/m) sum_{k=1..m} grad_z CE(f(z), y) at z = x + (k/m)(x' - x): the
right Riemann sum with m = 5 on the clean-image baseline (Boopathy et al.'s code; lam = 1 there).
"""

import jax
import jax.numpy as jnp
import optax

from jaxadv.attacks import gradient
from jaxadv.metrics.discrepancy import label_free_discrepancy
from jaxadv.training.adversarial import current_eps, pgd_example
from jaxadv.training.forward import (
    attack_logits_fn,
    forward,
    logits_and_cam,
    masked_mean,
    pair_batch,
    unpair,
)
from jaxadv.types import Array

_INNER = {"int": "disc", "int_one": "disc_one", "int_adv": "ce+disc", "int2": "ce",
          "int2_adv": "ce"}
_OUTER_ADV_CE = {"int_adv", "int2_adv"}


def true_class_discrepancy(cam_clean: Array, cam_adv: Array, labels: Array) -> Array:
    """||I(x', y) - I(x, y)||_1 (B,), the 1-class measure of Int-one."""
    onehot = jax.nn.one_hot(labels, cam_clean.shape[-1], dtype=cam_clean.dtype)
    return jnp.sum(jnp.abs(cam_adv - cam_clean) * onehot[:, None, None, :], axis=(1, 2, 3))


def _accuracy(logits, labels):
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def _inner_example(kind, apply_fn, params, batch_stats, batch, key, *, eps, step_size, num_steps,
                   gamma):
    x, y = batch["image"], batch["label"]
    if kind == "ce":
        return pgd_example(apply_fn, params, batch_stats, batch, key, eps=eps,
                           step_size=step_size, num_steps=num_steps)
    fixed = jax.lax.stop_gradient({"params": params, "batch_stats": batch_stats})
    _, cam_clean, _ = logits_and_cam(apply_fn, fixed["params"], fixed["batch_stats"], x)

    def objective(x_adv):
        logits_adv, cam_adv, _ = logits_and_cam(apply_fn, fixed["params"], fixed["batch_stats"],
                                                x_adv)
        if kind == "disc_one":
            return gamma * true_class_discrepancy(cam_clean, cam_adv, y)
        disc = gamma * label_free_discrepancy(cam_clean, cam_adv, logits_adv, y)
        if kind == "ce+disc":
            disc = disc + optax.softmax_cross_entropy_with_integer_labels(logits_adv, y)
        return disc

    res = gradient.pgd_objective(objective, x, key, eps=eps, step_size=step_size,
                                 num_steps=num_steps, random_start=True, step_rule="sign")
    return jax.lax.stop_gradient(res.x_adv)


def _int_family(name, apply_fn, params, batch_stats, batch, key, *, step, eps, step_size,
                num_steps, gamma, ramp_start, ramp_end):
    e = current_eps(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)
    x, y = batch["image"], batch["label"]
    x_adv = _inner_example(_INNER[name], apply_fn, params, batch_stats, batch, key, eps=e,
                           step_size=step_size, num_steps=num_steps, gamma=gamma)
    logits_both, cam_both, new_stats = logits_and_cam(
        apply_fn, params, batch_stats, pair_batch(x, x_adv), train=True)
    logits, logits_adv = unpair(logits_both)
    cam, cam_adv = unpair(cam_both)
    if name == "int_one":
        disc = true_class_discrepancy(cam, cam_adv, y)
    else:
        disc = label_free_discrepancy(cam, cam_adv, logits_adv, y)
    ce_on = logits_adv if name in _OUTER_ADV_CE else logits
    ce = optax.softmax_cross_entropy_with_integer_labels(ce_on, y)
    per_example = ce + gamma * disc
    metrics = {"loss": per_example, "ce": ce, "discrepancy": disc,
               "accuracy": _accuracy(logits, y), "adv_accuracy": _accuracy(logits_adv, y),
               "eps": jnp.broadcast_to(e, ce.shape)}
    return masked_mean(per_example, batch["mask"]), (metrics, new_stats)


def _make_int(name):
    def objective(apply_fn, params, batch_stats, batch, key, *, step=None, eps: float = 0.3,
                  step_size: float = 0.01, num_steps: int = 40, gamma: float = 0.01,
                  ramp_start: int = 0, ramp_end: int = 0):
        return _int_family(name, apply_fn, params, batch_stats, batch, key, step=step, eps=eps,
                           step_size=step_size, num_steps=num_steps, gamma=gamma,
                           ramp_start=ramp_start, ramp_end=ramp_end)

    objective.__name__ = name
    objective.__doc__ = (f"Boopathy et al.'s ``{name}`` objective (see the module table). "
                         "Defaults: MNIST settings, eps 0.3, 40 steps of 0.01, gamma 0.01.")
    return objective


int_ = _make_int("int")
int_one = _make_int("int_one")
int_adv = _make_int("int_adv")
int2 = _make_int("int2")
int2_adv = _make_int("int2_adv")


def path_integrated_gradients_ce(logits_fn, x: Array, x_adv: Array, y: Array, *,
                                 num_steps: int = 5, path_chunk: int | None = None) -> Array:
    """IG of the cross-entropy along the straight path x -> x' (right Riemann sum, ``num_steps``
    points), shaped like x: the attribution of Chen et al.'s IG-Norm (methods.md 1.6).

    ``path_chunk`` path points are evaluated at once (``lax.map`` with that batch size; None: all
    ``num_steps`` together through ``vmap``, one batch of B * num_steps images, no loop); a
    smaller chunk bounds the memory for large models. All at once is the faster on CPU since the
    fast path's convolution primitives keep the double backprop in fast forms (SmallGAP, batch
    128, ``python -m experiments.benchmarks.ig_norm_step``, results/ig_norm_step.json, quiet 2-core
    VM: IG-Norm step 2.78 s all at once vs 5.84 s one point at a time; before those primitives it
    was machine-dependent, results/ig_norm_step_2026-12-02.json).
    """

    def ce_sum(z):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(z), y))

    def point(k):
        alpha = (k + 1.0) / num_steps
        return jax.grad(ce_sum)(x + alpha * (x_adv - x))

    ks = jnp.arange(num_steps, dtype=x.dtype)
    if path_chunk is None or path_chunk >= num_steps:
        grads = jax.vmap(point)(ks)  # no loop: XLA:CPU runs conv gradients in loops slowly
    else:
        grads = jax.lax.map(point, ks, batch_size=path_chunk)
    return (x_adv - x) * jnp.mean(grads, axis=0)


def _ig_family(sum_norm, apply_fn, params, batch_stats, batch, key, *, step, eps, step_size,
               num_steps, weight, ig_steps, ramp_start, ramp_end, ig_path_chunk=None):
    e = current_eps(step, eps=eps, ramp_start=ramp_start, ramp_end=ramp_end)
    x, y = batch["image"], batch["label"]
    fixed_fn = attack_logits_fn(apply_fn, params, batch_stats)
    ce_clean_fixed = jax.lax.stop_gradient(
        optax.softmax_cross_entropy_with_integer_labels(fixed_fn(x), y))

    def inner(x_adv):
        ig = path_integrated_gradients_ce(fixed_fn, x, x_adv, y, num_steps=ig_steps,
                                          path_chunk=ig_path_chunk)
        norm = jnp.sum(jnp.abs(ig).reshape(x.shape[0], -1), axis=-1)
        ce = (optax.softmax_cross_entropy_with_integer_labels(fixed_fn(x_adv), y) if sum_norm
              else ce_clean_fixed)
        return ce + weight * norm  # the outer loss's own weighting (1 for IG-Norm / Sum-Norm)

    res = gradient.pgd_objective(inner, x, key, eps=e, step_size=step_size, num_steps=num_steps,
                                 random_start=True, step_rule="sign")
    x_adv = jax.lax.stop_gradient(res.x_adv)

    def train_logits_fn(z):
        return forward(apply_fn, params, batch_stats, z, train=False)[0]

    ig = path_integrated_gradients_ce(train_logits_fn, x, x_adv, y, num_steps=ig_steps,
                                      path_chunk=ig_path_chunk)
    ig_norm = jnp.sum(jnp.abs(ig).reshape(x.shape[0], -1), axis=-1)
    logits_both, new_stats = forward(apply_fn, params, batch_stats, pair_batch(x, x_adv),
                                     train=True)
    logits, logits_adv = unpair(logits_both)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_adv if sum_norm else logits, y)
    per_example = ce + weight * ig_norm
    metrics = {"loss": per_example, "ce": ce, "ig_norm": ig_norm,
               "accuracy": _accuracy(logits, y), "adv_accuracy": _accuracy(logits_adv, y),
               "eps": jnp.broadcast_to(e, ce.shape)}
    return masked_mean(per_example, batch["mask"]), (metrics, new_stats)


def _make_ig(name: str, sum_norm: bool, default_weight: float, doc: str):
    def objective(apply_fn, params, batch_stats, batch, key, *, step=None, eps: float = 0.3,
                  step_size: float = 0.01, num_steps: int = 40, weight: float = default_weight,
                  ig_steps: int = 5, ramp_start: int = 0, ramp_end: int = 0,
                  ig_path_chunk: int | None = None):
        return _ig_family(sum_norm, apply_fn, params, batch_stats, batch, key, step=step,
                          eps=eps, step_size=step_size, num_steps=num_steps, weight=weight,
                          ig_steps=ig_steps, ramp_start=ramp_start, ramp_end=ramp_end,
                          ig_path_chunk=ig_path_chunk)

    objective.__name__ = name
    objective.__doc__ = doc
    return objective


ig_norm = _make_ig("ig_norm", False, 1.0, """IG-Norm (Chen et al. 2019): CE(x) + weight
    ||IG_CE(x -> x')||_1; weight 1 as in Boopathy et al.'s code (methods.md 1.10 quirk 2). The IG
    term is differentiated w.r.t. the parameters (double backprop through the path gradients).""")
ig_sum_norm = _make_ig("ig_sum_norm", True, 1.0, """IG-Sum-Norm (Chen et al. 2019): CE(x') +
    weight ||IG_CE(x -> x')||_1.""")
int_ig = _make_ig("int_ig", False, 0.02, """Int-IG of Boopathy et al.'s code (checkpoint tag
    ``intig``; methods.md 1.6): IG-Norm with gamma = 0.01 and the "2-class" weighting, whose
    per-class loop never changes the label, so the loss is CE(x) + 0.02 ||IG_CE(x -> x')||_1
    (quirk 2 of methods.md 1.10, reproduced: ``weight`` 0.02, in the inner maximisation too).
    Otherwise as :func:`ig_norm`.""")
int_ig_adv = _make_ig("int_ig_adv", True, 0.02, """Int-IG-Adv of Boopathy et al.'s code
    (``intigadv``; methods.md 1.6): IG-Sum-Norm with the same collapse, CE(x') + 0.02
    ||IG_CE(x -> x')||_1 (quirk 2, reproduced). Otherwise as :func:`ig_sum_norm`.""")
