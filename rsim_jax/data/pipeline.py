"""Batches for training and evaluation: deterministic, resumable, split across processes.

Training batches are a pure function of `(seed, global step)`. With N examples and global batch B there are
⌊N/B⌋ steps per epoch (the last partial batch is dropped); epoch e visits the examples in the order of
`np.random.default_rng([seed, e]).permutation(N)`, so global step s holds
`order_e[i·B : (i+1)·B]` with `(e, i) = divmod(s, ⌊N/B⌋)`. Row r of step s is augmented with the key
`augment.example_keys(seed, s, r)`. Hence a run restarted at step s sees exactly the batches it would have
seen, and process p of P reads rows `[p·B/P, (p+1)·B/P)` of every global batch, whatever P is (multi-host
TPU VMs); `to_global` assembles the global array on the mesh.

Two backends, one result:
  "numpy"   in-memory `ArrayDataset`s: vectorised gather, CIFAR pad-crop-flip and normalisation on the host.
  "grain"   any random-access source (`TfdsSource`: ImageNet from ArrayRecord): `grain.MapDataset` over this
            process's example positions → read + augment + normalise each example → batch; the batches are
            made on `num_threads` threads, that many in flight (prefetched). Sharding is by rows of the global batch (above), not grain's
            `ShardOptions` (which would give each process a disjoint slice of the data set and make the
            global batch depend on the process count).
"auto" picks numpy for an `ArrayDataset` and grain otherwise; on an `ArrayDataset` both give identical batches.

Augmentation (`augment=True`): fixed-size images get the CIFAR pad-crop-flip (padding `crop_padding`, default
round(H/8): 4 for 32×32); variable-size images (ImageNet) the Inception random-resized crop + flip to
`image_shape`; without augmentation they get resize-256 / centre-crop-224, as in evaluation.
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator

import jax
import numpy as np

from rsim_jax import parallel
from rsim_jax.data import augment as aug
from rsim_jax.data.sources import ArrayDataset

BACKENDS = ("auto", "numpy", "grain")
_ENDLESS_STEPS = 2**40


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
  return int(value)


def process_share(batch_size: int, process_index: int | None = None,
                  process_count: int | None = None) -> tuple[int, int]:
  """Rows `[lo, hi)` of every global batch of `batch_size` that process `process_index` of `process_count`
  reads (defaults: `jax.process_index()`, `jax.process_count()`)."""
  pc = jax.process_count() if process_count is None else _check_int("process_count", process_count, 1)
  pi = jax.process_index() if process_index is None else _check_int("process_index", process_index, 0)
  if pi >= pc:
    raise ValueError(f"`process_index`={pi} must be < `process_count`={pc}.")
  if batch_size % pc:
    raise ValueError(f"`batch_size`={batch_size} does not divide over the {pc} processes (`process_count`); "
                     f"use a multiple of {pc}.")
  local = batch_size // pc
  return pi * local, (pi + 1) * local


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """⌊num_examples / batch_size⌋: full global batches per epoch (the last partial batch is dropped)."""
  return num_examples // batch_size


def _backend(ds, backend: str) -> str:
  if backend not in BACKENDS:
    raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}.")
  if backend == "auto":
    return "numpy" if isinstance(ds, ArrayDataset) else "grain"
  if backend == "numpy" and not isinstance(ds, ArrayDataset):
    raise ValueError(f"`backend`='numpy' needs an in-memory ArrayDataset, got {type(ds).__name__}; use 'grain'.")
  return backend


def _variable(ds) -> bool:
  return bool(getattr(ds, "variable_size", False))


class _EpochOrders:
  """Thread-safe cache of the last few epochs' permutations."""

  def __init__(self, seed: int, n: int, keep: int = 2):
    self.seed, self.n, self.keep = seed, n, keep
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __call__(self, epoch: int) -> np.ndarray:
    with self._lock:
      order = self._cache.get(epoch)
      if order is None:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        self._cache[epoch] = order
        while len(self._cache) > self.keep:
          self._cache.popitem(last=False)
      return order


# --- Training ---


