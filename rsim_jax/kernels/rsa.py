"""Representational similarity analysis: correlation between representational dissimilarity matrices.

An RDM holds one dissimilarity per pair of examples (Kriegeskorte, Mur & Bandettini 2008):
  - `metric="correlation"`: `1 − r(x_i, x_j)`, the Pearson correlation between two examples' activity
    patterns across features (each pattern centred across its own features, as in Kriegeskorte et al.;
    features are *not* centred across examples — subtract the mean pattern first with `center_features` for
    that variant);
  - `metric="euclidean"`: `‖x_i − x_j‖`, computed from centred features (distances are unchanged by it; it
    keeps the float32 Gram route accurate under large offsets).
RSA compares two RDMs over their `m = n(n−1)/2` upper-triangle entries with Pearson's r, or Spearman's ρ
(Pearson's r of the ranks, ties given their average rank; Kriegeskorte et al. recommend rank correlation
because dissimilarities of different representations need not be linearly related).

Float32 accuracy: patterns are centred after a shift by one of their entries (exact for large offsets), sums
over the `m` entries are blocked (`O(√m·ε)` rounding rather than `O(m·ε)`), and ranks are integer. Ties are
values that are equal as computed: dissimilarities equal in exact arithmetic (e.g. between integer-valued
patterns) can differ in their last float32 bit and then rank apart; pass exact RDMs to `rdm_similarity` when
ties matter.

References:
  Kriegeskorte, Mur & Bandettini (2008). Representational similarity analysis — connecting the branches of
    systems neuroscience. Front. Syst. Neurosci. 2:4.
  Nili et al. (2014). A toolbox for representational similarity analysis. PLoS Comput. Biol. (rank
    correlation with ties).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _pairs, _sharding
from rsim_jax.kernels.features import center_features
from rsim_jax.kernels.gram import DEFAULT_PRECISION, squared_distances

METRICS = ("correlation", "euclidean")
METHODS = ("pearson", "spearman")
_BLOCK = 1024


def _check_options(metric: str, method: str) -> None:
  if metric not in METRICS:
    raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}.")
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")


def _blocked(v: jax.Array) -> jax.Array:
  """`(m,)` → `(⌈m/B⌉, B)`, zero padded: sums over rows then columns keep float32 rounding small."""
  m = v.shape[-1]
  blocks = -(-m // _BLOCK)
  v = jnp.pad(v, [(0, 0)] * (v.ndim - 1) + [(0, blocks * _BLOCK - m)])
  return v.reshape(v.shape[:-1] + (blocks, _BLOCK))


def _blocked_sum(v: jax.Array) -> jax.Array:
  return jnp.sum(jnp.sum(_blocked(v), axis=-1), axis=-1)


def _rdm(x: jax.Array, metric: str) -> jax.Array:
  if metric == "euclidean":
    return jnp.sqrt(squared_distances(center_features(x), precision=DEFAULT_PRECISION))
  shifted = x - x[:, :1]  # exact for large offsets (Sterbenz), so the pattern means below are accurate
  patterns = shifted - jnp.mean(shifted, axis=1, keepdims=True)
  norms = jnp.sqrt(jnp.sum(patterns * patterns, axis=1, keepdims=True))
  patterns = patterns / jnp.where(norms > 0, norms, jnp.nan)  # a constant pattern: NaN, reported by callers
  correlation = jnp.matmul(patterns, patterns.T, precision=DEFAULT_PRECISION)
  n = x.shape[0]
  return jnp.where(jnp.eye(n, dtype=bool), 0.0, jnp.clip(1.0 - correlation, 0.0, 2.0))


def _raise_if_undefined(values: jax.Array, name: str, metric: str) -> None:
  if _checks.is_concrete(values) and not bool(jnp.all(jnp.isfinite(values))):
    raise ValueError(
        f"The correlation RDM of `{name}` is undefined: some example has the same value in every feature "
        "(zero variance across features). Use metric='euclidean' or drop those examples."
    )


def _check_features(x: jax.Array, name: str, metric: str) -> None:
  _checks.check_min_examples(x.shape[0], 3, name, why="RSA (at least 3 dissimilarities to correlate)")
  if metric == "correlation" and x.shape[1] < 2:
    raise ValueError(f"`{name}` has {x.shape[1]} feature(s); the correlation RDM needs at least 2 per example.")


def rdm(x: jax.Array, *, metric: str = "correlation") -> jax.Array:
  """Representational dissimilarity matrix of n examples (Kriegeskorte et al. 2008).

  `correlation`: `RDM_ij = 1 − r(x_i, x_j)` with r the Pearson correlation across features, in [0, 2];
  `euclidean`: `RDM_ij = ‖x_i − x_j‖`. Zero diagonal, symmetric.

  Args:
    x: `(n, d)` activations (d ≥ 2 for `correlation`).
    metric: "correlation" or "euclidean".

  Returns:
    `(n, n)` RDM.

  Raises:
    ValueError: `x` not 2-D, NaN/Inf, an example constant across features (`correlation`, concrete values).
  """
  _check_options(metric, "pearson")
  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  _checks.check_finite(x, "x")
  x = _sharding.replicated(x)  # the n × n RDM needs every example on one device
  if metric == "correlation" and x.shape[1] < 2:
    raise ValueError(f"`x` has {x.shape[1]} feature(s); the correlation RDM needs at least 2 per example.")
  out = _rdm_jit(x, metric=metric)
  _raise_if_undefined(out, "x", metric)
  return out


def _upper(rdm_matrix: jax.Array) -> jax.Array:
  """The `m = n(n−1)/2` entries above the diagonal, in a fixed order (any order serves: both correlations are
  invariant to permuting the entries of both vectors alike).

  Row `i < n/2` of the strict upper triangle (`n − 1 − i` entries) and row `n − 1 − i` (`i` entries) fill one
  row of an `(⌊n/2⌋, n − 1)` array, plus the middle row when n is odd. The indices come from iotas, not from
  `np.triu_indices`: two index constants of m entries each (16 MB at n = 2,000) made XLA spend seconds
  constant-folding them at every compilation.
  """
  n = rdm_matrix.shape[0]
  half = n // 2
  k = jnp.arange(n - 1)
  i = jnp.arange(half)[:, None]
  head = jnp.take_along_axis(rdm_matrix[:half], jnp.minimum(i + 1 + k, n - 1), axis=1)  # RDM[i, i + 1 + k]
  tail = rdm_matrix[::-1][:half, 1:]  # RDM[n − 1 − i, k + 1], wanted for k ≥ n − 1 − i
  folded = jnp.where(k < n - 1 - i, head, tail).reshape(-1)
  if n % 2:
    folded = jnp.concatenate([folded, rdm_matrix[half, half + 1:]])
  return folded


def _order_keys(v: jax.Array) -> jax.Array:
  """Signed integers of the same width that order as the floats `v` do: the bit pattern itself for `v ≥ 0`,
  the magnitude bits flipped for `v < 0`, and −0.0 mapped to +0.0 so that the two zeros tie, as in NumPy."""
  itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[jnp.dtype(v.dtype).itemsize]
  info = np.iinfo(itype)
  bits = lax.bitcast_convert_type(v, itype)
  bits = jnp.where(bits == info.min, jnp.zeros_like(bits), bits)  # −0.0 (sign bit alone) → +0.0
  return jnp.where(bits < 0, bits ^ jnp.asarray(info.max, itype), bits)


def _centred_ranks(v: jax.Array) -> jax.Array:
  """`2·rank − (m − 1)` with ties averaged (0-based ranks): integers, exactly centred.

  The keys are sorted alone, as order-preserving integers: XLA:CPU sorts a single array of a primitive type
  with `std::sort` and its built-in `<`, ~4× faster than a float sort (a generic total-order comparator) or a
  key–index sort (a comparator call and a multi-array swap per step). Each value's first position in the
  sorted keys then comes from a binary search (`searchsorted`), and the end of its run of ties from a reverse
  running minimum, so no permutation is carried through the sort. NaN keys are never ranked: callers report
  an undefined RDM instead.
  """
  m = v.shape[0]
  keys = _order_keys(v)
  s = lax.sort(keys)
  index = jnp.arange(m, dtype=jnp.int32)
  ends_run = jnp.concatenate([s[1:] != s[:-1], jnp.ones((1,), bool)])
  last = lax.cummin(jnp.where(ends_run, index, m - 1), reverse=True)  # last position of the run at i
  first = jnp.searchsorted(s, keys, side="left").astype(jnp.int32)  # first position of each value's run
  return first + last[first] - (m - 1)  # 2 × (average rank − mean rank)


def _unit_vector(rdm_matrix: jax.Array, method: str) -> jax.Array:
  """The RDM's upper triangle (or its ranks), centred and scaled to unit norm: Pearson's r of two such
  vectors is their dot product."""
  v = _upper(rdm_matrix)
  undefined = jnp.any(jnp.isnan(v))  # ranks would hide a NaN dissimilarity
  if method == "spearman":
    v = _centred_ranks(v).astype(rdm_matrix.dtype)
  else:
    v = v - _blocked_sum(v) / v.shape[0]
  norm = jnp.sqrt(_blocked_sum(v * v))
  # A constant RDM or an undefined dissimilarity: NaN, reported by the callers.
  return v / jnp.where((norm > 0) & ~undefined, norm, jnp.nan)


_rdm_jit = jax.jit(_rdm, static_argnames="metric")
_unit_vector_jit = jax.jit(_unit_vector, static_argnames="method")


def _layer_vector(x, *, metric, method):
  # Two jitted steps: the RDM is compiled per layer shape, its ranking (the heavy part) once per n.
  return _unit_vector_jit(_rdm_jit(x, metric=metric), method=method)


def _raise_if_constant_rdm(u: jax.Array, name: str) -> None:
  if _checks.is_concrete(u) and not bool(jnp.all(jnp.isfinite(u))):
    raise ValueError(
        f"RSA is undefined for `{name}`: its RDM has no finite spread (all dissimilarities equal, or an example "
        "constant across features under metric='correlation')."
    )


@jax.jit
def _dot_all(u: jax.Array, v: jax.Array) -> jax.Array:
  """`(L, m) × (K, m) → (L, K)` dot products with blocked accumulation over m."""
  partial = jnp.einsum("lcb,kcb->clk", _blocked(u), _blocked(v), precision=DEFAULT_PRECISION)
  return jnp.clip(jnp.sum(partial, axis=0), -1.0, 1.0)


def rdm_similarity(rdm_x: jax.Array, rdm_y: jax.Array, *, method: str = "spearman") -> jax.Array:
  """Correlation between two RDMs over their upper triangles (`i < j`): Pearson's r, or Spearman's ρ
  (Pearson's r of average ranks) — the RSA score of Kriegeskorte et al. (2008).

  Args:
    rdm_x: `(n, n)` symmetric dissimilarities (e.g. `rdm(x)`).
    rdm_y: `(n, n)` over the same examples.
    method: "spearman" or "pearson".

  Returns:
    `()` correlation in [−1, 1].
  """
  _check_options("correlation", method)
  rdm_x = _sharding.replicated(_checks.as_float_array(rdm_x, "rdm_x"))  # sorts need every entry on one device
  rdm_y = _sharding.replicated(_checks.as_float_array(rdm_y, "rdm_y"))
  _checks.check_square(rdm_x, "rdm_x")
  _checks.check_square(rdm_y, "rdm_y")
  _checks.check_same_examples(rdm_x, rdm_y, "rdm_x", "rdm_y")
  _checks.check_min_examples(rdm_x.shape[0], 3, "rdm_x", why="RSA (at least 3 dissimilarities to correlate)")
  _checks.check_finite(rdm_x, "rdm_x")
  _checks.check_finite(rdm_y, "rdm_y")
  u, v = _unit_vector_jit(rdm_x, method=method), _unit_vector_jit(rdm_y, method=method)
  _raise_if_constant_rdm(u, "rdm_x")
  _raise_if_constant_rdm(v, "rdm_y")
  return _dot_all(u[None], v[None])[0, 0]


def rsa(x: jax.Array, y: jax.Array, *, metric: str = "correlation", method: str = "spearman") -> jax.Array:
  """RSA score of two representations: the correlation between their RDMs (Kriegeskorte et al. 2008).

  `rsa = corr(upper(RDM_x), upper(RDM_y))` with `RDM` from `rdm(·, metric=metric)` and `corr` Pearson's r or
  Spearman's ρ (ties averaged). Cost: `O(n²(d_x + d_y))` for the RDMs plus `O(m log m)` for ranks,
  `m = n(n−1)/2`. Invariant to translation and isotropic scaling (both metrics), orthogonal transforms
  (euclidean), and to any strictly increasing transform of the dissimilarities (spearman); symmetric.

  Args:
    x: `(n, d_x)` activations.
    y: `(n, d_y)` activations of the same examples.
    metric: "correlation" (`1 − Pearson r` between examples) or "euclidean".
    method: "spearman" or "pearson".

  Returns:
    `()` correlation in [−1, 1].

  Raises:
    ValueError: inputs not 2-D, different example counts, n < 3, NaN/Inf, an example constant across
      features under metric='correlation' (concrete values), unknown options.
  """
  _check_options(metric, method)
  x = _sharding.replicated(_checks.as_float_array(x, "x"))  # the n × n RDMs need every example on one device
  y = _sharding.replicated(_checks.as_float_array(y, "y"))
  _checks.check_2d(x, "x")
  _checks.check_2d(y, "y")
  _checks.check_same_examples(x, y, "x", "y")
  _check_features(x, "x", metric)
  _check_features(y, "y", metric)
  _checks.check_finite(x, "x")
  _checks.check_finite(y, "y")
  u = _layer_vector(x, metric=metric, method=method)
  v = _layer_vector(y, metric=metric, method=method)
  _raise_if_constant_rdm(u, "x")
  _raise_if_constant_rdm(v, "y")
  return _dot_all(u[None], v[None])[0, 0]


def rsa_all_pairs(layers_x, layers_y=None, *, metric: str = "correlation", method: str = "spearman") -> np.ndarray:
  """`rsa` between all layer pairs of one model (`layers_y=None`) or of two models.

  Each layer's RDM is formed (and ranked) once into a centred unit vector of length `m = n(n−1)/2`; all
  pairs are then one `(L_x, m) × (m, L_y)` product (blocked over m). Memory: `4·m·(L_x + L_y)` bytes
  (160 MB for 20 layers of 2,000 examples) plus one `(n, n)` RDM at a time.

  Args:
    layers_x: list / ordered dict / stacked array of `(n, ...)` activations.
    layers_y: optional second model over the same examples.
    metric, method: as in `rsa`.

  Returns:
    `(L_x, L_y)` NumPy array.
  """
  _check_options(metric, method)
  xs = _pairs.as_layers(layers_x, "layers_x")
  ys = xs if layers_y is None else _pairs.as_layers(layers_y, "layers_y")
  _checks.check_same_examples(xs[0], ys[0], "layers_x[0]", "layers_y[0]")

  def vectors(layers, name):
    out = []
    for i, layer in enumerate(layers):
      _check_features(layer, f"{name}[{i}]", metric)
      u = _layer_vector(layer, metric=metric, method=method)
      _raise_if_constant_rdm(u, f"{name}[{i}]")
      out.append(u)
    return jnp.stack(out)

  u = vectors(xs, "layers_x")
  v = u if layers_y is None else vectors(ys, "layers_y")
  return np.asarray(_dot_all(u, v))
