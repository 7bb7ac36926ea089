"""Building blocks shared by jaxadv's Flax models.

All convolutions and max-pools of jaxadv's models go through :func:`conv` and :func:`max_pool`, so a
faster lowering (for example the CPU fast path of ``jaxadv.models.fastpath``) applies to every model
without touching model code.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxadv.types import Array

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "softplus": nn.softplus,
    "swish": nn.swish,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[Array], Array]:
    """Returns the activation function called ``name`` (relu, softplus, swish, identity)."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}. "
            "Use 'softplus' where second derivatives matter (IG, second-order attacks)."
        )
    return ACTIVATIONS[name]


def fan_in_normal() -> jax.nn.initializers.Initializer:
    """N(0, 1/fan_in), the initialisation of Boopathy et al. (2020), section 1.1 of methods.md."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal")


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    use_bias: bool = True,
    kernel_init: jax.nn.initializers.Initializer | None = None,
    name: str | None = None,
) -> nn.Conv:
    """A ``flax.linen.Conv`` that uses jaxadv's convolution lowering.

    The lowering is chosen by :func:`jaxadv.models.fastpath.conv_general_dilated` when the module is
    applied (on CPU a matmul-based lowering, elsewhere ``lax.conv_general_dilated``); outputs and
    gradients are equal to the standard lowering's.
    """
    from jaxadv.models import fastpath  # local import: fastpath imports nothing from models

    if isinstance(kernel_size, int):
        kernel_size = (kernel_size, kernel_size)
    kwargs = {}
    if kernel_init is not None:
        kwargs["kernel_init"] = kernel_init
    return nn.Conv(
        features,
        tuple(kernel_size),
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        conv_general_dilated=fastpath.conv_general_dilated,
        name=name,
        **kwargs,
    )


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _padding(module: nn.Conv):
    """The module's padding as ``lax`` takes it: 'SAME' / 'VALID' or (low, high) pairs."""
    padding = module.padding
    return padding if isinstance(padding, str) else [_pair(p) for p in padding]


def conv_mean_available(module: nn.Conv, batch: int | None = None) -> bool:
    """Whether :func:`conv_mean` (``batch`` given) or :func:`conv_then_dense` (``batch`` None)
    applies to the bound :func:`conv` module now: the CPU fast path is on (for the mean, with
    ``fastpath._fold_pay(batch)``), the module is not being initialised (its parameters must
    exist), and its settings are plain (no dtype override, groups, input dilation or mask)."""
    from jaxadv.models import fastpath

    return (fastpath.is_enabled() and (batch is None or fastpath._fold_pay(batch))
            and not module.is_initializing() and module.dtype is None
            and module.feature_group_count == 1 and _pair(module.input_dilation or 1) == (1, 1)
            and module.mask is None
            and (not isinstance(module.padding, str) or module.padding in ("SAME", "VALID")))


def _conv_params(module: nn.Conv, x: Array):
    """(kernel, bias) of a bound :func:`conv` module, checked against the shapes the module itself
    would require for x (read directly, the parameters skip nn.Conv's own check)."""
    params = module.variables["params"]
    kernel, bias = params["kernel"], params.get("bias")
    want = (*_pair(module.kernel_size), x.shape[-1], module.features)
    if tuple(kernel.shape) != want or (bias is not None and tuple(bias.shape) != want[-1:]):
        got = tuple(kernel.shape), None if bias is None else tuple(bias.shape)
        raise ValueError(f"{module.name}: parameters of shape kernel {got[0]}, bias {got[1]} do "
                         f"not fit this layer (kernel {want}, bias {want[-1:]} for inputs with "
                         f"{x.shape[-1]} channels); the parameters belong to another model.")
    return kernel, bias


def conv_mean(module: nn.Conv, x: Array) -> Array:
    """``mean_{h,w} module(x)`` (B, O) for a bound :func:`conv` module, without its output map
    (:func:`jaxadv.models.fastpath.conv_mean`); check :func:`conv_mean_available` first."""
    from jaxadv.models import fastpath

    kernel, bias = _conv_params(module, x)
    dtype = jnp.result_type(x, kernel, *([] if bias is None else [bias]))
    return fastpath.conv_mean(
        x.astype(dtype), kernel.astype(dtype), None if bias is None else bias.astype(dtype),
        strides=_pair(module.strides or 1), padding=_padding(module),
        dilation=_pair(module.kernel_dilation or 1), precision=module.precision)


def conv_then_dense(module: nn.Conv, x: Array, dense: nn.Module) -> Array:
    """``dense(module(x))`` per position, (B, Ho, Wo, K), as ONE convolution with the composed
    kernel ``W_conv @ W_dense`` (kh, kw, C, K) and bias ``b_conv @ W_dense + b_dense``: K output
    channels instead of the module's O (for SmallGAP's CAM, 10 instead of 100). ``dense`` is a
    bound module with ``kernel`` (O, K) and optional ``bias`` (K,) parameters (the GAP head).
    Check :func:`conv_mean_available` first; the convolution uses jaxadv's lowering."""
    from jaxadv.models import fastpath

    kernel, bias = _conv_params(module, x)
    dense_p = dense.variables["params"]
    matrix, dense_bias = dense_p["kernel"], dense_p.get("bias")
    if matrix.shape[0] != module.features:
        raise ValueError(f"{dense.name}: kernel of shape {tuple(matrix.shape)} does not fit the "
                         f"{module.features} features of {module.name}; the parameters belong to "
                         f"another model.")
    dtype = jnp.result_type(x, kernel, matrix)
    kernel = jnp.einsum("hwio,ok->hwik", kernel.astype(dtype), matrix.astype(dtype),
                        precision=module.precision)
    out = fastpath.conv_general_dilated(
        x.astype(dtype), kernel, _pair(module.strides or 1), _padding(module),
        rhs_dilation=_pair(module.kernel_dilation or 1),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=module.precision)
    if bias is not None:
        out = out + jnp.dot(bias.astype(dtype), matrix.astype(dtype), precision=module.precision)
    return out if dense_bias is None else out + dense_bias.astype(dtype)


def max_pool(x: Array, window: int, stride: int | None = None, padding: str = "VALID") -> Array:
    """Max-pool (B, H, W, C) with a square window; uses jaxadv's pooling lowering."""
    from jaxadv.models import fastpath

    stride = window if stride is None else stride
    return fastpath.max_pool(x, window=window, stride=stride, padding=padding)


def global_average_pool(a: Array) -> Array:
    """(B, h, w, k) -> (B, k)."""
    return jnp.mean(a, axis=(1, 2))


class Normalize(nn.Module):
    """Per-channel input normalisation inside the model, so attacks work in [0, 1] pixels."""

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None

    def __call__(self, x: Array) -> Array:
        if self.mean is not None:
            x = x - jnp.asarray(self.mean, x.dtype)
        if self.std is not None:
            x = x / jnp.asarray(self.std, x.dtype)
        return x
