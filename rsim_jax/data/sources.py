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
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import zipfile
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rsim_jax.data import augment

# Per-channel mean/std on [0, 1] pixels of the training splits (shared/data/README.md checks the first three).
KNOWN_STATISTICS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
IMAGENET_IMAGE_SIZE = 224
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
RESIZE_METHODS = ("nearest", "bilinear", "pad")
STATISTICS_SAMPLE = 10_000  # training examples read to estimate mean/std of an unknown tfds data set


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


def _readonly(x: np.ndarray) -> np.ndarray:
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
    object.__setattr__(self, "images", _readonly(self.images))
    object.__setattr__(self, "labels", _readonly(self.labels.astype(np.int32, copy=False)))

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


def _channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std (floored at 1e-3) of uint8 `(N, H, W, C)` images on [0, 1] pixels."""
  c = images.shape[-1]
  total = np.zeros(c)
  total_sq = np.zeros(c)
  count = 0
  for s in range(0, len(images), 4096):
    x = images[s : s + 4096].reshape(-1, c).astype(np.float64) / 255.0
    total += x.sum(0)
    total_sq += (x * x).sum(0)
    count += len(x)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
  return tuple(float(v) for v in mean), tuple(float(v) for v in np.maximum(std, 1e-3))


# --- Spec resolution ---

_SPEC_HELP = ("use 'digits', 'npz:<dir>', 'tfds:<name>' or a data-set name such as 'cifar10', 'mnist', "
              "'fashion_mnist'")


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Where named npz sources are looked for, in order: `data_dir`, $RSIM_DATA_DIR, ./data, ../shared/data,
  and shared/data beside the checkout (for an editable install)."""
  candidates = [data_dir, os.environ.get("RSIM_DATA_DIR"), "data", "../shared/data"]
  here = pathlib.Path(__file__).resolve().parents[2]
  candidates.append(here.parent / "shared" / "data")
  return [pathlib.Path(c) for c in candidates if c]


def _resolve(spec: str, data_dir) -> tuple[str, Any]:
  """("digits", None) | ("npz", directory) | ("tfds", name)."""
  if not isinstance(spec, str):
    raise TypeError(f"`spec` must be a string ({_SPEC_HELP}), got {type(spec).__name__}.")
  if spec == "digits":
    return "digits", None
  if spec.startswith("npz:"):
    return "npz", pathlib.Path(spec[4:]).expanduser()
  if spec.startswith("tfds:") and re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_.]+)?(:[0-9.]+)?", spec[5:]):
    return "tfds", spec[5:]
  if re.fullmatch(r"[a-z0-9_]+", spec):
    for base in data_dirs(data_dir):
      if (base / spec).is_dir() and npz_splits(base / spec):
        return "npz", base / spec
    return "tfds", spec
  raise ValueError(f"Unknown data `spec` {spec!r}: {_SPEC_HELP}.")


def _base_name(name: str) -> str:
  """'imagenet2012/subset:5.1.0' → 'imagenet2012'; npz folder → its name."""
  return re.split(r"[/:]", name)[0]


# --- digits ---


@functools.cache
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.datasets import load_digits  # noqa: PLC0415
  from sklearn.model_selection import train_test_split  # noqa: PLC0415

  digits = load_digits()
  images = np.clip(np.round(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION,
                                         stratify=labels, random_state=DIGITS_SPLIT_SEED)
  out = {}
  for split, idx in (("train", np.sort(idx_train)), ("test", np.sort(idx_test))):
    out[split] = (_readonly(images[idx]), _readonly(labels[idx]))
  return out


def _digits(split: str) -> ArrayDataset:
  splits = _digits_splits()
  if split not in splits:
    raise ValueError(f"`split` {split!r} is not a split of 'digits'; it has {sorted(splits)}.")
  mean, std = _digits_statistics()
  images, labels = splits[split]
  return ArrayDataset(images, labels, 10, tuple(str(i) for i in range(10)), "digits", mean, std)


@functools.cache
def _digits_statistics():
  return _channel_statistics(_digits_splits()["train"][0])


# --- npz split files ---

_SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d+)-of-(?P<count>\d+)\.npz$")


