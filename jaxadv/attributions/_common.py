"""Shared plumbing of the attribution methods: argument checks, target scores, input gradients.

Every method differentiates the **sum over the batch** of each example's target score, so one
backward pass gives every example's input gradient (examples never interact: batch norm runs in
eval mode inside ``logits_fn``). Nothing here uses ``stop_gradient``, so every map stays
differentiable with respect to the inputs and to whatever parameters ``logits_fn`` closes over.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from jaxadv import validation
from jaxadv.types import Array
from jaxadv.validation import is_concrete

ScoreFn = Callable[[Array], Array]


def check_batch(x: Array, name: str = "x") -> None:
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(f"{name} must be a batch (B, ...); got shape {getattr(x, 'shape', None)}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape}); there is nothing to "
                         f"explain or measure: skip the call when no example is left.")


def check_finite(x: Array, name: str = "x") -> None:
    """Raises ValueError if a concrete ``x`` holds NaN or infinite entries (their maps would be NaN
    without a word); traced values are not inspected (:func:`jaxadv.validation.check_finite`)."""
    validation.check_finite(x, name, fix="every map of such an input is NaN. Drop or repair those "
                            "examples (e.g. jnp.nan_to_num) before explaining them.")


def num_classes(logits_fn: Callable[[Array], Array], x: Array) -> int:
    """K, from the abstract output shape of ``logits_fn`` (no computation)."""
    out = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    if len(out.shape) != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"logits_fn must map (B, ...) inputs to (B, K) logits; for x of shape "
                         f"{x.shape} it returned shape {out.shape}.")
    return out.shape[-1]


def as_target(target, batch: int, k: int, name: str = "target") -> Array:
    """Broadcasts ``target`` (int or (B,) ints) to int32 (B,) and checks 0 <= target < K where the
    value is concrete; traced targets are not inspected."""
    if is_concrete(target):
        t = np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices; got dtype {t.dtype}.")
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
            raise ValueError(f"{name} must be an int or have shape ({batch},); got shape {t.shape}.")
        if t.size and (t.min() < 0 or t.max() >= k):
            raise ValueError(f"{name} must lie in [0, {k}) for a model with {k} classes; got "
                             f"range [{t.min()}, {t.max()}].")
        return jnp.broadcast_to(jnp.asarray(t, jnp.int32), (batch,))
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class indices; got dtype {t.dtype}.")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch):
        raise ValueError(f"{name} must be an int or have shape ({batch},); got shape {t.shape}.")
    return jnp.broadcast_to(t.astype(jnp.int32), (batch,))


def check_images(x: Array, name: str = "x") -> None:
    """The checks of every method's input ``x``: a non-empty batch (B, ...) of floating-point
    values (the maps are gradients w.r.t. x), finite where concrete."""
    check_batch(x, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} has dtype {x.dtype}; the attributions differentiate w.r.t. it, "
                         f"which needs floating-point images: convert first, e.g. "
                         f"{name}.astype(jnp.float32) / 255 for 8-bit pixels.")
    check_finite(x, name)


def check_floating_images(v: Array, name: str) -> None:
    """Images given beside x (baselines, references, fills) must be floating point like x: an
    integer array (8-bit pixels, say) would be cast unscaled, on another scale than x."""
    if not jnp.issubdtype(v.dtype, jnp.floating):
        raise ValueError(f"{name} has dtype {v.dtype}; images given beside x must be floating "
                         f"point on x's scale, not cast unscaled: convert first, e.g. "
                         f"{name}.astype(jnp.float32) / 255 for 8-bit pixels.")


def constant_or_array(value, x: Array, name: str) -> Array:
    """``value`` as an array shaped like x: a number (Python, NumPy or 0-d array, traced too) fills
    x's shape; a floating array shaped like x or like one example x[0] is cast and broadcast
    (:func:`check_floating_images`; finiteness is the caller's check)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number or an array; got {value!r}.")
    v = jnp.asarray(value)
    if v.ndim > 0:
        check_floating_images(v, name)
    if v.ndim == 0:
        out = jnp.full_like(x, v.astype(x.dtype))
    elif v.shape == x.shape:
        out = v.astype(x.dtype)
    elif v.shape == x.shape[1:]:
        out = jnp.broadcast_to(v.astype(x.dtype), x.shape)
    else:
        raise ValueError(f"{name} must be a number or shaped like x {x.shape} or like one example "
                         f"{x.shape[1:]}; got shape {v.shape}.")
    return out


def prepare(logits_fn, x: Array, target) -> Array:
    """Checks x (:func:`check_images`) and target; returns target as int32 (B,)."""
    check_images(x)
    return as_target(target, x.shape[0], num_classes(logits_fn, x))


def select(logits: Array, target: Array) -> Array:
    """logits (N, K), target (N,) -> logits[n, target[n]] (N,)."""
    return jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]


