"""Pieces shared by the model families: initialisers, layer helpers, activation capture, parameter counts.

Every model maps NHWC float32 images `(b, H, W, C)` to logits `(b, num_classes)`:

    logits = model(x)
    logits, acts = model(x, capture=True)     # acts: OrderedDict[str, Array], input → output

and lists the names of `acts` without running (`model.layer_names`). `acts` is a `collections.OrderedDict`,
whose order survives `jax.jit` and `jax.tree.map` (a plain dict's would come back sorted by name). Captured activations are float32
whatever the compute dtype, in their natural shapes (`(b, h, w, c)` for conv maps, `(b, d)` for dense
layers); flatten per example only at the kernel boundary (`rsim_jax.kernels.flatten_features`). Call
`model.eval()` before extracting so that BatchNorm uses its running statistics (Nguyen et al. 2021 extract
with the trained network in inference mode), `model.train()` to train.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

def variance_scaling(scale: float, mode: str, distribution: str):
  """`jax.nn.initializers.variance_scaling(scale, mode, distribution)` for dense (in, out) and conv (HWIO)
  kernels, drawn as a flat vector and reshaped.

  Same distribution as JAX's: variance `scale / fan` with `fan = fan_in = in·kh·kw` or `fan_out = out·kh·kw`,
  "normal" or "truncated_normal" (±2σ, rescaled to that variance). JAX's partitionable threefry compiles a
  multi-dimensional draw several times slower on CPU (about a second per kernel shape), which made building
  a ResNet take ten seconds or more.
  """
  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    receptive = math.prod(shape[:-2])
    fan = shape[-2] * receptive if mode == "fan_in" else shape[-1] * receptive
    std = math.sqrt(scale / fan)
    size = (math.prod(shape),)
    if distribution == "truncated_normal":
      flat = jax.random.truncated_normal(key, -2.0, 2.0, size, dtype) * (std / 0.87962566103423978)
    else:
      flat = jax.random.normal(key, size, dtype) * std
    return flat.astype(dtype).reshape(shape)

  return init


# He et al. 2015 ("Delving deep into rectifiers") normal init, fan-out mode as in the torchvision ResNets.
conv_init = variance_scaling(2.0, "fan_out", "normal")
# LeCun normal (Flax's default for `nnx.Linear`).
dense_init = variance_scaling(1.0, "fan_in", "truncated_normal")


def dense(cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
  """A fully connected layer with LeCun-normal weights and zero bias."""
  return nnx.Linear(cin, cout, kernel_init=dense_init, dtype=dtype, rngs=rngs)


# PyTorch's BatchNorm momentum 0.1 is Flax's 0.9 (Flax weights the old running average).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolve_dtype(dtype: Any) -> Any:
  """`"float32" | "bfloat16" | "float16"`, a jnp dtype, or None (float32) → a jnp dtype."""
  if dtype is None:
    return jnp.float32
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"Unknown compute dtype {dtype!r}; choose one of {sorted(DTYPES)}.")
    return DTYPES[dtype]
  return dtype


def conv(cin: int, cout: int, kernel: int, stride: int = 1, *, dtype, rngs: nnx.Rngs, bias: bool = False):
  """A `kernel×kernel` convolution with PyTorch-style symmetric padding `kernel // 2` (no bias: BN follows)."""
  pad = kernel // 2
  return nnx.Conv(
      cin, cout, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
      use_bias=bias, kernel_init=conv_init, dtype=dtype, rngs=rngs,
  )


def batch_norm(features: int, *, dtype, rngs: nnx.Rngs, zero_scale: bool = False):
  """BatchNorm over (batch, H, W) with PyTorch's defaults; `zero_scale` starts γ at 0 (Goyal et al. 2017)."""
  return nnx.BatchNorm(
      features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
      scale_init=nnx.initializers.zeros if zero_scale else nnx.initializers.ones, rngs=rngs,
  )


def global_avg_pool(x: jax.Array) -> jax.Array:
  """`(b, h, w, c) → (b, c)`."""
  return jnp.mean(x, axis=(1, 2))


def check_input(x: jax.Array, model_name: str, in_channels: int) -> None:
  if x.ndim != 4 or x.shape[-1] != in_channels:
    raise ValueError(
        f"{model_name} expects NHWC images (batch, height, width, {in_channels}), got shape {tuple(x.shape)}."
    )


class Recorder:
  """Collects named activations in call order when enabled; a no-op otherwise.

  `rec(name, x)` stores `x` (as float32) under `name` and returns `x` unchanged, so model code reads
  `h = rec("stage1.block0.out", h)` without branching on `capture`.
  """

  def __init__(self, enabled: bool):
    # An OrderedDict keeps its order through jit / tree_map (a plain dict's leaves come back sorted by key).
    self.acts: collections.OrderedDict[str, jax.Array] | None = collections.OrderedDict() if enabled else None

  def __call__(self, name: str, x: jax.Array) -> jax.Array:
    if self.acts is not None:
      if name in self.acts:
        raise RuntimeError(f"Layer name {name!r} captured twice; the model's names must be unique.")
      self.acts[name] = x.astype(jnp.float32)
    return x

  def result(self, logits: jax.Array, layer_names: Sequence[str]):
    if self.acts is None:
      return logits
    if tuple(self.acts) != tuple(layer_names):
      raise RuntimeError(
          f"Captured layers {tuple(self.acts)} differ from `layer_names` {tuple(layer_names)} (a model bug)."
      )
    return logits, self.acts


