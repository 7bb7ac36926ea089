"""Rank agreement between two maps, per example: Kendall tau-b, Spearman rho, Pearson r and
top-k intersection (methods.md 1.3).

Each takes maps a, b of the same shape (B, ...) and returns (B,); maps are flattened per example,
and scores are computed in float32 (float64 for float64 maps), whatever the maps' dtype.

* Kendall tau-b (scipy ``kendalltau`` default): with s^a_ij = sign(a_i - a_j),
  tau_b = sum_ij s^a s^b / sqrt(sum_ij (s^a)^2 sum_ij (s^b)^2), which is scipy's
  (P - Q) / sqrt((P + Q + T_a)(P + Q + T_b)) with ties handled the same way. It is O(n^2) in the
  map size n; rows of the pair matrix are taken ``chunk_size`` at a time so memory stays
  O(chunk_size * n). A constant map gives NaN, as in scipy.
* Spearman rho: Pearson r of average ranks (ties get the mean rank, as ``scipy.stats.rankdata``).
* Top-k intersection: |top_k(a) & top_k(b)| / k (Boopathy et al.'s intended measure, k = 8).
  :func:`top_k_intersection_b` is their committed variant (strict '>' against the k-th largest
  value, so k - 1 pixels without ties, divided by the map size |I|), with its row-indexing bug
  fixed (each image uses its own k-th largest value), for comparison with published numbers.

Maps holding NaN: a concrete one is an error (naming the examples); inside ``jit`` / ``vmap`` the
score of an example whose maps hold NaN is NaN (scipy's default ``nan_policy="propagate"``),
never a finite number from NaN sorted somewhere.
"""

import jax
import jax.numpy as jnp

from jaxadv import validation
from jaxadv.types import Array


def _flat_pair(a: Array, b: Array) -> tuple[Array, Array]:
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape; got {a.shape} and {b.shape}.")
    if a.ndim < 2:
        raise ValueError(f"maps must be batched (B, ...); got shape {a.shape}.")
    for name, m in (("a", a), ("b", b)):
        validation.check_finite(m, name, fix="a rank score of such a map means nothing; explain "
                                "finite inputs only, or drop those examples.")
    dtype = _score_dtype(a, b)  # float16 / bfloat16 maps: counts and sums overflow or lose digits
    return (a.reshape(a.shape[0], -1).astype(dtype), b.reshape(b.shape[0], -1).astype(dtype))


def _nan_where_nan(score: Array, fa: Array, fb: Array) -> Array:
    """NaN for the examples whose flattened maps (B, n) hold NaN (traced maps; concrete ones were
    rejected by :func:`_flat_pair`, which also made both floating)."""
    bad = jnp.any(jnp.isnan(fa), axis=-1) | jnp.any(jnp.isnan(fb), axis=-1)
    return jnp.where(bad, jnp.nan, score)


def _kendall_one(u: Array, v: Array, chunk: int) -> Array:
    n = u.shape[0]
    num_chunks = -(-n // chunk)
    idx = jnp.arange(num_chunks * chunk)
    valid = idx < n
    rows = jnp.clip(idx, 0, n - 1)

    def body(acc, inp):
        r, ok = inp
        ok = ok[:, None].astype(jnp.int32)
        sa = jnp.sign(u[r][:, None] - u[None, :]).astype(jnp.int32) * ok
        sb = jnp.sign(v[r][:, None] - v[None, :]).astype(jnp.int32) * ok
        part = jnp.stack([jnp.sum(sa * sb), jnp.sum(sa * sa), jnp.sum(sb * sb)])
        return acc + part.astype(acc.dtype), None

    init = jnp.zeros(3, u.dtype)
    acc, _ = jax.lax.scan(body, init, (rows.reshape(num_chunks, chunk),
                                       valid.reshape(num_chunks, chunk)))
    return acc[0] / jnp.sqrt(acc[1] * acc[2])


def kendall_tau(a: Array, b: Array, *, chunk_size: int = 256) -> Array:
    """Kendall tau-b per example (equals ``scipy.stats.kendalltau(a[i].ravel(), b[i].ravel())``).

    Args:
      a, b: maps (B, ...).
      chunk_size: rows of the n x n pair matrix per step (memory O(chunk_size * n)).

    Returns:
      (B,) in [-1, 1]; NaN where a map is constant.
    """
    fa, fb = _flat_pair(a, b)
    chunk = min(validation.check_int("chunk_size", chunk_size, 1), fa.shape[1])
    tau = jax.lax.map(lambda uv: _kendall_one(uv[0], uv[1], chunk), (fa, fb))
    return _nan_where_nan(tau, fa, fb)


def average_ranks(a: Array) -> Array:
    """1-based ranks of each row of (B, n), ties sharing their mean rank (scipy ``rankdata``)."""
    s = jnp.sort(a, axis=-1)
    left = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="left"))(s, a)
    right = jax.vmap(lambda row, q: jnp.searchsorted(row, q, side="right"))(s, a)
    return (left + right + 1).astype(_score_dtype(a)) / 2  # float16 holds ranks up to 2048


