"""A stand-in for `rsim_jax.data` with the same interface, on small synthetic arrays made in the test.

`load(spec, split)` returns an `ArrayDataset` of 8×8×1 uint8 images whose class is a bright 2×2 patch position
plus noise (learnable in a few steps); `train_batches` yields seeded, resumable batches by global step.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rsim_jax import parallel


@dataclasses.dataclass
class ArrayDataset:
  images: np.ndarray
  labels: np.ndarray
  num_classes: int


def load(spec: str, split: str, *, size: int = 8, channels: int = 1, num_classes: int = 4, **_):
  n = {"train": 192, "test": 100}[split]
  rng = np.random.default_rng(0 if split == "train" else 1)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  images = rng.integers(0, 100, size=(n, size, size, channels)).astype(np.uint8)
  for k in range(num_classes):
    r, c = divmod(k, 2)
    images[labels == k, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2, :] = 250
  return ArrayDataset(images, labels, num_classes)


def subsample(ds, *, fraction=None, count=None, seed):
  n = len(ds.labels)
  count = count if count is not None else max(1, int(round(fraction * n)))
  idx = np.sort(np.random.default_rng(seed).permutation(n)[:count])
  return dataclasses.replace(ds, images=ds.images[idx], labels=ds.labels[idx])


def _normalise(images):
  return images.astype(np.float32) / 255.0 - 0.5


def train_batches(ds, *, batch_size, seed, augment=False, start_step=0):
  n = len(ds.labels)
  per_epoch = n // batch_size
  step = start_step
  while True:
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    idx = order[i * batch_size : (i + 1) * batch_size]
    images = _normalise(ds.images[idx])
    if augment:
      flip = np.random.default_rng([seed, epoch, i]).random(batch_size) < 0.5
      images[flip] = images[flip, :, ::-1]
    yield {"image": images, "label": ds.labels[idx]}
    step += 1


def eval_batches(ds, *, batch_size, process_index=None, process_count=None):
  # One process: the whole batch is this process's share, whatever `process_index`/`process_count` say.
  del process_index, process_count
  n = len(ds.labels)
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    pad = batch_size - len(idx)
    images = _normalise(ds.images[idx])
    labels = ds.labels[idx]
    mask = np.ones(len(idx), bool)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], np.float32)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      mask = np.concatenate([mask, np.zeros(pad, bool)])
    yield {"image": images, "label": labels, "mask": mask}


def to_global(batch, mesh):
  return parallel.shard_batch(batch, mesh)
