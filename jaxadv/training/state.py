"""The explicit training state that every step takes and returns."""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxadv.types import Params


@struct.dataclass
class TrainState:
    """Everything a training step reads and writes; nothing is mutated in place.

    Attributes:
      step: int32 scalar, the number of optimiser steps taken.
      params: model parameters.
      batch_stats: batch-norm running statistics ({} for models without batch norm).
      opt_state: the optax optimiser state.
      ema_params: exponential moving average of ``params`` (None when EMA is off).
      apply_fn: ``model.apply`` (static).
      tx: the optax optimiser (static).
    """

    step: jax.Array
    params: Params
    batch_stats: Any
    opt_state: optax.OptState
    ema_params: Params | None
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)

    def checkpoint_items(self) -> dict:
        """The arrays that a checkpoint holds (the static fields are rebuilt from the config)."""
        return {"step": self.step, "params": self.params, "batch_stats": self.batch_stats,
                "opt_state": self.opt_state, "ema_params": self.ema_params}

    def replace_items(self, items: dict) -> "TrainState":
        return self.replace(**items)

    def eval_variables(self, *, use_ema: bool = False) -> dict:
        """Variables for ``model.apply`` in eval mode (EMA params if asked and available)."""
        params = self.ema_params if (use_ema and self.ema_params is not None) else self.params
        variables = {"params": params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
                       input_shape: tuple[int, ...], *, ema: bool = False) -> TrainState:
    """Initialises a model and optimiser for inputs of shape (B, H, W, C)."""
    variables = model.init(key, jnp.zeros((1,) + tuple(input_shape[1:]), jnp.float32),
                           train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        apply_fn=model.apply,
        tx=tx,
    )
