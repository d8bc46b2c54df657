"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis 2016, "Wide Residual Networks"), the family whose
last hidden layer Doimo et al. 2021 ("Representation mitosis in wide neural networks") study.

Architecture for depth `d = 6n + 4` and widen factor `k` (pre-activation blocks, He et al. 2016b):

    stem      3×3 conv (16)
    stage s   n blocks at 16k, 32k, 64k channels (s = 1, 2, 3); first block of stages 2, 3 has stride 2
    block     a = ReLU(BN(x));  h = conv3×3(ReLU(BN(conv3×3(a))));  y = h + shortcut,
              shortcut = x, or 1×1 conv (stride) of `a` where the shape changes
    head      ReLU(BN(·)) → global average pool → linear

The last hidden layer ("pool") has 64·k units. WRN-28-10 has ≈ 36.5M parameters.

Captured layers (`model.layer_names`, in this order):

    "stem"                       stem conv output, (b, H, W, 16)
    "stage{s}.block{i}.conv1"    first conv of block i after BN + ReLU (the second conv's input)
    "stage{s}.block{i}.out"      block output after the residual add (pre-activation blocks apply no ReLU)
    "final"                      ReLU(BN(last block output)), (b, h, w, 64k)
    "pool"                       globally pooled features, (b, 64k): the last hidden representation
    "logits"                     (b, num_classes)
"""

from __future__ import annotations

import jax
from flax import nnx

from rsim_jax.models import common


def valid_depth(depth: int) -> bool:
  return depth >= 10 and (depth - 4) % 6 == 0


class PreActBlock(nnx.Module):
  """Pre-activation basic block; the projection shortcut (1×1 conv) acts on the pre-activated input."""

  def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs):
    self.bn1 = common.batch_norm(cin, dtype=dtype, rngs=rngs)
    self.conv1 = common.conv(cin, cout, 3, stride, dtype=dtype, rngs=rngs)
    self.bn2 = common.batch_norm(cout, dtype=dtype, rngs=rngs)
    self.conv2 = common.conv(cout, cout, 3, 1, dtype=dtype, rngs=rngs)
    self.proj = common.conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs) if (stride != 1 or cin != cout) else None

  def __call__(self, x: jax.Array, rec: common.Recorder, prefix: str) -> jax.Array:
    a = nnx.relu(self.bn1(x))
    h = rec(f"{prefix}.conv1", nnx.relu(self.bn2(self.conv1(a))))
    h = self.conv2(h)
    shortcut = x if self.proj is None else self.proj(a)
    return rec(f"{prefix}.out", h + shortcut)


class WideResNet(nnx.Module):
  """WRN-`depth`-`widen_factor` (Zagoruyko & Komodakis 2016).

  Args:
    depth: `6n + 4` (10, 16, 22, 28, 34, 40, ...); n blocks per stage.
    widen_factor: k; stage widths 16k, 32k, 64k, last hidden layer 64k.
    num_classes, in_channels, dtype, rngs: as for `ResNet`.

  Call: `model(x)` → logits; `model(x, capture=True)` → `(logits, acts)` (names in the module docstring).
  """

  def __init__(
      self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, *, in_channels: int = 3,
      dtype="float32", rngs: nnx.Rngs,
  ):
    common.check_depth(depth, valid_depth, 10, model="Wide ResNet",
                       rule="6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...)")
    dtype = common.resolve_dtype(dtype)
    self.depth, self.widen_factor = depth, common.check_multiplier(widen_factor, "widen_factor")
    self.num_classes, self.in_channels = num_classes, in_channels
    n = (depth - 4) // 6
    widths = [16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor]
    self.stem = common.conv(in_channels, 16, 3, 1, dtype=dtype, rngs=rngs)
    blocks, names, cin = [], ["stem"], 16
    for s, cout in enumerate(widths, start=1):
      for i in range(n):
        blocks.append(PreActBlock(cin, cout, 2 if (s > 1 and i == 0) else 1, dtype=dtype, rngs=rngs))
        names += [f"stage{s}.block{i}.conv1", f"stage{s}.block{i}.out"]
        cin = cout
    self.blocks = nnx.List(blocks)
    self.block_prefixes = tuple(f"stage{s}.block{i}" for s in (1, 2, 3) for i in range(n))
    self.final_bn = common.batch_norm(cin, dtype=dtype, rngs=rngs)
    self.head = common.dense(cin, num_classes, dtype=dtype, rngs=rngs)
    self.layer_names = tuple(names + ["final", "pool", "logits"])

  def __call__(self, x: jax.Array, *, capture: bool = False, keep_blocks: jax.Array | None = None):
    common.check_input(x, f"WRN-{self.depth}-{self.widen_factor}", self.in_channels)
    rec = common.Recorder(capture)
    h = rec("stem", self.stem(x))
    h = common.run_blocks(self, h, rec, keep_blocks, capture=capture)
    h = rec("final", nnx.relu(self.final_bn(h)))
    h = rec("pool", common.global_avg_pool(h))
    logits = rec("logits", self.head(h))
    return rec.result(logits.astype(jax.numpy.float32), self.layer_names)
