"""The public names of the sub-packages resolve, and the attack registry finds every attack."""

import inspect

import pytest

import jaxadv.attacks as attacks
import jaxadv.metrics as metrics


@pytest.mark.parametrize("name", attacks.available_attacks())
def test_every_registered_attack_is_a_pure_attack_function(name):
    fn = attacks.get_attack(name)
    params = inspect.signature(fn).parameters
    assert list(params)[:4] == ["logits_fn", "x", "y", "key"], name
    # hyperparameters are keyword-only
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[4:]
               if p.kind is not p.VAR_KEYWORD), name


def test_lazy_names_and_errors():
    for name in attacks.__dir__():
        if not name.startswith("_"):
            assert getattr(attacks, name) is not None
    with pytest.raises(ValueError, match="Unknown attack 'pgdd'; available"):
        attacks.get_attack("pgdd")
    with pytest.raises(AttributeError):
        attacks.no_such_attack  # noqa: B018
    assert attacks.get_attack("pgd", eps=0.1).keywords == {"eps": 0.1}


def test_metrics_exports():
    for name in metrics.__all__:
        assert callable(getattr(metrics, name)), name


PUBLIC_MODULES = ["jaxadv.attacks", "jaxadv.attributions", "jaxadv.metrics", "jaxadv.models",
                  "jaxadv.training", "jaxadv.analysis", "jaxadv.data", "jaxadv.sharding",
                  "jaxadv.devices", "jaxadv.plotting", "jaxadv.report"]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_functions_and_classes_have_docstrings(module):
    import importlib

    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    undocumented = []
    for name in names:
        obj = getattr(mod, name)
        if getattr(obj, "__module__", "").startswith("jaxadv") and (
                inspect.isfunction(obj) or inspect.isclass(obj)):
            if not (inspect.getdoc(obj) or "").strip():
                undocumented.append(name)
    assert not undocumented, f"{module}: add docstrings to {undocumented}"
