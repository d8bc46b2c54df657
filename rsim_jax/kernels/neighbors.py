"""Exact k nearest neighbours by blocked matrix products, never forming the `(n, n)` distance matrix.

Two passes:

1. **Candidates.** Squared distances `‖x_i − x_j‖² = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j` are ranked tile by tile
   (`B × B` tiles of a matrix product of centred features). The distance matrix is symmetric, so only the tiles
   `I ≤ J` are formed (half the flops of a plain query × database product): one tile ranks the points of `J` for
   the rows of `I` and, read along its columns, the points of `I` for the rows of `J`. Every point keeps its
   `C` best so far (`C = num_candidates ≥ k`). From a tile, each row (column) contributes a short list that
   is sure to hold its `C` smallest entries — the members of the `C` groups of 16 entries with the smallest
   minima (any of the `C` smallest entries lies in one of them) — and one `top_k` merges the lists of both
   directions into the running best. Tiles are visited in a `lax.scan`. Memory: the features plus
   `O(B² + n·C)`.
2. **Exact distances.** The candidates' distances are recomputed from the coordinates, `‖x_i − x_j‖`
   (scaled by `max|x_i − x_j|`, so it neither underflows nor overflows), and the `k` smallest are kept, ties
   broken by index. Float32 cancellation in pass 1 therefore cannot create false zeros: duplicated points
   have distance exactly 0 and distinct points a positive distance. The extra `C − k` candidates absorb the
   rounding of pass 1 (two points whose squared distances to a query differ by less than `~1e-6 ‖x‖²` may be
   ranked in either order there).

A point is never its own neighbour: self pairs are excluded by index, not by distance, so duplicated points
are each other's neighbours at distance 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding

# Query/database tile size on CPU: 1024 × 1024 tiles keep the matrix product near the GEMM rate while the
# tile (4 MiB in float32) stays in cache for the selection.
DEFAULT_BLOCK_SIZE = 1024
_GROUP = 16  # entries per group in the two-stage selection of candidates


def default_num_candidates(n: int, k: int) -> int:
  """Candidates kept per point in the ranking pass: `2k + 4`, at most `n − 1`."""
  return int(min(n - 1, 2 * k + 4))


def check_k(k, n: int, name: str = "k") -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"`{name}` must be a positive integer, got {k!r}.")
  k = int(k)
  if k < 1:
    raise ValueError(f"`{name}` must be at least 1, got {k}.")
  if k >= n:
    raise ValueError(
        f"`{name}`={k} must be smaller than the number of points n={n} (a point is not its own neighbour)."
    )
  return k


def float_features(x, name: str = "x") -> jax.Array:
  x = _checks.as_float_array(x, name)
  _checks.check_2d(x, name)
  if x.dtype in (jnp.float16, jnp.bfloat16):
    x = x.astype(jnp.float32)
  return x


def check_block_size(block_size) -> int:
  if block_size is None:
    return DEFAULT_BLOCK_SIZE
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
    raise ValueError(f"`block_size` must be a positive integer, got {block_size!r}.")
  return int(block_size)


def tile_size(n: int, block_size: int, num_candidates: int) -> int:
  """The tile actually used: at most `block_size`, no larger than n rounded up to 8, at least C."""
  return int(max(num_candidates, min(block_size, -(-n // 8) * 8)))


def knn_distances(
    x: jax.Array,
    *,
    k: int,
    block_size: int | None = None,
    num_candidates: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Exact Euclidean k nearest neighbours of every point among the others.

  Pass 1 ranks squared distances `‖x_i‖² + ‖x_j‖² − 2 x_i·x_j` of centred features over `B × B` tiles
  (only the tiles on and above the diagonal: the matrix is symmetric), keeping `num_candidates` per point;
  pass 2 recomputes those candidates' distances `‖x_i − x_j‖` from the coordinates and keeps the k smallest.
  See the module docstring. Work: `n²·d/2` multiply-adds (half of a query × database product); memory: `x`
  plus `O(B² + n·num_candidates)`, never `(n, n)`.

  Args:
    x: `(n, d)` points (examples × features). float16/bfloat16 are computed in float32.
    k: neighbours per point, `1 ≤ k ≤ n − 1`.
    block_size: tile size B (rows and columns); default 1024, tuned for CPU. Values of 512–2048 are all
      reasonable; larger tiles use `4·B²` bytes of scratch.
    num_candidates: candidates per point kept by the ranking pass, `k ≤ C ≤ n − 1` (default `2k + 4`).

  Returns:
    `(distances, indices)`: `(n, k)` distances in increasing order (ties by increasing index) and the
    `(n, k)` int32 indices of the neighbours. Self is excluded by index; duplicated points are neighbours
    at distance 0.

  Raises:
    ValueError: `x` not 2-D, holding NaN/Inf (checked when concrete), `k` not in `[1, n − 1]`.
  """
  x = float_features(x)
  n = x.shape[0]
  k = check_k(k, n)
  _checks.check_finite(x, "x")
  c = default_num_candidates(n, k) if num_candidates is None else check_k(num_candidates, n, "num_candidates")
  if c < k:
    raise ValueError(f"`num_candidates`={c} must be at least `k`={k}.")
  b = tile_size(n, check_block_size(block_size), c)
  return knn_search(x, k=k, num_candidates=c, block=b)


