"""Data sources behind one spec string.

Specs:
  "digits"          scikit-learn's `load_digits` (1,797 real 8×8 grey images with 17 grey levels 0..16,
                    shipped in the package; stored as uint8 round(v·255/16)): the embedded default. A fixed
                    stratified 80/20 train/test split (`train_test_split(test_size=0.2, stratify=labels,
                    random_state=0)`, each side kept in the original order): 1,437 / 360 images.
  "npz:<dir>"       split files `<split>-0000K-of-0000N.npz` holding `images` uint8 (N, H, W[, C]), `labels`
                    int32 and `class_names` (the format of shared/data: CIFAR-10, MNIST, Fashion-MNIST).
  "<name>"          ("cifar10", "mnist", "fashion_mnist", ...) the npz folder of that name under `data_dir`,
                    $RSIM_DATA_DIR, ./data or the shared/data folder beside the checkout, else "tfds:<name>".
  "tfds:<name>"     tensorflow-datasets through `tfds.data_source` (random access over ArrayRecord files; no
                    TensorFlow needed). Needs files prepared with
                    `tfds build <name> --file_format=array_record` in `data_dir` / $TFDS_DATA_DIR (or a machine
                    with a network, `download=True`); nothing here downloads by default.

Two ways to open a split:
  `load(spec, split)`         an `ArrayDataset` in memory (uint8 `(N, H, W, C)` images, int32 labels).
  `open_source(spec, split)`  a random-access source (`len`, `[i]` → {"image", "label"}): the `ArrayDataset`
                              itself for in-memory specs, a `TfdsSource` reading records on demand for tfds
                              (ImageNet streams; its images may differ in size and are cropped in the pipeline).
Both carry `num_classes`, `class_names`, `name`, `mean`, `std` (per-channel, on [0, 1] pixels, of the training
split) and `image_shape` (the shape of the batches the pipeline makes). `dataset_info(spec)` gives the same
metadata without loading the images.

Modules (one job each; this package's namespace re-exports their public names):
  spec        spec string → backend and location (`resolve`, `data_dirs`)
  dataset     `ArrayDataset`, `DatasetInfo`, the `Source` protocol
  transform   `image_size` / `channels` / `resize` checks and their application
  statistics  `KNOWN_STATISTICS`, per-channel mean/std from pixels, adaptation to a channel conversion
  digits      the scikit-learn digits backend
  npz         the npz split-file backend (shared/data)
  tfds        the tensorflow-datasets backend (`TfdsSource`)
"""

from __future__ import annotations

import dataclasses
import functools
import os

from rsim_jax.data.sources.dataset import ArrayDataset, DatasetInfo, Source, readonly
from rsim_jax.data.sources.digits import (DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, digits_info, digits_splits,
                                          digits_statistics, load_digits_split)
from rsim_jax.data.sources.npz import load_npz, npz_arrays, npz_files, npz_info, npz_splits, npz_statistics
from rsim_jax.data.sources.spec import SPEC_HELP, data_dirs, resolve
from rsim_jax.data.sources.statistics import KNOWN_STATISTICS, adapt_statistics, base_name, channel_statistics
from rsim_jax.data.sources.tfds import (IMAGENET_IMAGE_SIZE, STATISTICS_SAMPLE, TfdsSource, load_tfds,
                                        tfds_data_dir, tfds_features, tfds_info, tfds_statistics)
from rsim_jax.data.sources.transform import RESIZE_METHODS, check_transform_args, fit_images

__all__ = [
    "DIGITS_SPLIT_SEED", "DIGITS_TEST_FRACTION", "IMAGENET_IMAGE_SIZE", "KNOWN_STATISTICS", "RESIZE_METHODS",
    "SPEC_HELP", "STATISTICS_SAMPLE", "ArrayDataset", "DatasetInfo", "Source", "TfdsSource", "adapt_statistics",
    "base_name", "channel_statistics", "check_transform_args", "data_dirs", "dataset_info", "digits_info",
    "digits_splits", "digits_statistics", "fit_images", "load", "load_digits_split", "load_npz", "load_tfds",
    "npz_arrays", "npz_files", "npz_info", "npz_splits", "npz_statistics", "open_source", "readonly", "resolve",
    "tfds_data_dir", "tfds_features", "tfds_info", "tfds_statistics",
]


