"""Flax models exposing ``features -> head`` for CAM and Grad-CAM, and a registry."""

from jaxadv.models.base import GAPClassifier
from jaxadv.models.functional import ModelFns, init_variables, model_fns
from jaxadv.models.gap_cnn import BoopathyWResNet, PoolGAP, SmallGAP
from jaxadv.models.head import GAPHead
from jaxadv.models.official import load_official_checkpoint, safe_load_pickle, verify_official_checksum
from jaxadv.models.registry import available_models, get_model, register_model
from jaxadv.models.resnet import MLP, Linear, PreActResNet18, WideResNet

__all__ = [
    "MLP", "BoopathyWResNet", "GAPClassifier", "GAPHead", "Linear", "ModelFns", "PoolGAP",
    "PreActResNet18", "SmallGAP", "WideResNet", "available_models", "get_model",
    "init_variables", "load_official_checkpoint", "model_fns", "register_model",
    "safe_load_pickle", "verify_official_checksum",
]