def target_score_fn(logits_fn, target: Array) -> ScoreFn:
    """z (N, ...) -> per-example target logits (N,). N may be a multiple of len(target): the
    targets are then tiled (path points / noise samples stacked along the batch axis)."""

    def score(z):
        logits = logits_fn(z)
        reps = logits.shape[0] // target.shape[0]
        return select(logits, jnp.tile(target, reps))

    return score


def grad_of_scores(score_fn: ScoreFn, z: Array) -> Array:
    """Per-example gradients d score_n / d z_n, shaped like z (one backward pass)."""
    return jax.grad(lambda v: jnp.sum(score_fn(v)))(z)


def input_gradient(logits_fn, x: Array, target: Array) -> Array:
    """d logits[b, target[b]] / d x[b], shaped like x."""
    return grad_of_scores(target_score_fn(logits_fn, target), x)


def stacked_scores(logits_fn, target: Array, z: Array) -> Array:
    """Target logits of c stacked copies of the batch, z (c, B, ...) -> (c, B), in one call
    (``vmap`` over the stack; XLA batches the layers)."""
    return jax.vmap(lambda v: select(logits_fn(v), target))(z)


def stacked_grad(logits_fn, target: Array, z: Array) -> Array:
    """Input gradients of the target logits of c stacked copies of the batch, z (c, B, ...) ->
    (c, B, ...), in one call.

    ``vmap`` over the stack measured as fast as or faster than folding the stack into the batch
    axis (3x faster for SmallGAP on CPU, equal for ResNet-18), and it needs no target tiling.
    """
    return jax.vmap(lambda v: input_gradient(logits_fn, v, target))(z)


def per_example(v: Array, x: Array) -> Array:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return jnp.reshape(v, v.shape[:1] + (1,) * (x.ndim - 1))


AUTO = "auto"
#: Images per model call that ``chunk_size="auto"`` aims at on CPU (see :func:`auto_chunk_size`).
CPU_IMAGES_PER_CALL = 16
#: Share of an accelerator's memory that ``chunk_size="auto"`` lets one chunk's estimate take.
ACCELERATOR_MEMORY_FRACTION = 0.5


def check_chunk_size(chunk_size, total: int, name: str = "chunk_size") -> int:
    if chunk_size is None:
        return total
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"{name} must be a positive int or None; got {chunk_size!r}.")
    return int(min(chunk_size, total))


def _traced_eqns(fn: Callable[[], object]):
    """Every equation of ``fn``'s program (``jax.make_jaxpr``, no computation), nested ones too."""
    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for sub in jaxprs_in_params(eqn.params):
                yield from walk(sub)

    return walk(jax.make_jaxpr(fn)().jaxpr)


def traced_bytes(fn: Callable[[], object]) -> int:
    """Sum of the sizes of every intermediate array in ``fn``'s program (``jax.make_jaxpr``, no
    computation; nested jaxprs counted once). An upper estimate of the memory one call needs: it
    counts every value as if all were alive at once and none were fused away."""
    total = 0
    for eqn in _traced_eqns(fn):
        for v in eqn.outvars:
            shape, dtype = getattr(v.aval, "shape", None), getattr(v.aval, "dtype", None)
            if shape is not None and dtype is not None:
                total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def has_xla_convolution(fn: Callable[[], object]) -> bool:
    """Whether ``fn``'s program holds XLA's convolution (``conv_general_dilated``) rather than only
    jaxadv's fast-path primitives (``jaxadv.models.fastpath``)."""
    return any(eqn.primitive.name == "conv_general_dilated" for eqn in _traced_eqns(fn))