def load(
    spec: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "nearest",
    download: bool = False,
) -> ArrayDataset:
  """Loads split `split` of the source `spec` (see the module docstring) into memory.

  Args:
    spec: "digits", "npz:<dir>", "tfds:<name>", or a data-set name ("cifar10", "mnist", ...).
    split: "train" or "test" (or any split the source has; tfds slicing such as "train[:10%]" works).
    data_dir: where named npz folders are looked for first; the tfds data directory.
    image_size: resize to `image_size × image_size` (digits 8 → 16 or 32, MNIST 28 → 32).
    channels: 1 or 3: repeat a grey channel to 3, or convert colour to grey (luma).
    resize: "nearest" (pixel replication), "bilinear" (Pillow's, antialiased) or "pad" (zero border).
    download: let tensorflow-datasets download and prepare a missing tfds set (needs a network).

  Returns:
    An `ArrayDataset`; `mean`/`std` are those of the training split after the same transform (known values
    for CIFAR-10/100, MNIST, Fashion-MNIST; computed from the pixels otherwise).
  """
  check_transform_args(image_size, channels, resize)
  kind, where = resolve(spec, data_dir)
  if kind == "digits":
    ds = load_digits_split(split)
  elif kind == "npz":
    ds = load_npz(where, split, spec)
  else:
    ds = load_tfds(where, split, data_dir, download)
  if image_size is None and channels is None:
    return ds
  images = fit_images(ds.images, image_size, channels, resize)
  mean, std = _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize)
  return dataclasses.replace(ds, images=images, mean=mean, std=std)


def _stat_key(kind: str, where) -> str | None:
  if kind == "npz":
    return where.name
  return base_name(where) if kind == "tfds" else None


def _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize):
  """Known statistics (adapted to `channels`) where they stay valid, else those of the transformed train split."""
  key = _stat_key(kind, where)
  if key in KNOWN_STATISTICS and not (channels == 1 and len(KNOWN_STATISTICS[key][0]) == 3):
    return adapt_statistics(*KNOWN_STATISTICS[key], channels)
  return _train_statistics(spec, data_dir, image_size, channels, resize)


@functools.lru_cache(maxsize=16)
def _train_statistics(spec, data_dir, image_size, channels, resize):
  """mean/std of the transformed training split."""
  train = load(spec, "train", data_dir=data_dir)
  return channel_statistics(fit_images(train.images, image_size, channels, resize))


def open_source(
    spec: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "nearest",
    resize_size: int | None = None,
    download: bool = False,
) -> ArrayDataset | TfdsSource:
  """A random-access source of split `split`: `len`, `[i]` → {"image", "label"}, `num_classes`, `image_shape`.

  In-memory specs ("digits", "npz:", npz folders) give `load`'s `ArrayDataset`; tfds specs give a `TfdsSource`
  that reads records on demand (ImageNet: variable-size images, cropped to `image_size` (224) by the pipeline;
  evaluation resizes the shorter side to `resize_size` (256) first). Other arguments as `load`.
  """
  check_transform_args(image_size, channels, resize)
  kind, where = resolve(spec, data_dir)
  if kind != "tfds":
    return load(spec, split, data_dir=data_dir, image_size=image_size, channels=channels, resize=resize)
  return TfdsSource(where, split, data_dir=data_dir, image_size=image_size, channels=channels, resize=resize,
                    resize_size=resize_size, download=download)


def dataset_info(
    spec: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    resize: str = "nearest",
) -> DatasetInfo:
  """Metadata of a source without reading its images: classes, batch image shape, mean/std, split sizes.

  (For an unknown npz or tfds data set the statistics are computed from its training split.)
  """
  check_transform_args(image_size, channels, resize)
  kind, where = resolve(spec, data_dir)
  if kind == "tfds":
    return tfds_info(where, data_dir, image_size=image_size, channels=channels, resize=resize)
  info = digits_info() if kind == "digits" else npz_info(where, spec)
  if image_size is None and channels is None:
    return info
  h, w, c = info.image_shape
  mean, std = _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize)
  return dataclasses.replace(info, image_shape=(image_size or h, image_size or w, channels or c), mean=mean,
                             std=std)
