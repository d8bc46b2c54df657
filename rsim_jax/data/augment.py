"""Image transforms on uint8 NumPy arrays: resizing, CIFAR and Inception augmentation, normalisation.

Randomness comes from per-example 64-bit keys (`example_keys`), a counter-based hash of `(seed, step, row)`
(splitmix64): the augmentation of row r of global batch s does not depend on which process computes it, on
how many examples are computed together, or on anything computed before — so batches can be resumed at any
step and split over any number of processes, and the vectorised batch path (`cifar_augment_batch`) gives
exactly what the per-example path (`cifar_augment`) gives.

Transforms (H, W, C are height, width, channels; images are uint8 in [0, 255]):
  resize_images       `(N, H, W, C)` → `(N, S, S, C)`: "nearest" (pixel replication, the data sets' default),
                      "bilinear" (Pillow's, see below) or "pad" (zero border, centred).
  convert_channels    1 → 3 (repeat) or 3 → 1 (ITU-R 601 luma, as PIL's "L").
  cifar_augment[_batch]  zero-pad by p, random p-shifted crop back to H×W, horizontal flip with prob. ½
                      (He et al. 2016, "Deep Residual Learning", §4.2; p = 4 for 32×32).
  inception_crop      random area ∈ [0.08, 1]·HW, aspect ∈ [3/4, 4/3] (log-uniform), 10 tries, else the
                      centre crop clamped to that aspect; bilinear resize to S×S; flip with prob. ½
                      (Szegedy et al. 2015, "Going Deeper with Convolutions"; torchvision's RandomResizedCrop).
  center_crop         evaluation: shorter side resized to R (bilinear), centre S×S crop (R=256, S=224).
  normalize           `(x/255 − mean) / std` per channel → float32.

Bilinear resizing, everywhere (resize_images "bilinear", inception_crop, center_crop), is Pillow's
`Image.resize(size, Resampling.BILINEAR, box=...)`: a triangle filter of half-width max(1, in/out) input pixels
around each output pixel's centre (antialiased when shrinking), weights normalised, applied in two separable
passes in 8-bit fixed point. Pillow is a declared dependency (pyproject.toml) rather than re-implemented: its
output is the reference (torchvision's ImageNet transforms resize PIL images with it), an exact NumPy port would
have to copy its fixed-point rounding, and its C loop keeps the per-image ImageNet pipeline fast. (A float NumPy
version of the same filter, used by resize_images until now, was within 1 grey level of it; no recorded result
used "bilinear": the data sets resize with "nearest".)
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

# --- Per-example randomness ---

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STREAM = 0x5EED_DA7A  # separates augmentation keys from other uses of the seed


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
  x = (x ^ (x >> np.uint64(30))) * _M1
  x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def example_keys(seed: int, step: int, rows) -> np.ndarray:
  """uint64 `(len(rows),)` keys of rows `rows` of global batch `step` under `seed`.

  key = mix(mix(mix(seed + γ) ⊕ step + γ) ⊕ row + γ) with splitmix64's `mix` and γ its golden-ratio
  increment: a pure function of `(seed, step, row)`, uniform over 64 bits.
  """
  rows = np.asarray(rows, dtype=np.int64).astype(np.uint64).reshape(-1)
  h = _mix(np.full((1,), (int(seed) ^ _STREAM) % 2**64, np.uint64) + _GOLDEN)
  h = _mix((h ^ np.uint64(int(step) % 2**64)) + _GOLDEN)
  return _mix((h ^ rows) + _GOLDEN)


_MASK64 = (1 << 64) - 1


def _mix_int(x: int) -> int:
  """`_mix` on one Python int (the same bits, without NumPy's per-call overhead)."""
  x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
  return x ^ (x >> 31)


def example_key(seed: int, step: int, row: int) -> int:
  """`example_keys(seed, step, [row])[0]` as a Python int."""
  gamma = 0x9E3779B97F4A7C15
  h = _mix_int((((int(seed) ^ _STREAM) % 2**64) + gamma) & _MASK64)
  h = _mix_int(((h ^ (int(step) % 2**64)) + gamma) & _MASK64)
  return _mix_int(((h ^ (int(row) % 2**64)) + gamma) & _MASK64)


def _cifar_params(keys: np.ndarray, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Crop offsets `(dy, dx)` in [0, 2p] and flips from keys (independent bit fields of each key)."""
  span = np.uint64(2 * padding + 1)
  dy = ((keys >> np.uint64(32)) & np.uint64(0xFFFF)) % span
  dx = (keys & np.uint64(0xFFFF)) % span
  flip = (keys >> np.uint64(63)).astype(bool)
  return dy.astype(np.int64), dx.astype(np.int64), flip


def default_padding(height: int) -> int:
  """CIFAR crop padding for an image of `height`: round(H/8) (4 for 32×32 and 28×28, 1 for 8×8)."""
  return max(1, int(height / 8 + 0.5))


# --- CIFAR augmentation ---


def cifar_augment_batch(images: np.ndarray, keys: np.ndarray, *, padding: int | None = None) -> np.ndarray:
  """Pad-crop-flip augmentation of a batch, vectorised.

  Args:
    images: uint8 `(b, H, W, C)`.
    keys: uint64 `(b,)` from `example_keys`.
    padding: zero border p (default `default_padding(H)`); p = 0 only flips.

  Returns:
    uint8 `(b, H, W, C)`: row i is `padded_i[dy:dy+H, dx:dx+W]`, mirrored left-right when its flip bit is set.
  """
  b, h, w, _ = images.shape
  p = default_padding(h) if padding is None else int(padding)
  if p < 0:
    raise ValueError(f"`padding` must be >= 0, got {padding}.")
  dy, dx, flip = _cifar_params(np.asarray(keys, np.uint64), p)
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
  out = np.empty_like(images)
  for i in range(b):  # b window copies: faster than one fancy-indexed gather of b·H·W pixels
    window = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    out[i] = window[:, ::-1] if flip[i] else window
  return out


def cifar_augment(image: np.ndarray, key, *, padding: int | None = None) -> np.ndarray:
  """`cifar_augment_batch` of one uint8 `(H, W, C)` image with one key (same result as in a batch)."""
  h, w = image.shape[:2]
  p = default_padding(h) if padding is None else int(padding)
  if p < 0:
    raise ValueError(f"`padding` must be >= 0, got {padding}.")
  key = int(key)
  span = 2 * p + 1
  dy, dx, flip = ((key >> 32) & 0xFFFF) % span, (key & 0xFFFF) % span, bool(key >> 63)
  out = np.zeros_like(image)
  # The window [dy, dy+H) × [dx, dx+W) of the zero-padded image, copied without padding the whole image.
  top, left = max(0, p - dy), max(0, p - dx)
  src = image[max(0, dy - p) : h + min(0, dy - p), max(0, dx - p) : w + min(0, dx - p)]
  out[top : top + src.shape[0], left : left + src.shape[1]] = src
  return out[:, ::-1].copy() if flip else out


# --- Resizing ---


def resize_images(images: np.ndarray, size: int | tuple[int, int], method: str = "nearest") -> np.ndarray:
  """Resizes uint8 `(N, H, W, C)` images to `(N, S_h, S_w, C)`.

  Args:
    images: uint8 `(N, H, W, C)`.
    size: S or `(S_h, S_w)`.
    method: "nearest" (output pixel i takes input ⌊i·H/S⌋: exact replication for integer factors),
      "bilinear" (Pillow's antialiased bilinear resize of each image, see the module docstring) or "pad" (zero
      border around the centred image; S must be ≥ H, W).
  """
  sh, sw = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
  if sh < 1 or sw < 1:
    raise ValueError(f"`image_size` must be positive, got {size}.")
  n, h, w, c = images.shape
  if (sh, sw) == (h, w):
    return images
  if method == "nearest":
    ri = np.minimum((np.arange(sh) * h) // sh, h - 1)
    ci = np.minimum((np.arange(sw) * w) // sw, w - 1)
    return images[:, ri][:, :, ci]
  if method == "pad":
    if sh < h or sw < w:
      raise ValueError(f"`resize`='pad' cannot shrink {h}×{w} images to `image_size` {sh}×{sw}; use 'bilinear'.")
    top, left = (sh - h) // 2, (sw - w) // 2
    return np.pad(images, ((0, 0), (top, sh - h - top), (left, sw - w - left), (0, 0)))
  if method == "bilinear":
    out = np.empty((n, sh, sw, c), np.uint8)
    for i in range(n):
      out[i] = _pil_resize(images[i], (sh, sw))
    return out
  raise ValueError(f"`resize` must be 'nearest', 'bilinear' or 'pad', got {method!r}.")


LUMA = (0.299, 0.587, 0.114)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 `(..., C)` → `(..., channels)`: grey repeated to 3, or colour to grey by ITU-R 601 luma."""
  c = images.shape[-1]
  if channels == c:
    return images
  if channels == 3 and c == 1:
    return np.repeat(images, 3, axis=-1)
  if channels == 1 and c == 3:
    grey = images.astype(np.float32) @ np.asarray(LUMA, np.float32)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
  raise ValueError(f"`channels` must be 1 or 3, got {channels} (the images have {c}).")


def _pil_resize(image: np.ndarray, size: tuple[int, int], box=None) -> np.ndarray:
  """Pillow's bilinear (antialiased) resize of one uint8 `(H, W, C)` image to `(size[0], size[1], C)`.

  `box` = (left, top, right, bottom) resizes that crop instead. Colour images go through as "RGB"; any other
  channel count channel by channel as "L" (Pillow resizes the channels of an "RGB" image independently with the
  same weights, so this is the same filter; "RGBA" would premultiply alpha).
  """
  image = np.asarray(image, np.uint8)
  if image.shape[-1] == 3:
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))
  out = np.empty((size[0], size[1], image.shape[-1]), np.uint8)
  for ch in range(image.shape[-1]):
    grey = Image.fromarray(np.ascontiguousarray(image[..., ch]))
    out[..., ch] = np.asarray(grey.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box))
  return out


