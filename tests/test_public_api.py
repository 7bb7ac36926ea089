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
