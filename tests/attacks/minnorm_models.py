"""Tiny models with known decision boundaries for the minimum-norm and sparse attack tests."""

import jax.numpy as jnp
import numpy as np


def linear_problem(seed: int = 0, *, batch: int = 8, shape=(4, 4, 1), num_classes: int = 3,
                   spread: float = 0.1):
    """A linear classifier ``z = flatten(x) W + b`` and inputs near 0.5 with small margins.

    ``b`` cancels the logits of the all-0.5 image, so the distances to the boundaries are small
    and the box [0, 1] does not bind. Returns (logits_fn, W (d, K), b (K,), x (B, *shape), y (B,)
    = the clean predictions).
    """
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w = rng.normal(size=(d, num_classes)).astype(np.float32)
    b = (-0.5 * w.sum(0)).astype(np.float32)
    x = np.clip(0.5 + spread * rng.normal(size=(batch,) + tuple(shape)), 0.2, 0.8).astype(np.float32)
    wj, bj = jnp.asarray(w), jnp.asarray(b)

    def logits_fn(v):
        return v.reshape(v.shape[0], -1) @ wj.astype(v.dtype) + bj.astype(v.dtype)

    y = np.argmax(x.reshape(batch, -1) @ w + b, axis=-1).astype(np.int32)
    return logits_fn, w, b, x, y


def boundary_distances(w, b, x, y, norm: str = "l2") -> np.ndarray:
    """(B, K) distance from each x to the hyperplane z_y = z_j (inf for j = y), in float64:
    (z_y - z_j) / ||w_y - w_j||_* with the dual norm (l2 for l2, l1 for linf)."""
    w = w.astype(np.float64)
    xf = x.reshape(x.shape[0], -1).astype(np.float64)
    z = xf @ w + b
    out = np.full(z.shape, np.inf)
    for i in range(x.shape[0]):
        for j in range(w.shape[1]):
            if j == y[i]:
                continue
            dw = w[:, y[i]] - w[:, j]
            dual = np.linalg.norm(dw, 1) if norm == "linf" else np.linalg.norm(dw)
            out[i, j] = (z[i, y[i]] - z[i, j]) / dual
    return out
