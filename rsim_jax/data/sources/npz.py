"""The "npz:<dir>" source: a directory of split files `<split>-0000K-of-0000N.npz`, each holding `images` uint8
`(n, H, W[, C])`, `labels` int32 `(n,)` and `class_names` (the format of shared/data: CIFAR-10, MNIST,
Fashion-MNIST).

A split is the concatenation of its K files in order (grey `(N, H, W)` images get a channel axis). The four
most recent splits' arrays and the statistics of 16 directories are cached per process (read-only arrays); the
statistics are `KNOWN_STATISTICS[<folder name>]` where known, else those of the `train` split's pixels.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import zipfile

import numpy as np

from rsim_jax.data.sources.dataset import ArrayDataset, DatasetInfo, readonly
from rsim_jax.data.sources.statistics import KNOWN_STATISTICS, channel_statistics

SPLIT_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d+)-of-(?P<count>\d+)\.npz$")


def npz_splits(directory: str | os.PathLike) -> dict[str, list[pathlib.Path]]:
  """`{split: [its files in order]}` of a directory of `<split>-0000K-of-0000N.npz` files."""
  out: dict[str, list[pathlib.Path]] = {}
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return out
  for path in sorted(directory.iterdir()):
    m = SPLIT_FILE.match(path.name)
    if m:
      out.setdefault(m["split"], []).append(path)
  return out


def npz_files(directory: pathlib.Path, split: str, spec: str) -> list[pathlib.Path]:
  """The files of `split` in `directory`, checked complete (all K of N present); errors name `spec`/`split`."""
  if not directory.is_dir():
    raise ValueError(f"`spec` {spec!r}: the directory {str(directory)!r} does not exist.")
  splits = npz_splits(directory)
  if split not in splits:
    raise ValueError(f"`split` {split!r} has no files in {directory} (looked for {split}-0000K-of-0000N.npz); "
                     f"it has splits {sorted(splits) or 'none'}.")
  files = splits[split]
  counts = {int(SPLIT_FILE.match(p.name)["count"]) for p in files}
  if len(counts) != 1 or len(files) != counts.pop():
    raise ValueError(f"`split` {split!r} in {directory} is incomplete: found {[p.name for p in files]}.")
  return files


@functools.lru_cache(maxsize=4)
def npz_arrays(directory: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """`(images uint8 (N, H, W, C), labels int32 (N,), class_names)` of `split`, read-only (cached)."""
  images, labels, class_names = [], [], None
  for path in npz_files(directory, split, f"npz:{directory}"):
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
  return readonly(x), readonly(y), class_names


def npz_header(path: pathlib.Path, key: str) -> tuple[int, ...]:
  """Shape of array `key` of an npz file without reading it."""
  with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, _ = reader(f)
  return tuple(shape)


@functools.lru_cache(maxsize=16)
def npz_statistics(directory: pathlib.Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """`(mean, std)`: `KNOWN_STATISTICS[directory.name]`, else those of the `train` split's pixels (cached)."""
  key = directory.name
  if key in KNOWN_STATISTICS:
    return KNOWN_STATISTICS[key]
  return channel_statistics(npz_arrays(directory, "train")[0])


def load_npz(directory: pathlib.Path, split: str, spec: str) -> ArrayDataset:
  """Split `split` of `directory` as an `ArrayDataset` named `spec`."""
  npz_files(directory, split, spec)  # errors name the spec
  images, labels, class_names = npz_arrays(directory.resolve(), split)
  mean, std = npz_statistics(directory.resolve())
  return ArrayDataset(images, labels, len(class_names), class_names, spec, mean, std)


def npz_info(directory: pathlib.Path, spec: str) -> DatasetInfo:
  """The metadata of `directory` (untransformed) from the files' headers: no image is read (except the
  training split's, for the statistics of a data set outside `KNOWN_STATISTICS`)."""
  splits = npz_splits(directory)
  if not splits:
    npz_files(directory, "train", spec)  # raises with what is there
  sizes, shape = {}, None
  for split, files in splits.items():
    shapes = [npz_header(p, "images") for p in files]
    sizes[split] = sum(s[0] for s in shapes)
    shape = shape or shapes[0][1:]
  shape = tuple(shape) + (1,) if len(shape) == 2 else tuple(shape)
  first = next(iter(splits.values()))[0]
  with np.load(first, allow_pickle=False) as f:
    class_names = tuple(str(c) for c in f["class_names"])
  mean, std = npz_statistics(directory.resolve())
  return DatasetInfo(spec, len(class_names), class_names, shape, mean, std, sizes)
