"""Tiny models (and their PyTorch twins) shared by the attribution and interpretation-metric tests."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxadv.models import get_model, init_variables, model_fns
from tests.conftest import most_optimizations_off

TINY_WIDTHS = (4, 8, 10)


def tiny_smallgap(activation="softplus", *, size=12, channels=1, num_classes=10, seed=0,
                  dtype=jnp.float32):
    """SmallGAP with widths (4, 8, 10) on size x size x channels inputs: (model, variables, fns)."""
    m = get_model("smallgap", widths=TINY_WIDTHS, activation=activation, num_classes=num_classes)
    v = init_variables(m, jax.random.key(seed), (1, size, size, channels))
    v = jax.tree.map(lambda a: a.astype(dtype), v)
    return m, v, model_fns(m, v)


def tiny_mlp(activation="softplus", *, shape=(6, 6, 1), hidden=(12, 8), num_classes=5, seed=0,
             dtype=jnp.float32):
    m = get_model("mlp", hidden=hidden, activation=activation, num_classes=num_classes)
    v = init_variables(m, jax.random.key(seed), (1,) + tuple(shape))
    v = jax.tree.map(lambda a: a.astype(dtype), v)
    return m, v, model_fns(m, v)


def linear_model(*, shape=(4, 4, 2), num_classes=3, seed=0):
    """logits = flatten(x) W + b with random W, b: returns (logits_fn, W (n, K), b (K,))."""
    kw, kb = jax.random.split(jax.random.key(seed))
    n = int(np.prod(shape))
    w = jax.random.normal(kw, (n, num_classes))
    b = jax.random.normal(kb, (num_classes,))

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w.astype(x.dtype) + b.astype(x.dtype)

    return logits_fn, w, b


def uniform_images(batch, shape, seed=1, dtype=jnp.float32):
    return jax.random.uniform(jax.random.key(seed), (batch,) + tuple(shape), dtype)


@contextlib.contextmanager
def x64():
    """Enables float64 in JAX for the duration of the block."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (normwise relative error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def torch_mlp(variables, hidden=(12, 8)):
    """nn.Sequential twin of ``tiny_mlp`` (relu) with separate ``nn.ReLU`` modules, as Captum's
    GuidedBackprop needs; takes NCHW input. Returns the module in eval mode (float32)."""
    import torch
    from torch import nn

    params = variables["params"]
    layers, i = [nn.Flatten()], 0
    for name in sorted(k for k in params if k.startswith("layers_")):
        p = params[name]
        lin = nn.Linear(*np.asarray(p["kernel"]).shape)
        lin.weight.data = torch.from_numpy(np.array(np.asarray(p["kernel"], np.float32).T))
        lin.bias.data = torch.from_numpy(np.array(np.asarray(p["bias"], np.float32)))
        layers += [lin, nn.ReLU()]
        i += 1
    assert i == len(hidden)
    head = params["head"]
    lin = nn.Linear(*np.asarray(head["kernel"]).shape)
    lin.weight.data = torch.from_numpy(np.array(np.asarray(head["kernel"], np.float32).T))
    lin.bias.data = torch.from_numpy(np.array(np.asarray(head["bias"], np.float32)))
    layers.append(lin)
    return nn.Sequential(*layers).eval()


@pytest.fixture(autouse=True)
def fast_compile():
    """Compiles with most XLA optimisations off: these tests are dominated by compile time."""
    with most_optimizations_off():
        yield
