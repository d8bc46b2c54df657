"""The image transform `load`/`open_source`/`dataset_info` apply to a split (`image_size`, `channels`,
`resize`): its argument checks and its application to uint8 `(N, H, W, C)` images (`rsim_jax.data.augment`'s
resizing and channel conversion)."""

from __future__ import annotations

import numpy as np

from rsim_jax.data import augment

RESIZE_METHODS = ("nearest", "bilinear", "pad")


def check_transform_args(image_size, channels, resize) -> None:
  """Raises ValueError naming `image_size` (a positive int or None), `channels` (1, 3 or None) or `resize`
  (one of `RESIZE_METHODS`)."""
  if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
    raise ValueError(f"`image_size` must be a positive int, got {image_size!r}.")
  if channels is not None and channels not in (1, 3):
    raise ValueError(f"`channels` must be 1 or 3, got {channels!r}.")
  if resize not in RESIZE_METHODS:
    raise ValueError(f"`resize` must be one of {RESIZE_METHODS}, got {resize!r}.")


def fit_images(images: np.ndarray, image_size, channels, resize: str) -> np.ndarray:
  """uint8 `(N, H, W, C)` → `(N, image_size, image_size, channels)` (each left as it is when None): resized
  with `resize` ("nearest", "bilinear" or "pad"), then grey ↔ colour converted (`augment.convert_channels`)."""
  if resize not in RESIZE_METHODS:
    raise ValueError(f"`resize` must be one of {RESIZE_METHODS}, got {resize!r}.")
  if image_size is not None:
    images = augment.resize_images(images, image_size, resize)
  if channels is not None:
    images = augment.convert_channels(images, int(channels))
  return images
