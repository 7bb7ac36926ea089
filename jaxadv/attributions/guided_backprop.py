"""Guided Backpropagation: the gradient with every ReLU's backward pass replaced by a guided one.

Springenberg et al., "Striving for simplicity: the all convolutional net", ICLR-W 2015. A guided ReLU
passes a gradient back only where both its input and the incoming gradient are positive:

    forward  y = max(x, 0);    backward  dx = 1[x > 0] * max(dy, 0)

(Captum ``GuidedBackprop`` does the same through backward hooks on ``nn.ReLU`` modules.)

Models need not be rebuilt: :func:`with_guided_relus` traces ``logits_fn`` to a jaxpr and
re-evaluates it with every ``jax.nn.relu`` call (what ``flax.linen.relu`` and jaxadv's ``"relu"``
activation are) swapped for :func:`guided_relu`, recursing into ``jit``-ed and checkpointed
(``jax.checkpoint`` / ``flax.linen.remat``, rematerialisation kept) sub-functions. ReLUs
inside control-flow primitives (``scan``, ``while``, ``cond``) and ReLUs written as
``jnp.maximum(x, 0)`` are left unchanged; a model with no ReLU raises ``ValueError``. Models written
by hand can call :func:`guided_relu` directly and use :func:`saliency` on them.

The map stays differentiable in x and in the parameters (the guided backward rule is itself made of
JAX operations), so it can enter a training loss.
"""

import jax
import jax.numpy as jnp
from jax.extend import core as jex

from jaxadv.attributions import _common
from jaxadv.attributions.gradients import saliency
from jaxadv.types import Array, LogitsFn


@jax.custom_vjp
def guided_relu(x: Array) -> Array:
    """max(x, 0) whose backward pass is 1[x > 0] * max(dy, 0)."""
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, g):
    return (jnp.where(x > 0, jnp.maximum(g, 0), 0),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)

_CALL_PRIMITIVES = ("jit", "pjit", "closed_call", "core_call")
# jax.checkpoint / flax.linen.remat: "remat2" in current JAX ("checkpoint" / "remat" before).
_REMAT_PRIMITIVES = ("checkpoint", "remat", "remat2")


def _is_relu(eqn) -> bool:
    """A ``custom_jvp_call`` of ``jax.nn.relu`` (recognised by the traced function's name: the
    custom-JVP wrapper or the ``jit`` it contains is called ``relu``)."""
    if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
        return False
    inner = getattr(eqn.params.get("call_jaxpr"), "jaxpr", None)
    if inner is None:
        return False
    info = getattr(getattr(inner, "debug_info", None), "func_src_info", None) or ""
    if info.split(" ")[0] == "relu":
        return True
    eqns = inner.eqns
    return (len(eqns) == 1 and eqns[0].primitive.name in ("jit", "pjit")
            and eqns[0].params.get("name") == "relu")


def _eval(jaxpr, consts, args, counter):
    env = {}

    def read(v):
        return v.val if isinstance(v, jex.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = c
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if _is_relu(eqn):
            counter[0] += 1
            outs = [guided_relu(invals[0])]
        elif name in _CALL_PRIMITIVES + _REMAT_PRIMITIVES and "jaxpr" in eqn.params:
            inner = eqn.params["jaxpr"]
            inner_consts = getattr(inner, "consts", [])
            inner = getattr(inner, "jaxpr", inner)

            def call(*a, inner=inner, inner_consts=inner_consts):
                return _eval(inner, inner_consts, list(a), counter)

            if name in _REMAT_PRIMITIVES:  # keep the rematerialisation (and its policy)
                call = jax.checkpoint(call, prevent_cse=eqn.params.get("prevent_cse", True),
                                      policy=eqn.params.get("policy"))
            outs = call(*invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            subfuns = []
            if isinstance(params, tuple):  # older JAX: (subfuns, params)
                subfuns, params = params
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*subfuns, *invals, **params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def with_guided_relus(logits_fn: LogitsFn) -> LogitsFn:
    """``logits_fn`` with every ``jax.nn.relu`` swapped for :func:`guided_relu` (same forward
    values; guided backward pass). Raises ValueError when it finds no ReLU."""

    def guided(x):
        closed = jax.make_jaxpr(logits_fn)(jax.ShapeDtypeStruct(x.shape, x.dtype))
        counter = [0]
        (out,) = _eval(closed.jaxpr, closed.consts, [x], counter)
        if counter[0] == 0:
            raise ValueError("with_guided_relus found no jax.nn.relu in logits_fn; guided "
                             "backprop needs a ReLU network (flax.linen.relu / activation='relu').")
        return out

    return guided


def guided_backprop(logits_fn: LogitsFn, x: Array, target) -> Array:
    """Guided Backpropagation map of the target logit (Springenberg et al. 2015).

    Args:
      logits_fn: images (B, H, W, C) -> logits (B, K), a ReLU network (see module docstring).
      x: (B, H, W, C).
      target: int or (B,) class indices.

    Returns:
      (B, H, W, C).
    """
    _common.prepare(logits_fn, x, target)
    return saliency(with_guided_relus(logits_fn), x, target)
