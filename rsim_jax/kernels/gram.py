"""Gram (kernel) matrices and their centring.

References:
  Kornblith, Norouzi, Lee & Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.
  Song, Smola, Gretton, Bedo & Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR.
  Székely & Rizzo (2014). Partial distance correlation with methods for dissimilarities. Ann. Stat. (U-centring).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding

# Gram matrices are the numerically sensitive products: on TPU/GPU the default float32 matmul may use
# bfloat16 passes, so the kernels ask for full float32 unless the caller chooses otherwise.
DEFAULT_PRECISION = lax.Precision.HIGHEST


def gram_linear(x: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
  """Linear kernel `K = X Xᵀ`.

  Args:
    x: `(n, d)` features.
    precision: matmul precision (`lax.Precision`), full float32 by default.

  Returns:
    `(n, n)` Gram matrix (for `x` split over examples on an Explicit mesh: its rows split the same way).
  """
  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  return _sharding.gram(x, x, precision=precision)


def squared_distances(x: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
  """Pairwise squared Euclidean distances `D²_ij = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j`, clipped at 0.

  Args:
    x: `(n, d)` features (centre them first for accuracy; distances are shift invariant).

  Returns:
    `(n, n)` with an exactly zero diagonal.
  """
  dot = _sharding.gram(x, x, precision=precision)
  sq_norms = _sharding.diagonal(dot)
  # The column term is needed whole on every device (n values) when the rows are split.
  d2 = sq_norms[:, None] + _sharding.replicated(sq_norms)[None, :] - 2.0 * dot
  d2 = jnp.maximum(d2, 0.0)
  return d2 * (1.0 - jnp.eye(x.shape[0], dtype=d2.dtype))


def gram_rbf(x: jax.Array, *, threshold: float = 1.0, precision=DEFAULT_PRECISION) -> jax.Array:
  """RBF kernel with a median-distance bandwidth (Kornblith et al. 2019, Sec. 4).

  `K_ij = exp(−D²_ij / (2 · threshold² · median(D²)))`, with the median over all n² entries of the squared
  distance matrix (diagonal included), the convention of Kornblith et al.'s reference implementation.

  Args:
    x: `(n, d)` features.
    threshold: bandwidth as a fraction of the median distance.

  Returns:
    `(n, n)` kernel matrix.
  """
  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  if threshold <= 0:
    raise ValueError(f"`threshold` must be positive, got {threshold}.")
  from rsim_jax.kernels.features import center_features  # local: features imports nothing from here

  d2 = squared_distances(center_features(x), precision=precision)
  # The median ranks all n² entries: a sort needs them on one device, so a split d2 is gathered here.
  median = jnp.median(_sharding.replicated(d2))
  return jnp.exp(-d2 / (2.0 * threshold**2 * median))


def center_gram(gram: jax.Array, *, unbiased: bool = False) -> jax.Array:
  """Centres a Gram matrix.

  Biased (`unbiased=False`): double centring `H K H` with `H = I − 11ᵀ/n`.

  Unbiased (`unbiased=True`): U-centring (Székely & Rizzo 2014), for `i ≠ j`
    `K̃_ij = K_ij − r_i/(n−2) − r_j/(n−2) + S/((n−1)(n−2))`,  `r_i = Σ_{l≠i} K_il`,  `S = Σ_i r_i`,
  and `K̃_ii = 0`. Then `⟨K̃, L̃⟩ / (n(n−3))` is the unbiased HSIC estimator of Song et al. (2012).

  Args:
    gram: `(n, n)` symmetric matrix.
    unbiased: U-centring instead of double centring (needs n ≥ 3; the HSIC estimator needs n ≥ 4).

  Returns:
    `(n, n)` centred matrix.
  """
  gram = _checks.as_float_array(gram, "gram")
  _checks.check_square(gram, "gram")
  if unbiased:
    _checks.check_min_examples(gram.shape[0], 3, "gram", why="U-centring")
    return u_center_masked(gram, jnp.ones(gram.shape[0], dtype=bool))
  row_means = jnp.mean(gram, axis=1, keepdims=True)
  col_means = jnp.mean(gram, axis=0, keepdims=True)
  return gram - row_means - col_means + jnp.mean(gram)


def u_center_masked(gram: jax.Array, mask: jax.Array) -> jax.Array:
  """U-centring over the examples where `mask` is True; rows/columns outside the mask become 0.

  Works on stacked Grams `(..., n, n)` (broadcast over leading axes); `mask` is `(n,)` bool. The count of
  valid examples `m = Σ mask` replaces n in the formula of `center_gram(…, unbiased=True)`; it may be traced.
  """
  n = gram.shape[-1]
  valid = _sharding.replicated(mask).astype(gram.dtype)  # (n,) flags, needed for rows and columns alike
  m = jnp.sum(valid)
  off_diagonal = (1.0 - jnp.eye(n, dtype=gram.dtype)) * valid[:, None] * valid[None, :]
  g = gram * off_diagonal
  row_sums = jnp.sum(g, axis=-1)
  total = jnp.sum(row_sums, axis=-1)[..., None, None]
  # Guard the divisions for m < 3 (such batches are given zero weight by the callers).
  inv_m2 = 1.0 / jnp.maximum(m - 2.0, 1.0)
  inv_m1m2 = 1.0 / jnp.maximum((m - 1.0) * (m - 2.0), 1.0)
  # With the rows split over devices, each needs every row sum for its columns (n values per Gram).
  col_sums = _sharding.replicated(row_sums)
  centred = g - (row_sums[..., :, None] + col_sums[..., None, :]) * inv_m2 + total * inv_m1m2
  return centred * off_diagonal
