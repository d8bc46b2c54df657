"""The "tfds:<name>" source: tensorflow-datasets through `tfds.data_source` (random access over ArrayRecord
files; no TensorFlow needed).

Needs files prepared with `tfds build <name> --file_format=array_record` in `data_dir` / $TFDS_DATA_DIR (or a
machine with a network, `download=True`); nothing here downloads by default. `TfdsSource` reads records on
demand (ImageNet streams: its images differ in size and are cropped in the pipeline); `load_tfds` reads a
fixed-size split into an `ArrayDataset`. Statistics are `KNOWN_STATISTICS` where known (ImageNet's for every
variable-size set), else those of ≤ `STATISTICS_SAMPLE` training images.
"""

from __future__ import annotations

import functools
import os
import pathlib
from typing import Any

import numpy as np

from rsim_jax.data import augment
from rsim_jax.data.sources.dataset import ArrayDataset, DatasetInfo, readonly
from rsim_jax.data.sources.statistics import KNOWN_STATISTICS, adapt_statistics, base_name, channel_statistics
from rsim_jax.data.sources.transform import fit_images

IMAGENET_IMAGE_SIZE = 224
STATISTICS_SAMPLE = 10_000  # training examples read to estimate mean/std of an unknown tfds data set


def tfds_module():
  """`tensorflow_datasets`, imported on use; ImportError naming the `tfds` extra where it is not installed."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("tfds sources need the `tfds` extra: pip install 'rsim_jax[tfds]'.") from e
  return tfds


def tfds_data_dir(data_dir=None) -> pathlib.Path:
  """The tfds data directory used: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _missing(name: str, split: str, data_dir, error: Exception) -> ValueError:
  where = tfds_data_dir(data_dir)
  present = sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else None
  found = f"it holds {present}" if present else ("it is empty" if present is not None else "it does not exist")
  return ValueError(
      f"`spec` 'tfds:{name}' `split` {split!r}: no prepared ArrayRecord files in `data_dir` {str(where)!r} "
      f"({found}). Prepare them on a machine with a network: `tfds build {name} --file_format=array_record "
      f"--data_dir {where}` (ImageNet needs its manual download), or pass `download=True`. "
      f"tfds said: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
  )


def open_tfds(name: str, split: str, data_dir, download: bool, decoders=None):
  """`tfds.data_source(name, split=split, ...)`, its failures turned into ValueErrors that name the `spec` or
  `split` and say how to prepare the files."""
  tfds = tfds_module()
  kwargs = {"decoders": decoders} if decoders else {}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown data `spec` 'tfds:{name}': tensorflow-datasets has no such data set.") from e
  except ValueError as e:
    if "split" in str(e).lower():
      raise ValueError(f"`split` {split!r} of 'tfds:{name}': {str(e).splitlines()[0]}") from e
    raise _missing(name, split, data_dir, e) from e
  except (NotImplementedError, FileNotFoundError, OSError, AssertionError) as e:
    raise _missing(name, split, data_dir, e) from e


@functools.lru_cache(maxsize=16)
def tfds_features(name: str, data_dir) -> tuple[tuple[str, ...], tuple, dict[str, int]]:
  """(class_names, native image shape with None for variable sides, {split: size})."""
  tfds = tfds_module()
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  class_names = tuple(features["label"].names)
  shape = tuple(features["image"].shape)
  try:
    splits = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
  except Exception:  # noqa: BLE001 - metadata without prepared files
    splits = {}
  return class_names, shape, splits


def is_variable(shape: tuple) -> bool:
  """Whether a native image shape `(H, W, C)` has a variable side (None)."""
  return any(s is None for s in shape[:2])