def _device_bytes_limit() -> int | None:
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # noqa: BLE001  (backends without memory statistics)
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def auto_chunk_size(total: int, *, batch: int, one_point: Callable[[], object] | None = None,
                    platform: str | None = None, bytes_limit: int | None = None) -> int:
    """The number of points (path points, noise samples) per model call of ``chunk_size="auto"``.

    * CPU: at most ``max(1, CPU_IMAGES_PER_CALL // batch)`` points, so that each call sees about
      16 images (at least the batch): calls of tens of images keep the cores busy, much larger
      ones run out of cache, so both IG and SmoothGrad ran faster this way than with every point
      at once (docs/performance.md, "Chunked by default"; ``python -m
      experiments.benchmarks.attributions --models smallgap,preact_resnet18 --chunk_sweep
      1,2,4,8,auto,all --out results/attributions_chunks_1dev.json``). 32 images until
      2026-12-06; since the fast path runs ResNet-18's 3x3 layers in Winograd's form over chunks
      of images itself, 16 images per call were the fastest on ResNet-18 at batches 16 and 4
      (docs/performance.md, "16 images per call"; ``--chunk_sweep 1,2,4,all --out
      results/attributions_chunks_interleaved_1dev.json`` and ``--batch 4 --chunk_sweep
      2,4,8,all --out results/attributions_chunks_interleaved_b4_1dev.json``). Memory is then
      that of about 16 images (or one batch), whatever the number of points. Except where a point's
      program holds XLA's own convolution (a model without jaxadv's CPU fast path, e.g. one's own
      Flax model, or ``JAXADV_FASTPATH=0``; :func:`has_xla_convolution`): inside the loop over
      chunks XLA:CPU runs its convolution gradients several times slower, so there all points go
      in one call (``--chunk_sweep 1,auto,all --no_fastpath``,
      results/attributions_chunks_nofastpath_1dev.json in docs/performance.md).
    * Accelerators: all points in one call (the fastest there) unless ``one_point``'s traced
      intermediates (:func:`traced_bytes`, an over-estimate) times the number of points would pass
      ``ACCELERATOR_MEMORY_FRACTION`` of the device's memory (``bytes_limit``, default from
      ``jax.local_devices()[0].memory_stats()``); then the largest chunk within it. Under data
      parallelism the estimate is for the whole batch, so it errs towards smaller chunks.

    Either way the points are then spread evenly over the calls that cap needs (50 points at a
    cap of 16: four calls of 13), so little of the last chunk is padding.

    Args:
      total: number of points.
      batch: images per point (B).
      one_point: zero-argument function evaluating one point (traced, not run): the memory
        estimate on accelerators, the convolution check on CPU.
      platform: ``jax.default_backend()`` unless given.
      bytes_limit: device memory in bytes; default from the device's memory statistics.
    """
    platform = jax.default_backend() if platform is None else platform
    if platform == "cpu":
        if one_point is not None and has_xla_convolution(one_point):
            return int(total)  # a loop over chunks would slow XLA:CPU's convolutions down
        cap = CPU_IMAGES_PER_CALL // max(int(batch), 1)
    else:
        limit = _device_bytes_limit() if bytes_limit is None else bytes_limit
        if limit is None or one_point is None:
            return int(total)
        cap = int(ACCELERATOR_MEMORY_FRACTION * limit) // max(traced_bytes(one_point), 1)
    cap = min(total, max(1, cap))
    # As many calls as the cap needs, with the points spread evenly over them (less padding).
    return int(-(-total // -(-total // cap)))


def resolve_chunk_size(chunk_size, total: int, *, batch: int,
                       one_point: Callable[[], object] | None = None,
                       name: str = "chunk_size") -> int:
    """``chunk_size`` as points per call: an int (capped at ``total``), None (all ``total`` at
    once) or ``"auto"`` (:func:`auto_chunk_size`)."""
    if isinstance(chunk_size, str):
        if chunk_size == AUTO:
            return auto_chunk_size(total, batch=batch, one_point=one_point)
        raise ValueError(f"{name} must be a positive int, None or {AUTO!r}; got {chunk_size!r}.")
    return check_chunk_size(chunk_size, total, name)


def scan_chunks(body: Callable, init, xs):
    """``lax.scan(body, init, xs)[0]``, or one direct call when there is a single chunk: XLA
    optimises straight-line code better than a one-trip loop (3x faster on CPU here)."""
    if jax.tree.leaves(xs)[0].shape[0] == 1:
        return body(init, jax.tree.map(lambda v: v[0], xs))[0]
    return jax.lax.scan(body, init, xs)[0]


def chunked_weighted_sum(point_fn: Callable[[Array], Array], values: np.ndarray,
                         weights: np.ndarray, chunk_size: int, like: Array, *,
                         unroll: bool = False) -> Array:
    """sum_i weights[i] * point_fn(values[i]) evaluated ``chunk_size`` points at a time.

    ``point_fn(v (c,)) -> (c, *like.shape)`` evaluates a chunk of points. Points are
    padded to a multiple of the chunk size with weight 0, and the chunks are folded with
    ``lax.scan`` into one running sum, so memory is one chunk's worth, whatever the number of points.
    A single chunk runs without a loop (XLA optimises straight-line code better: on CPU a one-trip
    scan was 3x slower). ``unroll=True`` unrolls the scan: faster on CPU (here 2-3x), but XLA may
    then keep several chunks' activations alive at once, so memory is no longer bounded by a chunk.
    """
    n = len(values)
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n
    v = np.concatenate([np.asarray(values, np.float64), np.repeat(values[-1:], pad)])
    w = np.concatenate([np.asarray(weights, np.float64), np.zeros(pad)])
    v = jnp.asarray(v.reshape(num_chunks, chunk_size), like.dtype)
    w = jnp.asarray(w.reshape(num_chunks, chunk_size), like.dtype)
    if num_chunks == 1:  # no loop: XLA optimises a straight-line program better
        return jnp.tensordot(w[0], point_fn(v[0]), axes=1)

    def body(acc, vw):
        vals, ws = vw
        out = point_fn(vals)
        return acc + jnp.tensordot(ws, out, axes=1), None

    acc, _ = jax.lax.scan(body, jnp.zeros(like.shape, like.dtype), (v, w), unroll=bool(unroll))
    return acc
