"""Small networks for 28×28 grey images (MNIST, Fashion-MNIST): a fully connected `MLP` and the convolutional
`DeepNet` of the dimensionality study of Recanatesi et al. 2019 ("Dimensionality compression and expansion in
Deep Neural Networks"): a few conv + ReLU + max-pool layers, then dense ReLU layers and a linear read-out.

Neither uses BatchNorm, so `train()` / `eval()` change nothing; inputs are NHWC float32 like every model.

Captured layers:
  MLP      "dense1", ..., "dense{L}" (after ReLU), "logits"
  DeepNet  "conv1", "pool1", ..., "conv{C}", "pool{C}" (conv after ReLU, then after 2×2 max-pool),
           "dense1", ..., "dense{L}" (after ReLU), "logits"
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rsim_jax.models import common


def _positive_ints(values, name: str) -> tuple[int, ...]:
  values = tuple(values)
  if not values or any(int(v) != v or v < 1 for v in values):
    raise ValueError(f"`{name}` must be a non-empty sequence of positive layer widths, got {values!r}.")
  return tuple(int(v) for v in values)


class MLP(nnx.Module):
  """Fully connected ReLU network on flattened images.

  Args:
    hidden: widths of the hidden layers, e.g. (512, 512).
    num_classes: size of the linear read-out.
    in_features: flattened input size (784 for 28×28×1).
    dtype, rngs: as for `ResNet`.

  Call: `model(x)` for `x` of shape (b, ...) with `prod(...) == in_features` → logits `(b, num_classes)`.
  """

  def __init__(
      self, hidden: Sequence[int] = (512, 512), num_classes: int = 10, *, in_features: int = 784,
      dtype="float32", rngs: nnx.Rngs,
  ):
    hidden = _positive_ints(hidden, "hidden")
    dtype = common.resolve_dtype(dtype)
    self.hidden, self.num_classes, self.in_features = hidden, num_classes, in_features
    widths = (in_features,) + hidden
    self.layers = nnx.List([common.dense(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = common.dense(widths[-1], num_classes, dtype=dtype, rngs=rngs)
    self.layer_names = tuple(f"dense{i}" for i in range(1, len(hidden) + 1)) + ("logits",)

  def __call__(self, x: jax.Array, *, capture: bool = False):
    h = x.reshape(x.shape[0], -1)
    if h.shape[1] != self.in_features:
      raise ValueError(
          f"MLP built for {self.in_features} input features got inputs of shape {tuple(x.shape)} "
          f"({h.shape[1]} features per example); set `in_features`."
      )
    rec = common.Recorder(capture)
    for name, layer in zip(self.layer_names, self.layers):
      h = rec(name, nnx.relu(layer(h)))
    logits = rec("logits", self.head(h))
    return rec.result(logits.astype(jnp.float32), self.layer_names)


class DeepNet(nnx.Module):
  """Conv net for small grey images (Recanatesi et al. 2019's Fashion-MNIST "DeepNet" family).

  Each conv block is a `kernel_size×kernel_size` 'SAME' conv → ReLU → 2×2 max-pool; then dense ReLU layers
  and a linear read-out.

  Args:
    conv_features: output channels of the conv blocks, e.g. (32, 64).
    dense_features: widths of the dense layers after flattening, e.g. (256,).
    num_classes: size of the read-out.
    in_channels: image channels (1 for Fashion-MNIST).
    image_size: input height = width (28); each pool halves it (floor).
    kernel_size: conv kernel size.
    dtype, rngs: as for `ResNet`.
  """

  def __init__(
      self, conv_features: Sequence[int] = (32, 64), dense_features: Sequence[int] = (256,),
      num_classes: int = 10, *, in_channels: int = 1, image_size: int = 28, kernel_size: int = 5,
      dtype="float32", rngs: nnx.Rngs,
  ):
    conv_features = _positive_ints(conv_features, "conv_features")
    dense_features = _positive_ints(dense_features, "dense_features") if dense_features else ()
    if image_size // 2 ** len(conv_features) < 1:
      raise ValueError(
          f"{len(conv_features)} conv blocks halve a {image_size}×{image_size} image to nothing; use fewer."
      )
    dtype = common.resolve_dtype(dtype)
    self.conv_features, self.dense_features = conv_features, dense_features
    self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
    chans = (in_channels,) + conv_features
    self.convs = nnx.List([
        nnx.Conv(a, b, (kernel_size, kernel_size), padding="SAME", kernel_init=common.conv_init, dtype=dtype,
                 rngs=rngs)
        for a, b in zip(chans[:-1], chans[1:])
    ])
    side = image_size
    for _ in conv_features:
      side //= 2
    widths = (side * side * conv_features[-1],) + dense_features
    self.dense = nnx.List([common.dense(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    self.head = common.dense(widths[-1], num_classes, dtype=dtype, rngs=rngs)
    conv_names = [n for i in range(1, len(conv_features) + 1) for n in (f"conv{i}", f"pool{i}")]
    dense_names = [f"dense{i}" for i in range(1, len(dense_features) + 1)]
    self.layer_names = tuple(conv_names + dense_names + ["logits"])

  def __call__(self, x: jax.Array, *, capture: bool = False):
    common.check_input(x, "DeepNet", self.in_channels)
    if x.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
          f"DeepNet built for {self.image_size}×{self.image_size} images got shape {tuple(x.shape)}; set "
          "`image_size`."
      )
    rec = common.Recorder(capture)
    h = x
    for i, conv in enumerate(self.convs, start=1):
      h = rec(f"conv{i}", nnx.relu(conv(h)))
      h = rec(f"pool{i}", nnx.max_pool(h, (2, 2), strides=(2, 2)))
    h = h.reshape(h.shape[0], -1)
    for i, layer in enumerate(self.dense, start=1):
      h = rec(f"dense{i}", nnx.relu(layer(h)))
    logits = rec("logits", self.head(h))
    return rec.result(logits.astype(jnp.float32), self.layer_names)

