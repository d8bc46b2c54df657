"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning", Sec. 4.2) with a width multiplier, as varied in
Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?").

Architecture for depth `6n + 2` and width multiplier `k`:

    stem      3×3 conv (16k) → BN → ReLU
    stage s   n basic blocks at 16k, 32k, 64k channels (s = 1, 2, 3); the first block of stages 2, 3 has stride 2
    block     y = ReLU( BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x) ),
              shortcut = identity, or 1×1 conv (stride) → BN where the shape changes ("option B")
    head      global average pool → linear (num_classes)

Captured layers (`model.layer_names`, in this order):

    "stem"                       stem output after ReLU, (b, H, W, 16k)
    "stage{s}.block{i}.conv1"    first conv of block i after BN + ReLU
    "stage{s}.block{i}.out"      block output after the residual add and ReLU (= the second conv's
                                 post-activation output)
    "pool"                       globally pooled features, (b, 64k)
    "logits"                     (b, num_classes)

with s = 1..3 and i = 0..n-1. Works for any input size (8×8 digits, 16×16 or 32×32 CIFAR).
"""

from __future__ import annotations

import jax
from flax import nnx

from rsim_jax.models import common


def valid_depth(depth: int) -> bool:
  return depth >= 8 and (depth - 2) % 6 == 0


class BasicBlock(nnx.Module):
  """Post-activation basic block (two 3×3 convs) with a projection shortcut where the shape changes."""

  def __init__(self, cin: int, cout: int, stride: int, *, zero_init_last_bn: bool, dtype, rngs: nnx.Rngs):
    self.conv1 = common.conv(cin, cout, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = common.batch_norm(cout, dtype=dtype, rngs=rngs)
    self.conv2 = common.conv(cout, cout, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = common.batch_norm(cout, dtype=dtype, rngs=rngs, zero_scale=zero_init_last_bn)
    self.proj = common.projection_if_needed(cin, cout, stride, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, rec: common.Recorder, prefix: str) -> jax.Array:
    h = rec(f"{prefix}.conv1", nnx.relu(self.bn1(self.conv1(x))))
    h = self.bn2(self.conv2(h))
    shortcut = x if self.proj is None else self.proj(x)
    return rec(f"{prefix}.out", nnx.relu(h + shortcut))


class ResNet(nnx.Module):
  """CIFAR ResNet-`depth` with width multiplier `width` (He et al. 2016; Nguyen et al. 2021).

  Args:
    depth: number of weighted layers, `6n + 2` (8, 14, 20, 26, 32, 38, 44, 56, 110, 164, ...); `n` basic
      blocks per stage.
    width: channel multiplier k (stage widths 16k, 32k, 64k; Nguyen et al. use 1, 2, 4, 8, 10).
    num_classes: size of the linear head.
    in_channels: image channels (3 for CIFAR, 1 for digits / MNIST).
    zero_init_last_bn: start the last BN scale of every block at 0 so blocks begin as identities
      (Goyal et al. 2017); tames loss spikes of deep or wide nets at lr 0.1.
    dtype: compute dtype (`"float32"` or `"bfloat16"`); parameters stay float32.
    rngs: `nnx.Rngs` for the initialisation.

  Call: `model(x)` with NHWC float32 `x` → logits `(b, num_classes)`; `model(x, capture=True)` → `(logits,
  acts)` (see the module docstring for the names); `model(x, keep_blocks=mask)` removes the residual blocks
  whose entry of the bool mask `(len(model.blocks),)` is False (`common.run_blocks`; block pruning).
  """

  def __init__(
      self, depth: int, width: int = 1, num_classes: int = 10, *, in_channels: int = 3,
      zero_init_last_bn: bool = False, dtype="float32", rngs: nnx.Rngs,
  ):
    common.check_depth(depth, valid_depth, 8, model="CIFAR ResNet",
                       rule="6n+2 with n >= 1 (8, 14, 20, 26, 32, 38, 44, 56, 110, 164, ...)")
    width = common.check_multiplier(width, "width")
    dtype = common.resolve_dtype(dtype)
    self.depth, self.width, self.num_classes, self.in_channels = depth, width, num_classes, in_channels
    n = (depth - 2) // 6
    widths = [16 * self.width, 32 * self.width, 64 * self.width]
    self.stem_conv = common.conv(in_channels, widths[0], 3, 1, dtype=dtype, rngs=rngs)
    self.stem_bn = common.batch_norm(widths[0], dtype=dtype, rngs=rngs)
    blocks, names, cin = [], ["stem"], widths[0]
    for s, cout in enumerate(widths, start=1):
      for i in range(n):
        stride = 2 if (s > 1 and i == 0) else 1
        blocks.append(BasicBlock(cin, cout, stride, zero_init_last_bn=zero_init_last_bn, dtype=dtype, rngs=rngs))
        names += [f"stage{s}.block{i}.conv1", f"stage{s}.block{i}.out"]
        cin = cout
    self.blocks = nnx.List(blocks)
    self.block_prefixes = tuple(f"stage{s}.block{i}" for s in (1, 2, 3) for i in range(n))
    self.head = common.dense(cin, num_classes, dtype=dtype, rngs=rngs)
    self.layer_names = tuple(names + ["pool", "logits"])

  def __call__(self, x: jax.Array, *, capture: bool = False, keep_blocks: jax.Array | None = None):
    common.check_input(x, f"ResNet-{self.depth}", self.in_channels)
    rec = common.Recorder(capture)
    h = rec("stem", nnx.relu(self.stem_bn(self.stem_conv(x))))
    h = common.run_blocks(self, h, rec, keep_blocks, capture=capture)
    h = rec("pool", common.global_avg_pool(h))
    logits = rec("logits", self.head(h))
    return rec.result(logits.astype(jax.numpy.float32), self.layer_names)
