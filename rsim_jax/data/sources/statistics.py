"""Per-channel normalisation statistics (mean, std on [0, 1] pixels of a training split): the known values of
the common data sets, their computation from pixels, and their adaptation to a channel conversion."""

from __future__ import annotations

import re

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


def base_name(name: str) -> str:
  """The key of `KNOWN_STATISTICS` a tfds name or npz folder name falls under: 'imagenet2012/subset:5.1.0' →
  'imagenet2012'; 'cifar10' → 'cifar10'."""
  return re.split(r"[/:]", name)[0]


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std (floored at 1e-3) of uint8 `(N, H, W, C)` images on [0, 1] pixels.

  Accumulated in float64 over chunks of 4,096 images (the whole of CIFAR-10 never exists as floats).

  Returns:
    `(mean, std)`, each a tuple of C floats.
  """
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


def adapt_statistics(mean, std, channels) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Statistics after a channel conversion: grey → 3 repeats them; colour → grey takes the luma mean and a
  luma-weighted std (exact for the mean, an approximation for the std; `load` recomputes it from pixels).

  `channels`: None or the current count (unchanged), 1 or 3.
  """
  if channels is None or channels == len(mean):
    return tuple(mean), tuple(std)
  if channels == 3 and len(mean) == 1:
    return tuple(mean) * 3, tuple(std) * 3
  if channels == 1 and len(mean) == 3:
    w = np.asarray(augment.LUMA)
    return (float(w @ np.asarray(mean)),), (float(w @ np.asarray(std)),)
  raise ValueError(f"`channels` must be 1 or 3, got {channels}.")