class TfdsSource:
  """A tfds split read record by record (`tfds.data_source`: ArrayRecord, random access, no TensorFlow).

  `src[i]` → {"image": uint8 (H, W, C), "label": int32}. Fixed-size data sets (CIFAR, MNIST, ...) come out
  resized/converted like `load` does; variable-size ones (ImageNet) come out as stored, and the pipeline crops
  them to `image_shape` (Inception crop for training, resize + centre crop for evaluation).

  Attributes:
    name, split, num_classes, class_names, mean, std: as `ArrayDataset`.
    image_shape: `(H, W, C)` of the pipeline's batches.
    variable_size: True when records differ in size (cropped in the pipeline).
    resize_size: the evaluation resize of the shorter side (variable-size sets; 256 for 224).
  """

  def __init__(self, name: str, split: str, *, data_dir=None, image_size=None, channels=None,
               resize: str = "nearest", resize_size: int | None = None, download: bool = False,
               _indices: np.ndarray | None = None):
    self._args = dict(data_dir=data_dir, image_size=image_size, channels=channels, resize=resize,
                      resize_size=resize_size, download=download)
    self.tfds_name, self.split = name, split
    self.name = f"tfds:{name}"
    self._source = open_tfds(name, split, data_dir, download)
    class_names, native, self.splits = tfds_features(name, data_dir)
    self.class_names = class_names
    self.num_classes = len(class_names)
    self.variable_size = is_variable(native)
    self._indices = None if _indices is None else np.asarray(_indices, np.int64)
    self._image_size, self._channels, self._resize = image_size, channels, resize
    c = int(native[2]) if len(native) > 2 and native[2] else 3
    out_c = c if channels is None else int(channels)
    if self.variable_size:
      size = IMAGENET_IMAGE_SIZE if image_size is None else int(image_size)
      self.image_shape = (size, size, out_c)
      self.resize_size = int(round(size / 0.875)) if resize_size is None else int(resize_size)
    else:
      h, w = int(native[0]), int(native[1])
      if image_size is not None:
        h = w = int(image_size)
      self.image_shape = (h, w, out_c)
      self.resize_size = None
    self.mean, self.std = tfds_statistics(name, data_dir, channels, image_size, resize, self.variable_size)
    self._labels = None

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def _record(self, index: int) -> dict[str, Any]:
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for {self.name} {self.split!r} of {n} examples.")
    index = index % n
    return self._source[int(index if self._indices is None else self._indices[index])]

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self._record(index)
    image = np.asarray(record["image"], np.uint8)
    if image.ndim == 2:
      image = image[..., None]
    if not self.variable_size:
      image = fit_images(image[None], self._image_size, self._channels, self._resize)[0]
    elif self._channels is not None:
      image = augment.convert_channels(image, self._channels)
    return {"image": image, "label": np.int32(record["label"])}

  @property
  def labels(self) -> np.ndarray:
    """int32 `(N,)`: every record's label (read once with image decoding skipped; cached)."""
    if self._labels is None:
      tfds = tfds_module()
      source = open_tfds(self.tfds_name, self.split, self._args["data_dir"], False,
                         decoders={"image": tfds.decode.SkipDecoding()})
      order = range(len(source)) if self._indices is None else self._indices
      self._labels = readonly(np.fromiter((int(source[int(i)]["label"]) for i in order), np.int32,
                                          count=len(self)))
    return self._labels

  def select(self, indices) -> TfdsSource:
    """The records at `indices` (positions in this source), in that order."""
    indices = np.asarray(indices, np.int64)
    base = indices if self._indices is None else self._indices[indices]
    out = TfdsSource(self.tfds_name, self.split, **self._args, _indices=base)
    if self._labels is not None:
      out._labels = readonly(self._labels[indices])
    return out

  def info(self) -> DatasetInfo:
    return DatasetInfo(self.name, self.num_classes, self.class_names, self.image_shape, self.mean, self.std,
                       dict(self.splits))

  def __repr__(self) -> str:
    return f"TfdsSource({self.tfds_name!r}, {self.split!r}, n={len(self)}, image_shape={self.image_shape})"


@functools.lru_cache(maxsize=16)
def tfds_statistics(name, data_dir, channels, image_size, resize, variable_size):
  """Known statistics (ImageNet's for every variable-size set), else those of ≤ 10,000 training images."""
  base = base_name(name)
  if variable_size and base not in KNOWN_STATISTICS:
    base = "imagenet2012"
  if base in KNOWN_STATISTICS and (variable_size or not (channels == 1 and len(KNOWN_STATISTICS[base][0]) == 3)):
    return adapt_statistics(*KNOWN_STATISTICS[base], channels)
  source = open_tfds(name, "train", data_dir, False)
  sample = []
  for i in range(min(len(source), STATISTICS_SAMPLE)):
    image = np.asarray(source[i]["image"], np.uint8)
    sample.append(image[..., None] if image.ndim == 2 else image)
  return channel_statistics(fit_images(np.stack(sample), image_size, channels, resize))


def load_tfds(name: str, split: str, data_dir, download: bool) -> ArrayDataset:
  """A fixed-size tfds split read whole into an `ArrayDataset` (16 reader threads); ValueError pointing to
  `open_source` for variable-size images."""
  src = TfdsSource(name, split, data_dir=data_dir, download=download)
  if src.variable_size:
    raise ValueError(f"`spec` 'tfds:{name}' has images of varying size ({len(src)} in {split!r}); they cannot be "
                     "loaded into memory as one array: use `open_source` (the pipeline crops them).")
  from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

  with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
    records = list(pool.map(src.__getitem__, range(len(src)), chunksize=256))
  images = np.zeros((0,) + src.image_shape, np.uint8)
  if records:
    images = np.stack([r["image"] for r in records])
  labels = np.asarray([r["label"] for r in records], np.int32)
  return ArrayDataset(images, labels, src.num_classes, src.class_names, src.name, src.mean, src.std)


def tfds_info(name: str, data_dir, *, image_size=None, channels=None, resize: str = "nearest") -> DatasetInfo:
  """The metadata of 'tfds:<name>' after the transform, from the builder's features (no record is read,
  except ≤ `STATISTICS_SAMPLE` training images for the statistics of an unknown fixed-size set)."""
  class_names, native, splits = tfds_features(name, data_dir)
  variable = is_variable(native)
  c = int(native[2]) if len(native) > 2 and native[2] else 3
  if variable:
    h = w = IMAGENET_IMAGE_SIZE if image_size is None else image_size
  else:
    h, w = (int(native[0]), int(native[1])) if image_size is None else (image_size, image_size)
  mean, std = tfds_statistics(name, data_dir, channels, image_size, resize, variable)
  return DatasetInfo(f"tfds:{name}", len(class_names), class_names, (h, w, channels or c), mean, std, splits)