def pearson(a: Array, b: Array, *, eps: float = 0.0) -> Array:
    """Pearson r per example (B,) (``scipy.stats.pearsonr``); NaN for constant maps."""
    fa, fb = _flat_pair(a, b)
    return _nan_where_nan(_pearson_rows(fa, fb, eps), fa, fb)


def _pearson_rows(fa: Array, fb: Array, eps: float = 0.0) -> Array:
    """Pearson r of each row of (B, n) arrays already checked by :func:`_flat_pair`."""
    ca = fa - jnp.mean(fa, axis=-1, keepdims=True)
    cb = fb - jnp.mean(fb, axis=-1, keepdims=True)
    num = jnp.sum(ca * cb, axis=-1)
    den = jnp.sqrt(jnp.sum(ca * ca, axis=-1) * jnp.sum(cb * cb, axis=-1))
    return num / (den + eps)


def spearman(a: Array, b: Array) -> Array:
    """Spearman rho per example (B,) (``scipy.stats.spearmanr``)."""
    fa, fb = _flat_pair(a, b)
    # The ranks are finite: no second check (a host copy each) through pearson's _flat_pair.
    return _nan_where_nan(_pearson_rows(average_ranks(fa), average_ranks(fb)), fa, fb)


def _top_k_mask(f: Array, k: int) -> Array:
    _, idx = jax.lax.top_k(f, k)
    return jnp.zeros(f.shape, jnp.bool_).at[jnp.arange(f.shape[0])[:, None], idx].set(True)


def _check_k(k, n) -> int:
    return validation.check_int("k", k, 1, n)  # at most the map size


def top_k_intersection(a: Array, b: Array, *, k: int = 8) -> Array:
    """|top_k(a) & top_k(b)| / k per example (B,), in [0, 1] (ties broken by position)."""
    fa, fb = _flat_pair(a, b)
    k = _check_k(k, fa.shape[1])
    both = _top_k_mask(fa, k) & _top_k_mask(fb, k)
    return _nan_where_nan(jnp.sum(both, axis=-1).astype(fa.dtype) / k, fa, fb)


def top_k_intersection_b(a: Array, b: Array, *, k: int = 8) -> Array:
    """Boopathy et al.'s committed top-k measure (module docstring): pixels strictly above each
    map's k-th largest value, overlap divided by the map size |I|. (B,)."""
    fa, fb = _flat_pair(a, b)
    k = _check_k(k, fa.shape[1])
    ka = jax.lax.top_k(fa, k)[0][:, -1:]
    kb = jax.lax.top_k(fb, k)[0][:, -1:]
    both = (fa > ka) & (fb > kb)
    return _nan_where_nan(jnp.sum(both, axis=-1).astype(fa.dtype) / fa.shape[1], fa, fb)


def _score_dtype(*maps: Array):
    """The dtype every score is computed in: float64 for float64 maps (x64), else float32 (integer,
    float16 and bfloat16 maps too: their pair counts pass float16's 65,504 from 16x16 maps on,
    and bfloat16 keeps 8 bits of them). float16 and bfloat16 values convert exactly, so their
    ranks and ties are kept (integers beyond 2^24 would round in float32)."""
    return jnp.float64 if any(f.dtype == jnp.float64 for f in maps) else jnp.float32