def npz_splits(directory: str | os.PathLike) -> dict[str, list[pathlib.Path]]:
  """`{split: [its files in order]}` of a directory of `<split>-0000K-of-0000N.npz` files."""
  out: dict[str, list[pathlib.Path]] = {}
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return out
  for path in sorted(directory.iterdir()):
    m = _SPLIT_FILE.match(path.name)
    if m:
      out.setdefault(m["split"], []).append(path)
  return out


def _npz_files(directory: pathlib.Path, split: str, spec: str) -> list[pathlib.Path]:
  if not directory.is_dir():
    raise ValueError(f"`spec` {spec!r}: the directory {str(directory)!r} does not exist.")
  splits = npz_splits(directory)
  if split not in splits:
    raise ValueError(f"`split` {split!r} has no files in {directory} (looked for {split}-0000K-of-0000N.npz); "
                     f"it has splits {sorted(splits) or 'none'}.")
  files = splits[split]
  counts = {int(_SPLIT_FILE.match(p.name)["count"]) for p in files}
  if len(counts) != 1 or len(files) != counts.pop():
    raise ValueError(f"`split` {split!r} in {directory} is incomplete: found {[p.name for p in files]}.")
  return files


@functools.lru_cache(maxsize=4)
def _npz_arrays(directory: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  images, labels, class_names = [], [], None
  for path in _npz_files(directory, split, f"npz:{directory}"):
    with np.load(path, allow_pickle=False) as f:
      images.append(f["images"])
      labels.append(f["labels"].astype(np.int32))
      class_names = tuple(str(c) for c in f["class_names"])
  x = np.concatenate(images) if len(images) > 1 else images[0]
  if x.ndim == 3:
    x = x[..., None]
  if x.dtype != np.uint8:
    raise ValueError(f"{directory}: `images` must be uint8, got {x.dtype}.")
  y = np.concatenate(labels) if len(labels) > 1 else labels[0]
  return _readonly(x), _readonly(y), class_names


def _npz_header(path: pathlib.Path, key: str) -> tuple[int, ...]:
  """Shape of array `key` of an npz file without reading it."""
  with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = reader(f)
  return tuple(shape)


@functools.lru_cache(maxsize=16)
def _npz_statistics(directory: pathlib.Path):
  key = directory.name
  if key in KNOWN_STATISTICS:
    return KNOWN_STATISTICS[key]
  return _channel_statistics(_npz_arrays(directory, "train")[0])


def _npz(directory: pathlib.Path, split: str, spec: str) -> ArrayDataset:
  _npz_files(directory, split, spec)  # errors name the spec
  images, labels, class_names = _npz_arrays(directory.resolve(), split)
  mean, std = _npz_statistics(directory.resolve())
  return ArrayDataset(images, labels, len(class_names), class_names, spec, mean, std)


def _npz_info(directory: pathlib.Path, spec: str) -> DatasetInfo:
  splits = npz_splits(directory)
  if not splits:
    _npz_files(directory, "train", spec)  # raises with what is there
  sizes, shape = {}, None
  for split, files in splits.items():
    shapes = [_npz_header(p, "images") for p in files]
    sizes[split] = sum(s[0] for s in shapes)
    shape = shape or shapes[0][1:]
  shape = tuple(shape) + (1,) if len(shape) == 2 else tuple(shape)
  first = next(iter(splits.values()))[0]
  with np.load(first, allow_pickle=False) as f:
    class_names = tuple(str(c) for c in f["class_names"])
  mean, std = _npz_statistics(directory.resolve())
  return DatasetInfo(spec, len(class_names), class_names, shape, mean, std, sizes)


# --- tensorflow-datasets ---


def _tfds():
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415
  except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("tfds sources need the `tfds` extra: pip install 'rsim_jax[tfds]'.") from e
  return tfds


def tfds_data_dir(data_dir=None) -> pathlib.Path:
  """The tfds data directory used: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return pathlib.Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def _tfds_missing(name: str, split: str, data_dir, error: Exception) -> ValueError:
  where = tfds_data_dir(data_dir)
  present = sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else None
  found = f"it holds {present}" if present else ("it is empty" if present is not None else "it does not exist")
  return ValueError(
      f"`spec` 'tfds:{name}' `split` {split!r}: no prepared ArrayRecord files in `data_dir` {str(where)!r} "
      f"({found}). Prepare them on a machine with a network: `tfds build {name} --file_format=array_record "
      f"--data_dir {where}` (ImageNet needs its manual download), or pass `download=True`. "
      f"tfds said: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
  )


def _open_tfds(name: str, split: str, data_dir, download: bool, decoders=None):
  tfds = _tfds()
  kwargs = {"decoders": decoders} if decoders else {}
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=download, **kwargs)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"Unknown data `spec` 'tfds:{name}': tensorflow-datasets has no such data set.") from e
  except ValueError as e:
    if "split" in str(e).lower():
      raise ValueError(f"`split` {split!r} of 'tfds:{name}': {str(e).splitlines()[0]}") from e
    raise _tfds_missing(name, split, data_dir, e) from e
  except (NotImplementedError, FileNotFoundError, OSError, AssertionError) as e:
    raise _tfds_missing(name, split, data_dir, e) from e


@functools.lru_cache(maxsize=16)
def _tfds_features(name: str, data_dir) -> tuple[tuple[str, ...], tuple, dict[str, int]]:
  """(class_names, native image shape with None for variable sides, {split: size})."""
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  class_names = tuple(features["label"].names)
  shape = tuple(features["image"].shape)
  try:
    splits = {k: int(v.num_examples) for k, v in builder.info.splits.items()}
  except Exception:  # noqa: BLE001 - metadata without prepared files
    splits = {}
  return class_names, shape, splits


def _is_variable(shape: tuple) -> bool:
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
    self._source = _open_tfds(name, split, data_dir, download)
    class_names, native, self.splits = _tfds_features(name, data_dir)
    self.class_names = class_names
    self.num_classes = len(class_names)
    self.variable_size = _is_variable(native)
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
    self.mean, self.std = _tfds_statistics(name, data_dir, channels, image_size, resize, self.variable_size)
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
      image = _fit(image[None], self._image_size, self._channels, self._resize)[0]
    elif self._channels is not None:
      image = augment.convert_channels(image, self._channels)
    return {"image": image, "label": np.int32(record["label"])}

  @property
  def labels(self) -> np.ndarray:
    """int32 `(N,)`: every record's label (read once with image decoding skipped; cached)."""
    if self._labels is None:
      tfds = _tfds()
      source = _open_tfds(self.tfds_name, self.split, self._args["data_dir"], False,
                          decoders={"image": tfds.decode.SkipDecoding()})
      order = range(len(source)) if self._indices is None else self._indices
      self._labels = _readonly(np.fromiter((int(source[int(i)]["label"]) for i in order), np.int32,
                                           count=len(self)))
    return self._labels

  def select(self, indices) -> TfdsSource:
    """The records at `indices` (positions in this source), in that order."""
    indices = np.asarray(indices, np.int64)
    base = indices if self._indices is None else self._indices[indices]
    out = TfdsSource(self.tfds_name, self.split, **self._args, _indices=base)
    if self._labels is not None:
      out._labels = _readonly(self._labels[indices])
    return out

  def info(self) -> DatasetInfo:
    return DatasetInfo(self.name, self.num_classes, self.class_names, self.image_shape, self.mean, self.std,
                       dict(self.splits))

  def __repr__(self) -> str:
    return f"TfdsSource({self.tfds_name!r}, {self.split!r}, n={len(self)}, image_shape={self.image_shape})"


@functools.lru_cache(maxsize=16)
def _tfds_statistics(name, data_dir, channels, image_size, resize, variable_size):
  """Known statistics (ImageNet's for every variable-size set), else those of ≤ 10,000 training images."""
  base = _base_name(name)
  if variable_size and base not in KNOWN_STATISTICS:
    base = "imagenet2012"
  if base in KNOWN_STATISTICS and (variable_size or not (channels == 1 and len(KNOWN_STATISTICS[base][0]) == 3)):
    return _adapt_statistics(*KNOWN_STATISTICS[base], channels)
  source = _open_tfds(name, "train", data_dir, False)
  sample = []
  for i in range(min(len(source), STATISTICS_SAMPLE)):
    image = np.asarray(source[i]["image"], np.uint8)
    sample.append(image[..., None] if image.ndim == 2 else image)
  return _channel_statistics(_fit(np.stack(sample), image_size, channels, resize))


def _adapt_statistics(mean, std, channels):
  """Statistics after a channel conversion: grey → 3 repeats them; colour → grey takes the luma mean and a
  luma-weighted std (exact for the mean, an approximation for the std; `load` recomputes it from pixels)."""
  if channels is None or channels == len(mean):
    return tuple(mean), tuple(std)
  if channels == 3 and len(mean) == 1:
    return tuple(mean) * 3, tuple(std) * 3
  if channels == 1 and len(mean) == 3:
    w = np.asarray(augment.LUMA)
    return (float(w @ np.asarray(mean)),), (float(w @ np.asarray(std)),)
  raise ValueError(f"`channels` must be 1 or 3, got {channels}.")


def _load_tfds(name: str, split: str, data_dir, download: bool) -> ArrayDataset:
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


# --- Public entry points ---


def _fit(images: np.ndarray, image_size, channels, resize: str) -> np.ndarray:
  if resize not in RESIZE_METHODS:
    raise ValueError(f"`resize` must be one of {RESIZE_METHODS}, got {resize!r}.")
  if image_size is not None:
    images = augment.resize_images(images, image_size, resize)
  if channels is not None:
    images = augment.convert_channels(images, int(channels))
  return images


def _check_transform_args(image_size, channels, resize):
  if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
  if channels is not None and channels not in (1, 3):
    raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
  if resize not in RESIZE_METHODS:
    raise ValueError(f"`resize` must be one of {RESIZE_METHODS}, got {resize!r}.")


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
  _check_transform_args(image_size, channels, resize)
  kind, where = _resolve(spec, data_dir)
  if kind == "digits":
    ds = _digits(split)
  elif kind == "npz":
    ds = _npz(where, split, spec)
  else:
    ds = _load_tfds(where, split, data_dir, download)
  if image_size is None and channels is None:
    return ds
  images = _fit(ds.images, image_size, channels, resize)
  mean, std = _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize)
  return dataclasses.replace(ds, images=images, mean=mean, std=std)