# --- ImageNet ---

INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)


def inception_crop_box(height: int, width: int, rng: np.random.Generator, *, area_range=INCEPTION_AREA,
                       aspect_range=INCEPTION_ASPECT, attempts: int = 10) -> tuple[int, int, int, int]:
  """`(top, left, h, w)` of a random crop of area ∈ area_range·HW and aspect w/h ∈ aspect_range (log-uniform).

  Up to `attempts` draws; if none fits, the centred crop of the whole image clamped to the aspect range
  (torchvision's `RandomResizedCrop.get_params`).
  """
  area = height * width
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(*area_range)
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  ratio = width / height
  if ratio < aspect_range[0]:
    w, h = width, int(round(width / aspect_range[0]))
  elif ratio > aspect_range[1]:
    h, w = height, int(round(height * aspect_range[1]))
  else:
    h, w = height, width
  h, w = min(h, height), min(w, width)
  return (height - h) // 2, (width - w) // 2, h, w


def inception_crop(image: np.ndarray, key, *, size: int = 224) -> np.ndarray:
  """ImageNet training augmentation of one uint8 `(H, W, C)` image → uint8 `(size, size, C)`.

  Random-resized crop (`inception_crop_box`), bilinear resize to size×size, horizontal flip with
  probability ½; all draws from `np.random.default_rng(key)`.
  """
  rng = np.random.default_rng(int(key))
  top, left, h, w = inception_crop_box(image.shape[0], image.shape[1], rng)
  out = _pil_resize(image, (size, size), box=(left, top, left + w, top + h))
  if rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def center_crop(image: np.ndarray, *, size: int = 224, resize_size: int | None = None) -> np.ndarray:
  """ImageNet evaluation transform of one uint8 `(H, W, C)` image → uint8 `(size, size, C)`.

  The shorter side is resized to `resize_size` (default round(size / 0.875): 256 for 224) keeping the aspect
  ratio (bilinear, antialiased), then the centred size×size square is cut out.
  """
  r = int(round(size / 0.875)) if resize_size is None else int(resize_size)
  if r < size:
    raise ValueError(f"`resize_size`={r} must be at least the crop `image_size`={size}.")
  h, w = image.shape[:2]
  if h <= w:
    nh, nw = r, max(r, int(r * w / h))
  else:
    nh, nw = max(r, int(r * h / w)), r
  resized = image if (nh, nw) == (h, w) else _pil_resize(image, (nh, nw))
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  return np.ascontiguousarray(resized[top : top + size, left : left + size])


# --- Normalisation ---


@functools.lru_cache(maxsize=32)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """float32 `(256, C)`: `(v/255 − mean_c) / std_c` for every pixel value v, in float32 arithmetic."""
  mean32 = np.asarray(mean, np.float32)
  inv_std = np.float32(1.0) / np.asarray(std, np.float32)
  table = (np.arange(256, dtype=np.float32)[:, None] * np.float32(1 / 255) - mean32) * inv_std
  table.flags.writeable = False
  return table


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """uint8 `(..., C)` → float32 `(x/255 − mean_c) / std_c` (a per-channel lookup table: the same bits for an
  image alone or in a batch)."""
  table = _normalize_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
  images = np.asarray(images)
  c = images.shape[-1]
  if table.shape[1] != c:
    raise ValueError(f"`mean`/`std` have {table.shape[1]} channels, the images {c}.")
  if images.dtype != np.uint8:
    raise ValueError(f"`images` must be uint8, got {images.dtype}.")
  out = np.empty(images.shape, np.float32)
  for ch in range(c):
    out[..., ch] = table[:, ch].take(images[..., ch])
  return out
