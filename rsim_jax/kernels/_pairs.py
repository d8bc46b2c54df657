"""All-pairs machinery shared by the Procrustes, CCA and RSA kernels.

Each index factors every layer once (an orthonormal or weighted basis, a normalised RDM, ...), then contracts
every layer pair. Layers whose factors have the same shapes are stacked into one group; each pair of groups is
one jitted `lax.map` over its layer pairs, so the Python loop runs over groups (a handful of distinct widths),
never over examples or layer pairs. Factor widths are rounded up to a short ladder (`bucket_width`) and padded
with zero columns, which leaves every index unchanged and keeps the number of compilations small.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import _checks, _sharding
from rsim_jax.kernels.features import as_features


def as_layers(layers: Any, name: str) -> list[jax.Array]:
  """Validates a model's layers: a sequence, an ordered mapping (its values) or a stacked `(L, n, ...)` array;
  each layer `(n, ...)` is flattened per example, and all must hold the same n examples."""
  if isinstance(layers, Mapping):
    layers = list(layers.values())
  elif isinstance(layers, (jax.Array, np.ndarray)):
    if layers.ndim < 3:
      raise ValueError(
          f"`{name}` must be a list of (n, d) layers or a stacked (L, n, d) array, got shape {tuple(layers.shape)}."
      )
    layers = list(layers)
  else:
    layers = list(layers)
  if not layers:
    raise ValueError(f"`{name}` is empty; pass at least one layer.")
  out = []
  for i, layer in enumerate(layers):
    # Factorisations (QR, eigh, sorts) need every example on one device: an example-split layer is gathered.
    arr = _sharding.replicated(as_features(layer, f"{name}[{i}]"))
    _checks.check_finite(arr, f"{name}[{i}]")
    if arr.dtype in (jnp.float16, jnp.bfloat16):
      arr = arr.astype(jnp.float32)
    out.append(arr)
  for i, arr in enumerate(out[1:], start=1):
    _checks.check_same_examples(out[0], arr, f"{name}[0]", f"{name}[{i}]")
  return out


def bucket_width(width: int, cap: int) -> int:
  """`width` rounded up to the ladder 32·2^(j/2) (multiples of 32), at most `cap`: ≤ 1.42× the columns (and
  ≤ 2.8× the flops of an O(r³) step) for at most ~2 log₂(cap) distinct shapes."""
  if width >= cap:
    return cap
  step = 32
  rung = step
  while rung < width:
    rung = int(math.ceil(rung * math.sqrt(2.0) / step) * step)
  return min(rung, cap)


def pad_columns(a: jax.Array, width: int) -> jax.Array:
  """Zero columns appended to `(..., n, r)` up to `width`."""
  extra = width - a.shape[-1]
  if extra <= 0:
    return a
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])


def pad_rows(a: jax.Array, height: int) -> jax.Array:
  extra = height - a.shape[-2]
  if extra <= 0:
    return a
  return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, extra), (0, 0)])


def singular_values(c: jax.Array) -> jax.Array:
  """Singular values of a `(p, q)` matrix, descending (`min(p, q)` of them), for contractions of two factors.

  A clearly rectangular matrix is first reduced to the `(k, k)` triangle `R` of a Householder QR (of `c` or
  `cᵀ`), `k = min(p, q)`: the singular values are unchanged, and the QR is mostly matrix–matrix work, while the
  SVD's cost is LAPACK's bidiagonal reduction, matrix–vector work of `4·max·k² − 4k³/3` flops on the rectangle
  (`gesdd` takes a QR itself only above an aspect ratio of 11/6) against `8k³/3` on the triangle. Both steps are
  backward stable, so the values still agree with the exact ones to `~ε‖c‖`.
  """
  p, q = c.shape[-2:]
  if 10 * p >= 11 * q:
    c = jnp.linalg.qr(c, mode="r")
  elif 10 * q >= 11 * p:
    c = jnp.linalg.qr(jnp.swapaxes(c, -1, -2), mode="r")
  return jnp.linalg.svd(c, compute_uv=False)


def _shape_key(factor) -> tuple:
  return tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(factor))


def _groups(factors: list) -> list[tuple[list[int], Any]]:
  """Layers with equally shaped factors, stacked: `[(layer indices, stacked factor pytree), ...]`."""
  by_key: dict[tuple, list[int]] = {}
  for i, factor in enumerate(factors):
    by_key.setdefault(_shape_key(factor), []).append(i)
  return [(idx, jax.tree.map(lambda *leaves: jnp.stack(leaves), *[factors[i] for i in idx])) for idx in by_key.values()]


@functools.partial(jax.jit, static_argnames=("pair_fn", "both"))
def _map_pairs(pair_fn, both, stack_x, stack_y, index_x, index_y):
  def one(ij):
    fx = jax.tree.map(lambda leaf: leaf[ij[0]], stack_x)
    fy = jax.tree.map(lambda leaf: leaf[ij[1]], stack_y)
    return pair_fn(fx, fy, both=both)

  return jax.lax.map(one, (index_x, index_y))


def all_pairs(
    factors_x: list, factors_y: list | None, pair_fn: Callable, *, fill: float = np.nan
) -> dict[str, np.ndarray]:
  """Applies `pair_fn` to every (x layer, y layer) pair and returns `{name: (L_x, L_y) array}`.

  `pair_fn(fx, fy, *, both)` (a module-level function, so the jit cache is reused across calls) returns
  `(forward, backward)`: dicts of scalars for the pair (x_i, y_j) and, when `both` is True, for (y_j, x_i)
  (else `backward` may be None). With `factors_y=None` the layers are compared with themselves: each
  unordered pair is computed once and `backward` fills the transposed entry.
  """
  symmetric = factors_y is None
  groups_x = _groups(factors_x)
  groups_y = groups_x if symmetric else _groups(factors_y)
  num_x = len(factors_x)
  num_y = num_x if symmetric else len(factors_y)
  out: dict[str, np.ndarray] = {}
  for a, (idx_x, stack_x) in enumerate(groups_x):
    for b, (idx_y, stack_y) in enumerate(groups_y):
      if symmetric and b < a:
        continue
      if symmetric and a == b:
        pi, pj = np.triu_indices(len(idx_x))
      else:
        pi, pj = (g.ravel() for g in np.meshgrid(np.arange(len(idx_x)), np.arange(len(idx_y)), indexing="ij"))
      forward, backward = _map_pairs(
          pair_fn, symmetric, stack_x, stack_y, jnp.asarray(pi, jnp.int32), jnp.asarray(pj, jnp.int32)
      )
      rows, cols = np.asarray(idx_x)[pi], np.asarray(idx_y)[pj]
      for name, values in forward.items():
        if name not in out:
          out[name] = np.full((num_x, num_y), fill, dtype=np.asarray(values).dtype)
        out[name][rows, cols] = np.asarray(values)
        if symmetric:
          out[name][cols, rows] = np.asarray(backward[name])
  return out