@functools.partial(jax.jit, static_argnames=("k", "num_candidates", "block"))
def knn_search(x, *, k, num_candidates, block):
  # Every point's neighbours are among all the points, and the symmetric tile scan visits them all in
  # sequence, so points split over devices are gathered here (`parallel.sharded_knn_distances` instead splits
  # the queries over the devices, each ranking its own against all points).
  x = _sharding.replicated(x)
  n = x.shape[0]
  centre, inv_scale = normaliser(x)
  candidates = symmetric_candidates((x - centre) * inv_scale, jnp.ones((n,), bool), num_candidates, block)
  return exact_neighbours(x, jnp.arange(n, dtype=jnp.int32), x, candidates, k, block)


def normaliser(x: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """`(centre (1, d), inv_scale ())` such that `(x − centre) · inv_scale` is centred with entries ≤ 1 in size.

  Ranking by `‖x_j‖² − 2 x_i·x_j` loses `~eps·‖x‖²` absolutely, so the features are centred first (the mean
  of the valid rows, taken after a shift by the first row, which must be valid, so float32 offsets such as
  1e4 cancel exactly); the power-of-two rescaling keeps the squares from underflowing (1e-22) or
  overflowing (1e20). Neither changes the ranking.
  """
  pivot = x[:1]
  if valid is None:
    centre = pivot + jnp.mean(x - pivot, axis=0, keepdims=True)
    largest = jnp.max(jnp.abs(x - centre))
  else:
    w = valid.astype(x.dtype)[:, None]
    centre = pivot + jnp.sum((x - pivot) * w, axis=0, keepdims=True) / jnp.maximum(jnp.sum(w), 1.0)
    largest = jnp.max(jnp.abs(x - centre) * w)
  exponent = jnp.where(largest > 0, jnp.ceil(jnp.log2(jnp.where(largest > 0, largest, 1.0))), 0.0)
  return centre, jnp.exp2(-exponent).astype(x.dtype)


def _pad_rows(a: jax.Array, rows: int, value=0) -> jax.Array:
  extra = rows - a.shape[0]
  if extra == 0:
    return a
  widths = [(0, extra)] + [(0, 0)] * (a.ndim - 1)
  return jnp.pad(a, widths, constant_values=value)


def members(scores: jax.Array, c: int, *, axis: int = 1) -> tuple[jax.Array, jax.Array]:
  """A short list per row (`axis=1`) or per column (`axis=0`) of `scores` that holds its c smallest entries.

  Returns `(values, positions)`, both `(lines, w)` with one line per row (or column) and positions along
  `axis`. When the lines are long: the minimum of each group of 16 consecutive entries, the c groups with
  the smallest minima, and those groups' `16·c` members. Exact: any of a line's c smallest entries lies in
  one of the c groups with the smallest minima (c smaller entries would otherwise precede it). Per column
  this reads `scores` with reductions and a gather, never transposing the `(B, B)` tile. Short lines are
  returned whole.
  """
  lines, m = (scores.shape[0], scores.shape[1]) if axis == 1 else (scores.shape[1], scores.shape[0])
  if m % _GROUP or m // _GROUP < 2 * c:
    whole = scores if axis == 1 else scores.T
    return whole, jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (lines, m))
  num_groups = m // _GROUP
  if axis == 1:
    groups = scores.reshape(lines, num_groups, _GROUP)
    _, best = lax.top_k(-jnp.min(groups, axis=2), c)  # (lines, c)
    # (Indices from top_k are in bounds: "promise_in_bounds" skips clamping, which also compiles faster.)
    values = jnp.take_along_axis(groups, best[:, :, None], axis=1, mode="promise_in_bounds")
    values = values.reshape(lines, c * _GROUP)
  else:
    groups = scores.reshape(num_groups, _GROUP, lines)
    _, best = lax.top_k(-jnp.min(groups, axis=1).T, c)  # (lines, c)
    values = jnp.take_along_axis(groups, best.T[:, None, :], axis=0, mode="promise_in_bounds")
    values = values.reshape(c * _GROUP, lines).T
  positions = (best[:, :, None] * _GROUP + jnp.arange(_GROUP, dtype=jnp.int32)).reshape(lines, c * _GROUP)
  return values, positions.astype(jnp.int32)


