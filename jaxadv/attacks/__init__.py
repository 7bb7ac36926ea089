"""Pure, jit-compiled attacks: ``attack(logits_fn, x, y, key, *, ...) -> AttackResult``.

Every attack takes a logits function (images (B, H, W, C) in ``bounds`` -> logits (B, K)), the
images, integer labels (B,) and an explicit PRNG key; hyperparameters are keyword-only, eps is a
traced value (sweeping it never recompiles) and loops run in ``lax`` control flow. The result holds
the strongest example found per input (``x_adv``), whether it fools the model (``success``) and the
attack's loss. Sweeps over eps x restarts x targets in one compiled call are in
:mod:`jaxadv.attacks.sweep`; the AutoAttack-protocol evaluator in :mod:`jaxadv.attacks.ensemble`.

Attacks by family (module: functions):

* gradient: ``fgsm``, ``fgsm_rs``, ``bim``, ``pgd``, ``mi_fgsm``, ``trades_kl_pgd``,
  ``pgd_objective`` (any differentiable objective), ``pgd_boopathy_eval``
* apgd: ``apgd``, ``apgd_ce``, ``apgd_dlr``, ``apgd_t`` (Croce & Hein 2020)
* square: ``square`` (Andriushchenko et al. 2020); fab: ``fab``, ``fab_t`` (Croce & Hein 2020)
* minimum norm: ``cw_l2`` (Carlini & Wagner 2017), ``deepfool`` (Moosavi-Dezfooli et al. 2016),
  ``min_eps_bisection`` / ``minimal_eps`` (Boopathy et al. 2020), ``ead`` (Chen et al. 2018)
* sparse and structured: ``jsma`` (Papernot et al. 2016, on the adversarial saliency map),
  ``str_attack`` (Xu et al. 2019, ADMM group sparsity), ``masked_pgd`` / ``masked_fgsm`` /
  ``masked_bim`` (the perturbation confined to a mask, for CAM-guided and region studies)

``get_attack(name, **hyperparameters)`` looks an attack up by name, for configs.

Names are imported on first use, so ``import jaxadv.attacks`` stays cheap.
"""

import functools
import importlib

# name -> (module, function); aliases use the names torchattacks/AutoAttack users know.
ATTACKS: dict[str, tuple[str, str]] = {
    "fgsm": ("gradient", "fgsm"), "fgm": ("gradient", "fgsm"),
    "fgsm_rs": ("gradient", "fgsm_rs"), "bim": ("gradient", "bim"), "ifgsm": ("gradient", "bim"),
    "pgd": ("gradient", "pgd"), "mi_fgsm": ("gradient", "mi_fgsm"),
    "trades_kl_pgd": ("gradient", "trades_kl_pgd"),
    "pgd_boopathy_eval": ("gradient", "pgd_boopathy_eval"),
    "apgd": ("apgd", "apgd"), "apgd_ce": ("apgd", "apgd_ce"), "apgd_dlr": ("apgd", "apgd_dlr"),
    "apgd_t": ("apgd", "apgd_t"),
    "square": ("square", "square"), "fab": ("fab", "fab"), "fab_t": ("fab", "fab_t"),
    "cw_l2": ("cw", "cw_l2"), "cw": ("cw", "cw_l2"), "deepfool": ("deepfool", "deepfool"),
    "min_eps_bisection": ("min_eps", "min_eps_bisection"),
    "ead": ("ead", "ead"), "jsma": ("jsma", "jsma"), "str_attack": ("str_attack", "str_attack"),
    "masked_pgd": ("masked", "masked_pgd"), "masked_fgsm": ("masked", "masked_fgsm"),
    "masked_bim": ("masked", "masked_bim"),
}

# Other public names, imported lazily from their modules.
_OTHER: dict[str, str] = {
    "AttackResult": "base", "is_success": "base",
    "pgd_objective": "gradient", "classification_objective": "gradient",
    "minimal_eps": "min_eps", "masked_pgd_objective": "masked", "check_mask": "masked",
    "shrinkage_threshold": "ead", "group_norms": "str_attack", "group_soft_threshold": "str_attack",
    "margin_loss": "cw", "is_adversarial": "cw", "binary_search_update": "cw",
    "project": "projections", "project_l1_ball": "projections", "check_attack_inputs": "projections",
    "get_loss": "losses", "get_step_rule": "step_rules", "resolve_targets": "targets",
    "attack_over_eps": "sweep", "attack_over_restarts": "sweep", "attack_over_targets": "sweep",
    "attack_surface": "sweep", "best_over": "sweep", "SweepResult": "sweep", "Surface": "sweep",
    "evaluate_ensemble": "ensemble", "evaluate_ensemble_batches": "ensemble",
    "EnsembleResult": "ensemble", "gradient_masking_flags": "ensemble",
}


def available_attacks() -> list[str]:
    """Names accepted by :func:`get_attack`."""
    return sorted(ATTACKS)


def get_attack(name: str, **hyperparameters):
    """The attack ``name`` with its keyword-only hyperparameters bound.

    Example::

        attack = get_attack("pgd", eps=0.3, step_size=0.01, num_steps=40)
        result = jax.jit(attack, static_argnums=0)(logits_fn, x, y, key)
    """
    if name not in ATTACKS:
        raise ValueError(f"Unknown attack {name!r}; available: {available_attacks()}.")
    module, attr = ATTACKS[name]
    fn = getattr(importlib.import_module(f"jaxadv.attacks.{module}"), attr)
    return functools.partial(fn, **hyperparameters) if hyperparameters else fn


def __getattr__(name: str):
    if name in ATTACKS and ATTACKS[name][1] == name:
        module = ATTACKS[name][0]
    elif name in _OTHER:
        module = _OTHER[name]
    else:
        raise AttributeError(f"module 'jaxadv.attacks' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxadv.attacks.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | {n for n, (_, a) in ATTACKS.items() if n == a} | set(_OTHER))