def _stat_key(kind: str, where) -> str | None:
  if kind == "npz":
    return where.name
  return _base_name(where) if kind == "tfds" else None


def _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize):
  """Known statistics (adapted to `channels`) where they stay valid, else those of the transformed train split."""
  key = _stat_key(kind, where)
  if key in KNOWN_STATISTICS and not (channels == 1 and len(KNOWN_STATISTICS[key][0]) == 3):
    return _adapt_statistics(*KNOWN_STATISTICS[key], channels)
  return _train_statistics(spec, data_dir, image_size, channels, resize)


@functools.lru_cache(maxsize=16)
def _train_statistics(spec, data_dir, image_size, channels, resize):
  """mean/std of the transformed training split."""
  train = load(spec, "train", data_dir=data_dir)
  return _channel_statistics(_fit(train.images, image_size, channels, resize))


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
  _check_transform_args(image_size, channels, resize)
  kind, where = _resolve(spec, data_dir)
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
  _check_transform_args(image_size, channels, resize)
  kind, where = _resolve(spec, data_dir)
  if kind == "digits":
    splits = _digits_splits()
    ds = _digits("train")
    info = DatasetInfo("digits", 10, ds.class_names, ds.image_shape, ds.mean, ds.std,
                       {k: len(v[1]) for k, v in splits.items()})
  elif kind == "npz":
    info = _npz_info(where, spec)
  else:
    class_names, native, splits = _tfds_features(where, data_dir)
    variable = _is_variable(native)
    c = int(native[2]) if len(native) > 2 and native[2] else 3
    if variable:
      h = w = IMAGENET_IMAGE_SIZE if image_size is None else image_size
    else:
      h, w = (int(native[0]), int(native[1])) if image_size is None else (image_size, image_size)
    mean, std = _tfds_statistics(where, data_dir, channels, image_size, resize, variable)
    return DatasetInfo(f"tfds:{where}", len(class_names), class_names, (h, w, channels or c), mean, std, splits)
  if image_size is None and channels is None:
    return info
  h, w, c = info.image_shape
  mean, std = _transformed_statistics(kind, where, spec, data_dir, image_size, channels, resize)
  return dataclasses.replace(info, image_shape=(image_size or h, image_size or w, channels or c), mean=mean,
                             std=std)
