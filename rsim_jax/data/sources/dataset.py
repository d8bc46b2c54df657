"""What a source gives: an in-memory split (`ArrayDataset`), the random-access `Source` protocol every split
follows, and a source's metadata (`DatasetInfo`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Metadata of a source (`dataset_info`).

  Attributes:
    name: the spec.
    num_classes, class_names: the label set.
    image_shape: `(H, W, C)` of the pipeline's batches (after `image_size`/`channels`; for variable-size
      tfds images the crop size, 224 by default).
    mean, std: per-channel normalisation statistics on [0, 1] pixels (of the training split).
    splits: examples per split, `{}` where the source does not say.
  """

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  splits: Mapping[str, int]


@runtime_checkable
class Source(Protocol):
  """A random-access split: `len(src)`, `src[i]` → {"image": uint8 (H, W, C), "label": int}, plus metadata."""

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


def readonly(x: np.ndarray) -> np.ndarray:
  """`x` as an array whose `writeable` flag is off (cached splits are shared: nobody may write into them)."""
  x = np.asarray(x)
  x.flags.writeable = False
  return x


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """A split held in memory (its arrays are read-only).

  Attributes:
    images: uint8 `(N, H, W, C)`.
    labels: int32 `(N,)`.
    num_classes: number of classes.
    class_names: names of the classes.
    name: the spec it came from.
    mean, std: per-channel normalisation statistics on [0, 1] pixels (of the training split).
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(f"`images` must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}.")
    if self.labels.shape != (self.images.shape[0],):
      raise ValueError(f"`labels` must have shape ({self.images.shape[0]},), got {self.labels.shape}.")
    if len(self.mean) != self.images.shape[-1] or len(self.std) != self.images.shape[-1]:
      raise ValueError(f"`mean`/`std` need {self.images.shape[-1]} channels, got {self.mean}/{self.std}.")
    object.__setattr__(self, "images", readonly(self.images))
    object.__setattr__(self, "labels", readonly(self.labels.astype(np.int32, copy=False)))

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self.images[index], "label": self.labels[index]}

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self.images.shape[1:])

  def select(self, indices) -> ArrayDataset:
    """The examples at `indices`, in that order (same classes and statistics)."""
    indices = np.asarray(indices, dtype=np.int64)
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

  def info(self) -> DatasetInfo:
    return DatasetInfo(self.name, self.num_classes, self.class_names, self.image_shape, self.mean, self.std,
                       {})
