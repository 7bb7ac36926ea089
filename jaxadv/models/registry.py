"""Model registry: ``get_model(name, **kwargs)`` builds any jaxadv model by name."""

from collections.abc import Callable

import flax.linen as nn

from jaxadv.models.gap_cnn import BoopathyWResNet, PoolGAP, SmallGAP
from jaxadv.models.resnet import MLP, Linear, PreActResNet18, WideResNet

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallgap": SmallGAP,
    "poolgap": PoolGAP,
    "pool": PoolGAP,  # the name used by Boopathy et al.'s code and checkpoints
    "boopathy_wresnet": BoopathyWResNet,
    "preact_resnet18": PreActResNet18,
    "wide_resnet": WideResNet,
    "mlp": MLP,
    "linear": Linear,
}


def available_models() -> list[str]:
    """The names :func:`get_model` accepts, sorted."""
    return sorted(_MODELS)


def get_model(name: str, **kwargs) -> nn.Module:
    """Returns the Flax module registered as ``name``, built with ``kwargs``.

    Example: ``get_model("smallgap", num_classes=10, activation="softplus")``.
    """
    key = name.lower()
    if key not in _MODELS:
        raise ValueError(f"Unknown model {name!r}; available: {available_models()}.")
    return _MODELS[key](**kwargs)


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Registers a user model (it must implement the ``features``/``head``/``cam`` interface)."""
    _MODELS[name.lower()] = constructor
