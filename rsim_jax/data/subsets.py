"""Class-balanced, seeded, nested subsets of a training split (Nguyen et al. 2021, "Do Wide and Deep Networks
Learn the Same Things?", §3: the data-set-size sweep 100%, 25%, 6.25%, ...).

Class c's members are put in the order of a permutation seeded by `(seed, c)`; a subset takes the first k_c of
them. k_c grows with the requested size, so for one seed a smaller subset is contained in every larger one
(by count or by fraction), and adding or removing other classes does not change class c's choice.
  count:    k_c = count / C for every class (count must be a multiple of the number of classes C).
  fraction: k_c = max(1, ⌊fraction·n_c + ½⌋) — every class keeps the same fraction of its n_c members
            (stratified; on a balanced split such as CIFAR-10's, the same number per class).
Examples keep their original relative order.
"""

from __future__ import annotations

import numpy as np


def select(ds, indices):
  """The examples of `ds` at `indices` (an `ArrayDataset` or `TfdsSource`; same classes and statistics)."""
  return ds.select(np.asarray(indices, np.int64))


def _labels(ds) -> np.ndarray:
  labels = np.asarray(ds.labels)
  if labels.ndim != 1:
    raise ValueError(f"`ds.labels` must be 1-D, got shape {labels.shape}.")
  return labels


def subset_indices(labels, num_classes: int, *, fraction: float | None = None, count: int | None = None,
                   seed: int) -> np.ndarray:
  """Sorted int64 indices of the class-balanced subset (see the module docstring) of examples with `labels`."""
  labels = np.asarray(labels)
  n = len(labels)
  if (fraction is None) == (count is None):
    raise ValueError("Pass exactly one of `fraction` and `count`.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
  members = [np.flatnonzero(labels == c) for c in range(num_classes)]
  sizes = np.asarray([len(m) for m in members])
  if fraction is not None:
    if not isinstance(fraction, (float, int, np.floating, np.integer)) or not 0 < fraction <= 1:
      raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
    take = np.where(sizes > 0, np.maximum(1, np.floor(fraction * sizes + 0.5)), 0).astype(np.int64)
  else:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
      raise ValueError(f"`count` must be a positive int, got {count!r}.")
    if count > n:
      raise ValueError(f"`count`={count} is larger than the split ({n} examples).")
    if count % num_classes:
      lo = count - count % num_classes
      raise ValueError(f"`count`={count} does not divide into the {num_classes} classes; use a multiple of "
                       f"{num_classes} such as {lo or num_classes} or {lo + num_classes}, or pass `fraction`.")
    per_class = count // num_classes
    short = np.flatnonzero(sizes < per_class)
    if len(short):
      c = int(short[0])
      raise ValueError(f"`count`={count} needs {per_class} examples of each class, but class {c} has "
                       f"{sizes[c]}; the largest class-balanced count is {num_classes * int(sizes.min())}.")
    take = np.full(num_classes, per_class, np.int64)
  chosen = [m[np.random.default_rng([int(seed), c]).permutation(len(m))[:k]]
            for c, (m, k) in enumerate(zip(members, take))]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def subsample(ds, *, fraction: float | None = None, count: int | None = None, seed: int):
  """A class-balanced, seeded subset of `ds` by `fraction` of every class or total `count` (exactly one).

  Same seed → same subset; for one seed, smaller subsets are nested in larger ones. Works on an
  `ArrayDataset` or a `TfdsSource` (whose labels are read once).

  Args:
    ds: the split (needs `labels`, `num_classes`, `select`).
    fraction: in (0, 1]: each class keeps max(1, round(fraction · its size)) examples.
    count: a multiple of `ds.num_classes`, at most the split's size: count / C examples of each class.
    seed: non-negative int.

  Returns:
    The same kind of data set with the chosen examples in their original order.
  """
  idx = subset_indices(_labels(ds), ds.num_classes, fraction=fraction, count=count, seed=seed)
  return ds.select(idx)
