"""Data: sources behind one spec string, and deterministic, resumable, per-process batches.

    from rsim_jax import data
    train = data.load("digits", "train")                    # or "npz:../shared/data/cifar10", "tfds:cifar10"
    small = data.subsample(train, fraction=0.25, seed=0)    # class-balanced, nested across fractions
    for batch in data.train_batches(small, batch_size=128, seed=0, augment=True, start_step=0): ...
    for batch in data.eval_batches(data.load("digits", "test"), batch_size=256): ...   # + "mask"
    batch = data.to_global(batch, mesh)                     # sharded over the mesh's "data" axis
"""

from rsim_jax.data.pipeline import (
    augment_batch,
    eval_batches,
    normalize,
    subsample,
    subset,
    to_global,
    train_batches,
)
from rsim_jax.data.sources import KNOWN_STATISTICS, ArrayDataset, data_dirs, load, npz_splits

__all__ = [
    "ArrayDataset", "KNOWN_STATISTICS", "augment_batch", "data_dirs", "eval_batches", "load", "normalize",
    "npz_splits", "subsample", "subset", "to_global", "train_batches",
]
