"""Data sources behind one spec string, loaded into memory as `ArrayDataset`s.

  "digits"           scikit-learn's `load_digits` (1,797 real 8×8 grey images, shipped in the package): the
                     embedded default. A fixed stratified 80/20 train/test split (1,437 / 360 images).
  "npz:<dir>"        split files `<split>-0000K-of-0000N.npz` holding `images` uint8 (N, H, W[, C]), `labels`
                     int32 and `class_names` (the format of shared/data: CIFAR-10, MNIST, Fashion-MNIST).
  "cifar10", "mnist", "fashion_mnist", ...
                     the npz folder of that name under `data_dir`, `$RSIM_DATA_DIR`, ./data or ../shared/data
                     when one exists, else tensorflow-datasets (below).
  "tfds:<name>"      tensorflow-datasets through `tfds.data_source` (random access over ArrayRecord files, no
                     TensorFlow needed), read into memory. Needs prepared files in `data_dir`/$TFDS_DATA_DIR
                     (`tfds build`, or a machine with a network); nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """A split held in memory.

  Attributes:
    images: uint8 `(N, H, W, C)`.
    labels: int32 `(N,)`.
    num_classes: number of classes.
    class_names: names of the classes.
    name: the source spec it came from.
    mean, std: per-channel normalisation statistics on [0, 1] pixels (of the training split).
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]
  name: str
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(int(s) for s in self.images.shape[1:])

  def select(self, indices) -> "ArrayDataset":
    """The examples at `indices` (same statistics and classes)."""
    indices = np.asarray(indices)
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


# Per-channel mean/std on [0, 1] pixels of the training splits (shared/data/README.md checks these).
KNOWN_STATISTICS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
  return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in np.maximum(x.std(0), 1e-3))


def _digits_splits():
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  # 17 grey levels (0..16) → uint8 0..255.
  images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  idx_train, idx_test = train_test_split(
      np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
  )
  return {"train": (images[np.sort(idx_train)], labels[np.sort(idx_train)]),
          "test": (images[np.sort(idx_test)], labels[np.sort(idx_test)])}


def _load_digits(split: str) -> ArrayDataset:
  splits = _digits_splits()
  if split not in splits:
    raise ValueError(f"The digits source has splits {sorted(splits)}, not {split!r}.")
  images, labels = splits[split]
  mean, std = _channel_statistics(splits["train"][0])
  return ArrayDataset(images, labels, 10, tuple(str(i) for i in range(10)), "digits", mean, std)


_SPLIT_FILE = re.compile(r"^(?P<split>[a-z_]+)-(?P<index>\d+)-of-(?P<count>\d+)\.npz$")


def npz_splits(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """`{split: [files in order]}` of a directory of npz split files."""
  out: dict[str, list[pathlib.Path]] = {}
  for path in sorted(directory.glob("*.npz")):
    m = _SPLIT_FILE.match(path.name)
    if m:
      out.setdefault(m["split"], []).append(path)
  return out


def _load_npz(directory: pathlib.Path, split: str, name: str) -> ArrayDataset:
  if not directory.is_dir():
    raise ValueError(f"npz data directory {str(directory)!r} does not exist.")
  splits = npz_splits(directory)
  if split not in splits:
    raise ValueError(f"No {split!r} split files in {directory}; found splits {sorted(splits) or 'none'}.")
  images, labels, class_names = [], [], None
  for path in splits[split]:
    with np.load(path, allow_pickle=False) as f:
      images.append(f["images"])
      labels.append(f["labels"].astype(np.int32))
      class_names = tuple(str(c) for c in f["class_names"])
  images = np.concatenate(images)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.concatenate(labels)
  key = directory.name
  if key in KNOWN_STATISTICS:
    mean, std = KNOWN_STATISTICS[key]
  else:
    train_images = images if split == "train" else _load_npz(directory, "train", name).images
    mean, std = _channel_statistics(train_images)
  return ArrayDataset(images.astype(np.uint8), labels, len(class_names), class_names, name, mean, std)


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Where named npz sources are looked for, in order."""
  candidates = [data_dir, os.environ.get("RSIM_DATA_DIR"), "data", "../shared/data"]
  here = pathlib.Path(__file__).resolve().parents[2]  # the checkout, for an editable install
  candidates.append(here.parent / "shared" / "data")
  return [pathlib.Path(c) for c in candidates if c]


def _load_tfds(name: str, split: str, data_dir) -> ArrayDataset:
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("tfds sources need the `tfds` extra: pip install 'rsim_jax[tfds]'.") from e
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  records = [source[i] for i in range(len(source))]
  images = np.stack([np.asarray(r["image"]) for r in records]).astype(np.uint8)
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  builder = tfds.builder(name, data_dir=data_dir)
  label_feature = builder.info.features["label"]
  class_names = tuple(label_feature.names)
  if name in KNOWN_STATISTICS:
    mean, std = KNOWN_STATISTICS[name]
  else:
    mean, std = _channel_statistics(images if split == "train" else _load_tfds(name, "train", data_dir).images)
  return ArrayDataset(images, labels, len(class_names), class_names, f"tfds:{name}", mean, std)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
  """Nearest-neighbour resize of square uint8 images (exact pixel replication for integer factors)."""
  h = images.shape[1]
  if h == size:
    return images
  idx = np.minimum((np.arange(size) * h) // size, h - 1)
  return images[:, idx][:, :, idx]


def load(
    spec: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    channels: int | None = None,
) -> ArrayDataset:
  """Loads split `split` of the source `spec` (see the module docstring) into memory.

  Args:
    spec: "digits", "npz:<dir>", "tfds:<name>", or a data-set name ("cifar10", "mnist", ...).
    split: "train" or "test" (or any split the source has).
    data_dir: where named sources are looked for first (npz folders, or the tfds data directory).
    image_size: resize (nearest neighbour) to `image_size × image_size`, e.g. digits 8 → 16 or 32.
    channels: 1 or 3: repeat a grey channel to 3, or average colour to grey.

  Returns:
    An `ArrayDataset`.
  """
  if spec == "digits":
    ds = _load_digits(split)
  elif spec.startswith("npz:"):
    directory = pathlib.Path(spec[4:])
    ds = _load_npz(directory, split, spec)
  elif spec.startswith("tfds:"):
    ds = _load_tfds(spec[5:], split, data_dir)
  elif re.fullmatch(r"[a-z0-9_]+", spec):
    for base in data_dirs(data_dir):
      if (base / spec).is_dir() and npz_splits(base / spec):
        ds = _load_npz(base / spec, split, spec)
        break
    else:
      ds = _load_tfds(spec, split, data_dir)
  else:
    raise ValueError(
        f"Unknown data spec {spec!r}: use 'digits', 'npz:<dir>', 'tfds:<name>' or a data-set name such as 'cifar10'."
    )
  if image_size is not None:
    if image_size < 1:
      raise ValueError(f"`image_size` must be positive, got {image_size}.")
    ds = dataclasses.replace(ds, images=_resize(ds.images, int(image_size)))
  if channels is not None:
    c = ds.images.shape[-1]
    if channels == c:
      pass
    elif channels == 3 and c == 1:
      ds = dataclasses.replace(ds, images=np.repeat(ds.images, 3, axis=-1), mean=ds.mean * 3, std=ds.std * 3)
    elif channels == 1 and c == 3:
      grey = np.round(ds.images.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
      ds = dataclasses.replace(ds, images=grey, mean=(float(np.mean(ds.mean)),), std=(float(np.mean(ds.std)),))
    else:
      raise ValueError(f"`channels` must be 1 or 3, got {channels} (images have {c}).")
  return ds
