"""Data: sources behind one spec string; class-balanced nested subsets; deterministic, resumable, per-process
batches.

    from rsim_jax import data
    train = data.load("digits", "train")                  # or "npz:../shared/data/cifar10", "cifar10", "tfds:mnist"
    small = data.subsample(train, fraction=0.25, seed=0)  # class-balanced; nested across fractions for one seed
    for batch in data.train_batches(small, batch_size=128, seed=0, augment=True, start_step=step):
      batch = data.to_global(batch, mesh)                 # {"image", "label"} sharded over the mesh's "data" axis
    for batch in data.eval_batches(data.load("digits", "test"), batch_size=256):  # + "mask" on the padded tail
      ...
    imagenet = data.open_source("tfds:imagenet2012", "train")  # random access, streamed through grain

API
  load(spec, split, *, data_dir=None, image_size=None, channels=None, resize="nearest", download=False)
      -> ArrayDataset(images uint8 (N, H, W, C), labels int32 (N,), num_classes, class_names, name, mean, std)
  open_source(spec, split, *, data_dir=None, image_size=None, channels=None, resize="nearest",
              resize_size=None, download=False) -> ArrayDataset | TfdsSource   (len, [i], labels, select)
  dataset_info(spec, *, data_dir=None, image_size=None, channels=None, resize="nearest")
      -> DatasetInfo(name, num_classes, class_names, image_shape, mean, std, splits)
  subsample(ds, *, fraction=None, count=None, seed) -> same kind;  select(ds, indices)
  train_batches(ds, *, batch_size, seed, augment=False, start_step=0, num_steps=None, process_index=None,
                process_count=None, crop_padding=None, backend="auto", num_threads=None)
      -> Iterator[{"image": float32 (b, H, W, C), "label": int32 (b,)}],  b = batch_size // process_count
  eval_batches(ds, *, batch_size, process_index=None, process_count=None, backend="auto", num_threads=None)
      -> Iterator[{"image", "label", "mask": bool (b,)}]
  to_global(batch, mesh) -> {key: jax.Array (b · process_count, ...) sharded over "data"}

Specs, splits and statistics: `sources` (a package: `spec`, `dataset`, `transform`, `statistics` and one module per
backend, `digits`, `npz`, `tfds`); batching, resumption and process shares: `pipeline`; subsets:
`subsets`; image transforms and per-example randomness: `augment`.
"""

from rsim_jax.data.augment import (
    center_crop,
    cifar_augment,
    cifar_augment_batch,
    convert_channels,
    example_keys,
    inception_crop,
    normalize,
    resize_images,
)
from rsim_jax.data.pipeline import eval_batches, process_share, steps_per_epoch, to_global, train_batches
from rsim_jax.data.sources import (
    KNOWN_STATISTICS,
    ArrayDataset,
    DatasetInfo,
    Source,
    TfdsSource,
    data_dirs,
    dataset_info,
    load,
    npz_splits,
    open_source,
    tfds_data_dir,
)
from rsim_jax.data.subsets import select, subsample, subset_indices

__all__ = [
    "KNOWN_STATISTICS", "ArrayDataset", "DatasetInfo", "Source", "TfdsSource", "center_crop", "cifar_augment",
    "cifar_augment_batch", "convert_channels", "data_dirs", "dataset_info", "eval_batches", "example_keys",
    "inception_crop", "load", "normalize", "npz_splits", "open_source", "process_share", "resize_images",
    "select", "steps_per_epoch", "subsample", "subset_indices", "tfds_data_dir", "to_global", "train_batches",
]