def train_batches(
    ds,
    *,
    batch_size: int,
    seed: int,
    augment: bool = False,
    start_step: int = 0,
    num_steps: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    crop_padding: int | None = None,
    backend: str = "auto",
    num_threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's share of the global training batches from global step `start_step` on.

  Args:
    ds: an `ArrayDataset` or a random-access source (`open_source`).
    batch_size: the global batch B (all processes together); b = B / process_count rows come out here.
    seed: non-negative int; fixes the order of every epoch and every augmentation.
    augment: CIFAR pad-crop-flip (fixed-size images) or Inception crop + flip (variable-size images).
    start_step: the first global step (resume from a checkpoint's step).
    num_steps: how many batches; None: endless, epoch after epoch.
    process_index, process_count: this process's place (defaults from jax).
    crop_padding: CIFAR crop padding (default round(H/8)).
    backend: "auto", "numpy" (ArrayDataset only) or "grain".
    num_threads: grain reader threads (default min(16, CPUs)).

  Yields:
    {"image": float32 `(b, H, W, C)` normalised by the source's mean/std, "label": int32 `(b,)`}.
  """
  n = len(ds)
  batch_size = _check_int("batch_size", batch_size, 1)
  if batch_size > n:
    raise ValueError(f"`batch_size`={batch_size} is larger than the split ({n} examples).")
  seed = _check_int("seed", seed, 0)
  start_step = _check_int("start_step", start_step, 0)
  num_steps = None if num_steps is None else _check_int("num_steps", num_steps, 0)
  if crop_padding is not None:
    _check_int("crop_padding", crop_padding, 0)
  lo, hi = process_share(batch_size, process_index, process_count)
  backend = _backend(ds, backend)
  end = start_step + (_ENDLESS_STEPS if num_steps is None else num_steps)
  if backend == "numpy":
    return _numpy_train(ds, batch_size, seed, augment, start_step, end, lo, hi, crop_padding)
  return _grain_train(ds, batch_size, seed, augment, start_step, end, lo, hi, crop_padding, num_threads)


def _numpy_train(ds: ArrayDataset, batch_size, seed, augment, start, end, lo, hi, crop_padding):
  per_epoch = steps_per_epoch(len(ds), batch_size)
  orders = _EpochOrders(seed, len(ds))
  rows = np.arange(lo, hi)
  for step in range(start, end):
    epoch, i = divmod(step, per_epoch)
    idx = orders(epoch)[i * batch_size + lo : i * batch_size + hi]
    images = ds.images[idx]
    if augment:
      images = aug.cifar_augment_batch(images, aug.example_keys(seed, step, rows), padding=crop_padding)
    yield {"image": aug.normalize(images, ds.mean, ds.std), "label": ds.labels[idx]}


class _TrainExample:
  """Local example position k → this process's row of global step `start + k // b`, read and augmented."""

  def __init__(self, ds, batch_size, seed, augment, lo, hi, crop_padding):
    self.ds, self.batch_size, self.seed, self.augment = ds, batch_size, seed, augment
    self.lo, self.local, self.crop_padding = lo, hi - lo, crop_padding
    self.per_epoch = steps_per_epoch(len(ds), batch_size)
    self.orders = _EpochOrders(seed, len(ds))
    self.variable = _variable(ds)
    self.size = ds.image_shape[0]

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    step, j = divmod(int(k), self.local)
    row = self.lo + j
    epoch, i = divmod(step, self.per_epoch)
    record = self.ds[int(self.orders(epoch)[i * self.batch_size + row])]
    image = np.asarray(record["image"], np.uint8)
    if self.variable:
      if self.augment:
        image = aug.inception_crop(image, aug.example_key(self.seed, step, row), size=self.size)
      else:
        image = aug.center_crop(image, size=self.size, resize_size=getattr(self.ds, "resize_size", None))
    elif self.augment:
      image = aug.cifar_augment(image, aug.example_key(self.seed, step, row), padding=self.crop_padding)
    return {"image": aug.normalize(image, self.ds.mean, self.ds.std), "label": np.int32(record["label"])}


def _grain_iterate(fn, first: int, stop: int, local: int, num_threads):
  import grain  # noqa: PLC0415

  threads = min(16, os.cpu_count() or 1) if num_threads is None else _check_int("num_threads", num_threads, 1)
  # One grain element per local batch (its examples are read in one thread; `threads` batches in flight):
  # per-element overhead is paid once per batch, not per example.
  dataset = grain.MapDataset.range(first, stop).map(fn).batch(local, drop_remainder=True)
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads)
  iterator = iter(dataset.to_iter_dataset(options))
  try:
    yield from iterator
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def _grain_train(ds, batch_size, seed, augment, start, end, lo, hi, crop_padding, num_threads):
  local = hi - lo
  fn = _TrainExample(ds, batch_size, seed, augment, lo, hi, crop_padding)
  yield from _grain_iterate(fn, start * local, end * local, local, num_threads)


# --- Evaluation ---


def eval_batches(
    ds,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    backend: str = "auto",
    num_threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in ⌈N/B⌉ global batches; the last one padded to B.

  Variable-size images are resized (shorter side `resize_size`, 256) and centre-cropped to `image_shape`.

  Args:
    ds: an `ArrayDataset` or a random-access source.
    batch_size: the global batch B; this process gets b = B / process_count rows of each.
    process_index, process_count, backend, num_threads: as `train_batches`.

  Yields:
    {"image": float32 `(b, H, W, C)` (0 on padding), "label": int32 `(b,)` (0 on padding),
     "mask": bool `(b,)` (False on padding)}.
  """
  batch_size = _check_int("batch_size", batch_size, 1)
  lo, hi = process_share(batch_size, process_index, process_count)
  backend = _backend(ds, backend)
  if backend == "numpy":
    return _numpy_eval(ds, batch_size, lo, hi)
  n = len(ds)
  local = hi - lo
  num_batches = -(-n // batch_size)
  return _grain_iterate(_EvalExample(ds, batch_size, lo, hi), 0, num_batches * local, local, num_threads)


def _numpy_eval(ds: ArrayDataset, batch_size, lo, hi):
  n = len(ds)
  for start in range(0, n, batch_size):
    pos = np.arange(start + lo, start + hi)
    mask = pos < n
    idx = np.where(mask, pos, 0)
    images = aug.normalize(ds.images[idx], ds.mean, ds.std)
    images[~mask] = 0.0
    yield {"image": images, "label": np.where(mask, ds.labels[idx], 0).astype(np.int32), "mask": mask}


class _EvalExample:
  def __init__(self, ds, batch_size, lo, hi):
    self.ds, self.batch_size, self.lo, self.local = ds, batch_size, lo, hi - lo
    self.variable = _variable(ds)
    self.shape = tuple(ds.image_shape)

  def __call__(self, k: int) -> dict[str, np.ndarray]:
    t, j = divmod(int(k), self.local)
    pos = t * self.batch_size + self.lo + j
    if pos >= len(self.ds):
      return {"image": np.zeros(self.shape, np.float32), "label": np.int32(0), "mask": np.False_}
    record = self.ds[pos]
    image = np.asarray(record["image"], np.uint8)
    if self.variable:
      image = aug.center_crop(image, size=self.shape[0], resize_size=getattr(self.ds, "resize_size", None))
    return {"image": aug.normalize(image, self.ds.mean, self.ds.std), "label": np.int32(record["label"]),
            "mask": np.True_}


# --- Placement ---


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, *,
              axis_name: str = parallel.DATA_AXIS) -> dict[str, jax.Array]:
  """This process's rows of a global batch → global `jax.Array`s split over the mesh's `axis_name` axis.

  Each leaf `(b, ...)` becomes a global array `(b · process_count, ...)` with `parallel.batch_sharding(mesh)`,
  assembled with `jax.make_array_from_process_local_data` (process p's rows are rows `[p·b, (p+1)·b)`, as
  `train_batches`/`eval_batches` produce them).
  """
  sharding = parallel.batch_sharding(mesh, axis_name=axis_name)
  size = mesh.shape[axis_name]
  pc = jax.process_count()
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    global_shape = (value.shape[0] * pc,) + value.shape[1:]
    if global_shape[0] % size:
      raise ValueError(f"The global batch of {global_shape[0]} (`batch[{key!r}]`: {value.shape[0]} rows × "
                       f"{pc} processes) does not divide over the {size} devices of mesh axis {axis_name!r}; "
                       f"use a `batch_size` that is a multiple of {size}.")
    out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
  return out
