"""ImageNet bottleneck ResNets (He et al. 2016, Table 1; "v1.5": the stride sits on the 3×3 conv) with a width
multiplier, the ImageNet models of Nguyen, Raghu & Kornblith 2021.

Architecture for `blocks_per_stage = (n1, n2, n3, n4)` and width multiplier `w` (224×224 inputs):

    stem      7×7/2 conv (64w) → BN → ReLU → 3×3/2 max-pool
    stage s   n_s bottleneck blocks of inner width 64w·2^(s-1) and output width 4× that; first block of
              stages 2–4 has stride 2
    block     y = ReLU( BN(conv1×1(ReLU(BN(conv3×3(ReLU(BN(conv1×1(x))))))) + shortcut(x) ),
              shortcut = identity, or 1×1 conv (stride) → BN where the shape changes
    head      global average pool → linear (num_classes)

`w` multiplies every layer's channel count. ResNet-50 = (3, 4, 6, 3) ≈ 25.6M parameters, ResNet-101 =
(3, 4, 23, 3), ResNet-152 = (3, 8, 36, 3).

Captured layers (`model.layer_names`, in this order):

    "stem"                                    after the max-pool, (b, 56, 56, 64w)
    "stage{s}.block{i}.conv1", ".conv2"       the first two convs of a block after BN + ReLU
    "stage{s}.block{i}.out"                   block output after the residual add and ReLU
    "pool", "logits"
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from rsim_jax.models import common

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
EXPANSION = 4


class Bottleneck(nnx.Module):
  def __init__(self, cin: int, inner: int, stride: int, *, zero_init_last_bn: bool, dtype, rngs: nnx.Rngs):
    cout = inner * EXPANSION
    self.conv1 = common.conv(cin, inner, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = common.batch_norm(inner, dtype=dtype, rngs=rngs)
    self.conv2 = common.conv(inner, inner, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = common.batch_norm(inner, dtype=dtype, rngs=rngs)
    self.conv3 = common.conv(inner, cout, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = common.batch_norm(cout, dtype=dtype, rngs=rngs, zero_scale=zero_init_last_bn)
    self.proj = common.projection_if_needed(cin, cout, stride, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, rec: common.Recorder, prefix: str) -> jax.Array:
    h = rec(f"{prefix}.conv1", nnx.relu(self.bn1(self.conv1(x))))
    h = rec(f"{prefix}.conv2", nnx.relu(self.bn2(self.conv2(h))))
    h = self.bn3(self.conv3(h))
    shortcut = x if self.proj is None else self.proj(x)
    return rec(f"{prefix}.out", nnx.relu(h + shortcut))


class ImageNetResNet(nnx.Module):
  """Bottleneck ResNet for 224×224 images with width multiplier `width`.

  Args:
    blocks_per_stage: blocks in each of the 4 stages, e.g. (3, 4, 6, 3) for ResNet-50; depth is
      `3·sum + 2`.
    width: positive integer multiplier of every layer's channel count.
    num_classes: 1000 for ImageNet.
    in_channels, zero_init_last_bn, dtype, rngs: as for `ResNet`.
  """

  def __init__(
      self, blocks_per_stage: Sequence[int] = (3, 4, 6, 3), width: int = 1, num_classes: int = 1000, *,
      in_channels: int = 3, zero_init_last_bn: bool = False, dtype="float32", rngs: nnx.Rngs,
  ):
    blocks_per_stage = tuple(int(b) for b in blocks_per_stage)
    if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
      raise ValueError(
          f"`blocks_per_stage` must be 4 positive block counts such as (3, 4, 6, 3) (ResNet-50), got "
          f"{blocks_per_stage}."
      )
    dtype = common.resolve_dtype(dtype)
    self.blocks_per_stage, self.width = blocks_per_stage, common.check_multiplier(width, "width")
    self.num_classes, self.in_channels = num_classes, in_channels
    self.depth = 3 * sum(blocks_per_stage) + 2
    base = 64 * self.width
    self.stem_conv = common.conv(in_channels, base, 7, 2, dtype=dtype, rngs=rngs)
    self.stem_bn = common.batch_norm(base, dtype=dtype, rngs=rngs)
    blocks, prefixes, names, cin = [], [], ["stem"], base
    for s, n in enumerate(blocks_per_stage, start=1):
      inner = base * 2 ** (s - 1)
      for i in range(n):
        stride = 2 if (s > 1 and i == 0) else 1
        blocks.append(Bottleneck(cin, inner, stride, zero_init_last_bn=zero_init_last_bn, dtype=dtype, rngs=rngs))
        prefixes.append(f"stage{s}.block{i}")
        names += [f"stage{s}.block{i}.{part}" for part in ("conv1", "conv2", "out")]
        cin = inner * EXPANSION
    self.blocks = nnx.List(blocks)
    self.block_prefixes = tuple(prefixes)
    self.head = common.dense(cin, num_classes, dtype=dtype, rngs=rngs)
    self.layer_names = tuple(names + ["pool", "logits"])

  def __call__(self, x: jax.Array, *, capture: bool = False, keep_blocks: jax.Array | None = None):
    common.check_input(x, f"ResNet-{self.depth}", self.in_channels)
    rec = common.Recorder(capture)
    h = nnx.relu(self.stem_bn(self.stem_conv(x)))
    h = rec("stem", nnx.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
    h = common.run_blocks(self, h, rec, keep_blocks, capture=capture)
    h = rec("pool", common.global_avg_pool(h))
    logits = rec("logits", self.head(h))
    return rec.result(logits.astype(jax.numpy.float32), self.layer_names)


def _named(depth: int):
  def make(width: int = 1, num_classes: int = 1000, **kwargs) -> ImageNetResNet:
    return ImageNetResNet(DEPTHS[depth], width, num_classes, **kwargs)

  make.__name__ = make.__qualname__ = f"ResNet{depth}"
  make.__doc__ = f"ResNet-{depth}: `ImageNetResNet({DEPTHS[depth]}, width, num_classes, ...)`."
  return make


ResNet50 = _named(50)
ResNet101 = _named(101)
ResNet152 = _named(152)