def check_depth(depth: int, valid: Callable[[int], bool], lowest: int, *, model: str, rule: str) -> None:
  """Raises ValueError naming the depth rule and the nearest valid depths below and above `depth`."""
  if isinstance(depth, int) and valid(depth):
    return
  near = ()
  if isinstance(depth, int):
    below = next((d for d in range(depth - 1, lowest - 1, -1) if valid(d)), None)
    above = next(d for d in range(max(depth + 1, lowest), max(depth, lowest) + 100) if valid(d))
    near = tuple(d for d in (below, above) if d is not None)
  raise ValueError(
      f"{model} depth must be {rule}, got {depth!r}; nearest valid depths: {', '.join(map(str, near))}."
  )


def check_multiplier(value, name: str) -> int:
  """A positive integer width multiplier, or ValueError."""
  if int(value) != value or value < 1:
    raise ValueError(f"`{name}` must be a positive integer multiplier, got {value!r}.")
  return int(value)


class Projection(nnx.Module):
  """The projection shortcut of a residual block where its shape changes: 1×1 conv (stride) → BN ("option B"
  of He et al. 2016)."""

  def __init__(self, cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs):
    self.conv = conv(cin, cout, 1, stride, dtype=dtype, rngs=rngs)
    self.bn = batch_norm(cout, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.bn(self.conv(x))


def projection_if_needed(cin: int, cout: int, stride: int, *, dtype, rngs: nnx.Rngs) -> Projection | None:
  return Projection(cin, cout, stride, dtype=dtype, rngs=rngs) if (stride != 1 or cin != cout) else None


def param_count(make: Callable[[], nnx.Module] | nnx.Module) -> int:
  """Number of trainable parameters (`nnx.Param` leaves) of a model.

  `make` is a zero-argument constructor, evaluated on abstract shapes with `nnx.eval_shape` so that even
  WRN-28-10 or ResNet-152 allocate nothing; a built model is counted directly.
  """
  model = make if isinstance(make, nnx.Module) else nnx.eval_shape(make)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def run_blocks(model: nnx.Module, h: jax.Array, rec: Recorder, keep_blocks: jax.Array | None, *,
               capture: bool) -> jax.Array:
  """Applies `model.blocks` in order; with `keep_blocks`, a residual block whose entry is False is removed.

  Removing a block replaces it by its identity shortcut, `y = x` (Veit et al. 2016; the block pruning of
  Nguyen et al. 2021, Sec. 4). For a post-activation block `y = ReLU(F(x) + x)` on a post-ReLU input this
  is exactly the block with its residual branch zeroed (a block whose last BatchNorm scale and bias are 0
  gives the same logits kept or removed); for a pre-activation block `y = x + F(x)` (WideResNet) likewise
  with `F = 0`. The choice is `jnp.where(keep, block(x), x)`, so `keep_blocks`
  may be traced: one compiled forward pass evaluates every pruning pattern (and vmaps over patterns).

  Args:
    model: a residual model with `blocks` and `block_prefixes`; each block has `proj` (None for an
      identity shortcut).
    h: input of the first block.
    rec: the model's recorder.
    keep_blocks: None (run all blocks) or a bool array `(len(model.blocks),)` in `model.block_prefixes`
      order. Entries of blocks with a projection shortcut must be True (they change the shape and cannot
      be removed); `rsim_jax.analysis.pruning.keep_mask` builds valid masks by name.
    capture: whether activations are being captured; not allowed with `keep_blocks` (a removed block's
      layers have no activation of their own).
  """
  if keep_blocks is None:
    for block, prefix in zip(model.blocks, model.block_prefixes):
      h = block(h, rec, prefix)
    return h
  if capture:
    raise ValueError("`keep_blocks` cannot be combined with `capture=True`: a removed block has no "
                     "activations of its own; capture the unpruned model instead.")
  keep_blocks = jnp.asarray(keep_blocks)
  if keep_blocks.shape != (len(model.blocks),):
    raise ValueError(f"`keep_blocks` must have shape ({len(model.blocks)},), one entry per residual block in "
                     f"`model.block_prefixes` order; got {keep_blocks.shape}.")
  if not isinstance(keep_blocks, jax.core.Tracer):
    fixed = [p for p, b, k in zip(model.block_prefixes, model.blocks, keep_blocks.tolist())
             if b.proj is not None and not k]
    if fixed:
      raise ValueError(f"Blocks {fixed} have a projection shortcut (they change the shape) and cannot be "
                       "removed; set their `keep_blocks` entries to True.")
  for i, (block, prefix) in enumerate(zip(model.blocks, model.block_prefixes)):
    out = block(h, rec, prefix)
    # A projection block always runs: its entry is documented to be True and the shapes forbid otherwise.
    h = out if block.proj is not None else jnp.where(keep_blocks[i], out, h)
  return h
