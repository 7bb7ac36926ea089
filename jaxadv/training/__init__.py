"""Explicit-state training: state, objectives, steps, schedules, the loop and checkpoints."""

from jaxadv.training.checkpointing import Checkpointer
from jaxadv.training.forward import attack_logits_fn, forward, logits_and_cam, masked_mean
from jaxadv.training.loop import (
    NonFiniteLossError,
    evaluate,
    load_trained_model,
    restore_for_eval,
    train_and_evaluate,
)
from jaxadv.training.objectives import (
    available_objectives,
    cross_entropy,
    get_objective,
    register_objective,
)
from jaxadv.training.schedules import eps_ramp, learning_rate_schedule, make_optimizer
from jaxadv.training.state import TrainState, create_train_state
from jaxadv.training.steps import (
    accumulating,
    add_metrics,
    make_eval_step,
    make_train_step,
    summarize,
    zero_metrics,
)

__all__ = [
    "Checkpointer", "NonFiniteLossError", "TrainState", "accumulating", "add_metrics",
    "attack_logits_fn",
    "available_objectives",
    "create_train_state", "cross_entropy", "eps_ramp", "evaluate", "forward", "get_objective",
    "learning_rate_schedule", "load_trained_model", "logits_and_cam", "make_eval_step",
    "make_optimizer", "make_train_step",
    "masked_mean", "register_objective", "restore_for_eval", "summarize", "train_and_evaluate",
    "zero_metrics",
]