def smallest(scores: jax.Array, c: int) -> tuple[jax.Array, jax.Array]:
  """The c smallest entries of every row of `scores (B, m)` and their column positions (via `members`)."""
  values, positions = members(scores, c)
  top, where = lax.top_k(-values, c)
  return -top, jnp.take_along_axis(positions, where, axis=1, mode="promise_in_bounds")


def _merge(best_scores, best_index, new_scores, new_index, c):
  """The c smallest of a running list `(R, c)` and new candidates `(R, w)`: one `top_k` over `c + w`."""
  scores = jnp.concatenate([best_scores, new_scores], axis=1)
  index = jnp.concatenate([best_index, new_index], axis=1)
  values, positions = lax.top_k(-scores, c)
  return -values, jnp.take_along_axis(index, positions, axis=1, mode="promise_in_bounds")


def symmetric_candidates(xc: jax.Array, valid: jax.Array, c: int, block: int) -> jax.Array:
  """`(n, c)` int32 indices of each point's c nearest *valid* other points by the ranking of pass 1.

  Tiles `(I, J)` with `I ≤ J` of `xc xcᵀ` in one `lax.scan`; see the module docstring. `xc`: centred
  `(n, d)` features; `valid`: `(n,)` bool, False rows are never anyone's neighbour (padding).
  """
  n, d = xc.shape
  num_blocks = -(-n // block)
  n_pad = num_blocks * block
  xp = _pad_rows(xc, n_pad)
  sq = jnp.sum(xp * xp, axis=1)
  sq_keys = jnp.where(_pad_rows(valid, n_pad, False), sq, jnp.inf)  # invalid points rank last
  tiles_i, tiles_j = np.triu_indices(num_blocks)
  tiles = jnp.asarray(np.stack([tiles_i, tiles_j], axis=1), jnp.int32)
  on_diagonal = jnp.eye(block, dtype=bool)
  precision = lax.Precision.HIGHEST

  def body(carry, tile):
    best_scores, best_index = carry
    i0, j0 = tile[0] * block, tile[1] * block
    xi = lax.dynamic_slice_in_dim(xp, i0, block)
    xj = lax.dynamic_slice_in_dim(xp, j0, block)
    two_dot = 2.0 * jnp.matmul(xi, xj.T, precision=precision)
    # Entry (a, b) of the tile: for row a of I ranking the points of J, ‖x_b‖² − 2 x_a·x_b (the ‖x_a‖² term
    # is constant along a row and left out); for row b of J ranking the points of I, ‖x_a‖² − 2 x_a·x_b.
    rows = lax.dynamic_slice_in_dim(sq_keys, j0, block)[None, :] - two_dot
    best_i = (lax.dynamic_slice_in_dim(best_scores, i0, block), lax.dynamic_slice_in_dim(best_index, i0, block))
    best_j = (lax.dynamic_slice_in_dim(best_scores, j0, block), lax.dynamic_slice_in_dim(best_index, j0, block))

    def diagonal(_):  # I = J: one direction, self excluded by index
      values, positions = members(jnp.where(on_diagonal, jnp.inf, rows), c)
      return _merge(*best_i, values, positions + j0, c), best_j

    def off_diagonal(_):  # both directions, merged with one top_k over the stacked rows
      row_values, row_positions = members(rows, c)
      cols = lax.dynamic_slice_in_dim(sq_keys, i0, block)[:, None] - two_dot
      col_values, col_positions = members(cols, c, axis=0)
      stacked = _merge(
          jnp.concatenate([best_i[0], best_j[0]]), jnp.concatenate([best_i[1], best_j[1]]),
          jnp.concatenate([row_values, col_values]), jnp.concatenate([row_positions + j0, col_positions + i0]),
          c,
      )
      return (stacked[0][:block], stacked[1][:block]), (stacked[0][block:], stacked[1][block:])

    # (A `cond`, not a mask: XLA may unroll short scans, and a tile masked to a constant would then be
    # constant-folded, slowly.) On the diagonal, `new_j` is `best_j` unchanged and is written back first.
    new_i, new_j = lax.cond(tile[0] == tile[1], diagonal, off_diagonal, None)
    best_scores = lax.dynamic_update_slice_in_dim(best_scores, new_j[0], j0, 0)
    best_index = lax.dynamic_update_slice_in_dim(best_index, new_j[1], j0, 0)
    best_scores = lax.dynamic_update_slice_in_dim(best_scores, new_i[0], i0, 0)
    best_index = lax.dynamic_update_slice_in_dim(best_index, new_i[1], i0, 0)
    return (best_scores, best_index), None

  # Built from the inputs so that the carry has their type (on an Explicit mesh: replicated on that mesh).
  init = (
      jnp.full((n_pad, c), jnp.inf, xc.dtype) + jnp.zeros_like(xp[:, :1]),
      jnp.full((n_pad, c), -1, jnp.int32) + jnp.zeros_like(xp[:, :1], dtype=jnp.int32),
  )
  (_, index), _ = lax.scan(body, init, tiles)
  return index[:n]


def query_candidates(
    queries: jax.Array, query_index: jax.Array, keys: jax.Array, valid: jax.Array, c: int, block: int
) -> jax.Array:
  """`(m, c)` candidate indices (into `keys`) for `queries (m, d)` against `keys (n, d)`, both centred alike.

  The non-symmetric form of `symmetric_candidates`, for one device's queries against all points (sharded
  use): a `lax.map` over query tiles, each a `lax.scan` over key tiles. `query_index (m,)`: the queries'
  global indices, excluded as their own neighbours; `valid (n,)`: False keys are never neighbours.
  """
  m, d = queries.shape
  n = keys.shape[0]
  q_blocks, k_blocks = -(-m // block), -(-n // block)
  qp = _pad_rows(queries, q_blocks * block).reshape(q_blocks, block, d)
  qi = _pad_rows(query_index, q_blocks * block, -1).reshape(q_blocks, block)
  kp = _pad_rows(keys, k_blocks * block)
  sq_keys = jnp.where(_pad_rows(valid, k_blocks * block, False), jnp.sum(kp * kp, axis=1), jnp.inf)
  precision = lax.Precision.HIGHEST

  def one_query_tile(args):
    q, q_index = args

    def body(carry, j):
      j0 = j * block
      kj = lax.dynamic_slice_in_dim(kp, j0, block)
      scores = lax.dynamic_slice_in_dim(sq_keys, j0, block)[None, :] - 2.0 * jnp.matmul(
          q, kj.T, precision=precision
      )
      key_index = j0 + jnp.arange(block, dtype=jnp.int32)
      scores = jnp.where(q_index[:, None] == key_index[None, :], jnp.inf, scores)  # self, by index
      values, positions = members(scores, c)
      return _merge(*carry, values, positions + j0, c), None

    # Built from the inputs so that, inside `shard_map`, the carry varies over the mesh axis like they do.
    init = (
        jnp.full((block, c), jnp.inf, q.dtype) + jnp.zeros_like(q[:, :1]),
        jnp.full((block, c), -1, jnp.int32) + jnp.zeros_like(q_index[:, None]),
    )
    (_, index), _ = lax.scan(body, init, jnp.arange(k_blocks, dtype=jnp.int32))
    return index

  return lax.map(one_query_tile, (qp, qi)).reshape(q_blocks * block, c)[:m]


def pair_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """`‖a − b‖` over the last axis, scaled by `max|a − b|` so the squares neither underflow nor overflow."""
  diff = a - b
  scale = jnp.max(jnp.abs(diff), axis=-1, keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  return scale[..., 0] * jnp.sqrt(jnp.sum(jnp.square(diff / safe), axis=-1))


def exact_neighbours(
    queries: jax.Array, query_index: jax.Array, keys: jax.Array, candidates: jax.Array, k: int, block: int
) -> tuple[jax.Array, jax.Array]:
  """Pass 2: exact distances `‖q_i − keys_j‖` of the `(m, C)` candidates; the k smallest (ties by index).

  `queries (m, d)` and `keys (n, d)` are the original (uncentred) coordinates; a candidate −1 (none) or equal
  to the query's own index never wins.
  """
  m, d = queries.shape
  c = candidates.shape[1]
  rows = int(max(1, min(block, (1 << 22) // max(1, c * d))))  # ≤ 16 MiB of gathered float32 per step
  num = -(-m // rows)
  qp = _pad_rows(queries, num * rows).reshape(num, rows, d)
  qi = _pad_rows(query_index, num * rows, -1).reshape(num, rows)
  cp = _pad_rows(candidates, num * rows, -1).reshape(num, rows, c)

  def one(args):
    q, q_index, cand = args
    dist = pair_distances(q[:, None, :], keys.at[jnp.maximum(cand, 0)].get(mode="promise_in_bounds"))
    bad = (cand < 0) | (cand == q_index[:, None])
    dist = jnp.where(bad, jnp.inf, dist)
    dist, cand = lax.sort((dist, cand), dimension=1, num_keys=2)
    return dist[:, :k], cand[:, :k]

  dist, index = lax.map(one, (qp, qi, cp))
  return dist.reshape(num * rows, k)[:m], index.reshape(num * rows, k)[:m]
