"""The "digits" source: scikit-learn's `load_digits` (1,797 real 8×8 grey images with 17 grey levels 0..16,
shipped in the package; stored as uint8 round(v·255/16)), the embedded default.

A fixed stratified 80/20 train/test split (`train_test_split(test_size=0.2, stratify=labels, random_state=0)`,
each side kept in the original order): 1,437 / 360 images. Both splits and the training statistics are
computed once per process and cached (read-only arrays).
"""

from __future__ import annotations

import functools

import numpy as np

from rsim_jax.data.sources.dataset import ArrayDataset, DatasetInfo, readonly
from rsim_jax.data.sources.statistics import channel_statistics

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
CLASS_NAMES = tuple(str(i) for i in range(10))


@functools.cache
def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """`{"train": (images, labels), "test": (images, labels)}`: uint8 `(N, 8, 8, 1)` and int32 `(N,)`, read-only
  (N = 1,437 / 360)."""
  from sklearn.datasets import load_digits  # noqa: PLC0415
  from sklearn.model_selection import train_test_split  # noqa: PLC0415

  digits = load_digits()
  images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                         stratify=labels, random_state=DIGITS_SPLIT_SEED)
  out = {}
  for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
    out[split] = (readonly(images[idx]), readonly(labels[idx]))
  return out


@functools.cache
def digits_statistics() -> tuple[tuple[float, ...], tuple[float, ...]]:
  """`(mean, std)` of the training split's pixels on [0, 1] (one channel)."""
  return channel_statistics(digits_splits()["train"][0])


def load_digits_split(split: str) -> ArrayDataset:
  """Split `split` ("train" or "test") as an `ArrayDataset` named "digits"."""
  splits = digits_splits()
  if split not in splits:
    raise ValueError(f"`split` {split!r} is not a split of 'digits'; it has {sorted(splits)}.")
  mean, std = digits_statistics()
  images, labels = splits[split]
  return ArrayDataset(images, labels, 10, CLASS_NAMES, "digits", mean, std)


def digits_info() -> DatasetInfo:
  """The metadata of "digits" (untransformed): 10 classes, (8, 8, 1), the split sizes."""
  ds = load_digits_split("train")
  sizes = {k: len(v[1]) for k, v in digits_splits().items()}
  return DatasetInfo("digits", 10, ds.class_names, ds.image_shape, ds.mean, ds.std, sizes)
