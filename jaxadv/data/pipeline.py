"""Deterministic numpy batch pipelines: shuffled training batches and padded, masked eval batches.

Batches are dicts ``{"image": float32 (B, H, W, C) in [0, 1], "label": int32 (B,), "mask": bool
(B,)}``. Training batches are full (mask all True); evaluation batches are padded to a fixed shape
with ``mask`` False on the padding, so no example is dropped and nothing recompiles on the last batch.

Multi-host: with ``jax.process_count() > 1`` every process computes the same global order from the
same key and keeps its own contiguous slice of each global batch (``process_slice``).
"""

from collections.abc import Iterator

import jax
import numpy as np

from jaxadv.data.sources import Source

Batch = dict[str, np.ndarray]


def _numpy_rng(key: jax.Array) -> np.random.Generator:
    """A numpy generator seeded deterministically from a JAX key (so resume reproduces order)."""
    data = np.asarray(jax.random.key_data(key)).astype(np.uint64).ravel()
    return np.random.Generator(np.random.PCG64(data.tolist()))


def epoch_permutation(num_examples: int, key: jax.Array, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: a permutation of range(num_examples), a function of key+epoch."""
    return _numpy_rng(jax.random.fold_in(key, epoch)).permutation(num_examples)


def process_slice(global_batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> slice:
    """The slice of a global batch that this process loads."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"Global batch size {global_batch_size} is not divisible by the "
                         f"{process_count} processes; choose a multiple of {process_count}.")
    per = global_batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps per epoch (the last partial batch of each epoch is dropped in training)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive; got {batch_size}.")
    if num_examples < batch_size:
        raise ValueError(f"The dataset has {num_examples} examples, fewer than one batch of "
                         f"{batch_size}; lower the batch size.")
    return num_examples // batch_size


def train_batches(source: Source, *, batch_size: int, key: jax.Array, start_step: int = 0,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> Iterator[Batch]:
    """An endless stream of shuffled training batches, starting at global step ``start_step``.

    Epoch e uses ``epoch_permutation(len(source), key, e)``; step s is batch s % steps_per_epoch of
    epoch s // steps_per_epoch, so a resumed run sees exactly the batches an uninterrupted run would.
    ``batch_size`` is the global batch size; each process yields its own slice.
    """
    n = len(source)
    spe = steps_per_epoch(n, batch_size)
    part = process_slice(batch_size, process_index, process_count)
    step = start_step
    while True:
        epoch, offset = divmod(step, spe)
        order = epoch_permutation(n, key, epoch)
        for b in range(offset, spe):
            idx = order[b * batch_size:(b + 1) * batch_size][part]
            images, labels = source.get(idx)
            yield {"image": images, "label": labels, "mask": np.ones(len(idx), bool)}
        step = (epoch + 1) * spe


def eval_batches(source: Source, *, batch_size: int, num_examples: int | None = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[Batch]:
    """The first ``num_examples`` (default all) examples in order, in batches padded to
    ``batch_size`` (global) with a mask; each process yields its slice of every global batch."""
    n = len(source) if num_examples is None else min(num_examples, len(source))
    part = process_slice(batch_size, process_index, process_count)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        idx = np.where(mask, idx, 0)[part]
        images, labels = source.get(idx)
        yield {"image": images, "label": labels, "mask": mask[part]}


def num_eval_batches(num_examples: int, batch_size: int) -> int:
    """Padded evaluation batches needed for ``num_examples`` (the last one is masked)."""
    return -(-num_examples // batch_size)
