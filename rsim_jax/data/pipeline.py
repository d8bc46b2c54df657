"""Batches for training and evaluation: deterministic, resumable, split across processes.

Training batches are a pure function of `(seed, global step)`: epoch `e` visits the examples in the order of a
permutation seeded by `(seed, e)` (the last partial batch is dropped), and augmentation draws from a generator
seeded by `(seed, step)` for the whole global batch. So a run restarted at step s sees exactly the batches it
would have seen, and process p of P reads rows `[p·b/P, (p+1)·b/P)` of every global batch of b, whatever P is
(multi-host TPU VMs); `to_global` assembles the global array.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from rsim_jax import parallel
from rsim_jax.data.sources import ArrayDataset

CROP_PADDING = 4


def subset(ds: ArrayDataset, count: int, *, seed: int) -> ArrayDataset:
  """A class-balanced, seeded subset of `count` examples (Nguyen et al. 2021's data-set-size sweep).

  Each class contributes `count // C` examples (the first `count % C` classes one more), taken from the front
  of a per-class permutation seeded by `seed`, so for one seed smaller subsets are nested in larger ones.
  Examples keep their original order.
  """
  n = len(ds)
  if not 1 <= count <= n:
    raise ValueError(f"`count` must be in [1, {n}] (the split's size), got {count}.")
  classes = np.arange(ds.num_classes)
  per_class = np.full(len(classes), count // len(classes))
  per_class[: count % len(classes)] += 1
  rng = np.random.default_rng(seed)
  chosen = []
  for c, k in zip(classes, per_class):
    members = np.flatnonzero(ds.labels == c)
    if k > len(members):
      raise ValueError(
          f"A class-balanced subset of {count} needs {k} examples of class {c}, which has {len(members)}; "
          "ask for fewer examples."
      )
    chosen.append(members[rng.permutation(len(members))[:k]])
  return ds.select(np.sort(np.concatenate(chosen)))


def subsample(ds: ArrayDataset, *, fraction: float | None = None, count: int | None = None, seed: int) -> ArrayDataset:
  """`subset` by fraction (of the split) or by count; exactly one of them."""
  if (fraction is None) == (count is None):
    raise ValueError("Pass exactly one of `fraction` and `count`.")
  if fraction is not None:
    if not 0 < fraction <= 1:
      raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
    count = max(1, int(round(fraction * len(ds))))
  return subset(ds, int(count), seed=seed)


def normalize(images: np.ndarray, ds: ArrayDataset) -> np.ndarray:
  """uint8 `(b, H, W, C)` → float32 `(x/255 − mean) / std` per channel."""
  mean = np.asarray(ds.mean, np.float32)
  std = np.asarray(ds.std, np.float32)
  return (images.astype(np.float32) * np.float32(1 / 255) - mean) / std


def augment_batch(images: np.ndarray, rng: np.random.Generator, *, padding: int = CROP_PADDING) -> np.ndarray:
  """Standard CIFAR augmentation on uint8 images: zero-pad by `padding`, random crop back, random h-flip."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = rng.integers(0, 2 * padding + 1, size=(b, 2))
  flips = rng.random(b) < 0.5
  rows = offsets[:, 0, None] + np.arange(h)[None]  # (b, h)
  cols = offsets[:, 1, None] + np.arange(w)[None]  # (b, w)
  cols = np.where(flips[:, None], cols[:, ::-1], cols)
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _process_share(batch_size: int, process_index: int | None, process_count: int | None) -> tuple[int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if batch_size % pc:
    raise ValueError(f"`batch_size`={batch_size} must divide over the {pc} processes; use a multiple of {pc}.")
  local = batch_size // pc
  return pi * local, (pi + 1) * local


def train_batches(
    ds: ArrayDataset,
    *,
    batch_size: int,
    seed: int,
    augment: bool = False,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Training batches from global step `start_step` on: {"image": float32 (b/P, H, W, C), "label": int32}.

  Endless (epoch after epoch) unless `num_steps` is given.
  """
  n = len(ds)
  if batch_size < 1 or batch_size > n:
    raise ValueError(f"`batch_size` must be in [1, {n}] (the split's size), got {batch_size}.")
  lo, hi = _process_share(batch_size, process_index, process_count)
  steps_per_epoch = n // batch_size
  step = start_step
  end = None if num_steps is None else start_step + num_steps
  order, order_epoch = None, None
  while end is None or step < end:
    epoch, i = divmod(step, steps_per_epoch)
    if epoch != order_epoch:
      order, order_epoch = np.random.default_rng([seed, epoch]).permutation(n), epoch
    idx = order[i * batch_size : (i + 1) * batch_size]
    images = ds.images[idx]
    if augment:
      images = augment_batch(images, np.random.default_rng([seed, 1_000_003, step]))
    yield {"image": normalize(images[lo:hi], ds), "label": ds.labels[idx[lo:hi]]}
    step += 1


def eval_batches(
    ds: ArrayDataset,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch padded to `batch_size` with `mask` False on the padding.

  Yields {"image": float32 (b/P, H, W, C), "label": int32, "mask": bool}.
  """
  if batch_size < 1:
    raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
  lo, hi = _process_share(batch_size, process_index, process_count)
  n = len(ds)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < n
    idx = np.where(mask, idx, 0)
    images = normalize(ds.images[idx[lo:hi]], ds)
    images[~mask[lo:hi]] = 0.0
    yield {"image": images, "label": np.where(mask, ds.labels[idx], 0)[lo:hi].astype(np.int32), "mask": mask[lo:hi]}


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's share of a batch → global arrays split over the mesh's `data` axis."""
  sharding = parallel.batch_sharding(mesh)
  if jax.process_count() == 1:
    return parallel.shard_batch(batch, mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
