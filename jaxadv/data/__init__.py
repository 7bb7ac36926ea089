"""Datasets by name and deterministic batch pipelines (numpy in, numpy out)."""

from jaxadv.data.idx import CorruptDataError, parse_idx, read_idx, write_idx
from jaxadv.data.pipeline import (
    epoch_permutation,
    eval_batches,
    num_eval_batches,
    process_slice,
    steps_per_epoch,
    train_batches,
)
from jaxadv.data.sources import (
    ArrayDataset,
    Subset,
    TfdsSource,
    load_dataset,
    load_idx_dataset,
)

__all__ = [
    "ArrayDataset", "CorruptDataError", "Subset", "TfdsSource", "epoch_permutation", "eval_batches",
    "load_dataset", "load_idx_dataset", "num_eval_batches", "parse_idx", "process_slice",
    "read_idx", "steps_per_epoch", "train_batches", "write_idx",
]
