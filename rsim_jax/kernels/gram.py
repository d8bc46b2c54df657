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


def gram_linear(x: jax.Array, *, center: bool = False, precision=DEFAULT_PRECISION) -> jax.Array:
  """Linear kernel `K = X Xᵀ`, or with `center=True` the Gram of centred features `K = X_c X_cᵀ = H X Xᵀ H`.

  HSIC and CKA only see the centred Gram `H K H`, so both choices give them the same value — but not in
  float32 when the features share a large offset c: the entries of `X Xᵀ` are then `~ d·c²` and centring
  them afterwards cancels the signal `~ σ²` to rounding (at c = 1e4, σ = 1 nothing survives). `center=True`
  centres the features first (`center_features`, accurate for any offset), so the Gram carries only the
  signal. `hsic` and `cka_from_grams` refuse a Gram whose centred part has been lost this way (see
  `centring_error`).

  Args:
    x: `(n, d)` features.
    center: subtract the per-feature mean over examples before forming the Gram.
    precision: matmul precision (`lax.Precision`), full float32 by default.

  Returns:
    `(n, n)` Gram matrix (for `x` split over examples on an Explicit mesh: its rows split the same way).
  """
  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  if center:
    from rsim_jax.kernels.features import center_features  # local: features imports nothing from here

    x = center_features(x)
  return _sharding.gram(x, x, precision=precision)


def squared_distances(x: jax.Array, *, precision=DEFAULT_PRECISION) -> jax.Array:
  """Pairwise squared Euclidean distances `D²_ij = ‖x_i‖² + ‖x_j‖² − 2 x_i·x_j`, clipped at 0.

  The features are centred first (distances are shift invariant): the expansion above cancels `‖c‖²` for
  points around an offset c, which in float32 leaves nothing of the distances at c = 1e4.

  Args:
    x: `(n, d)` features.

  Returns:
    `(n, n)` with an exactly zero diagonal.
  """
  from rsim_jax.kernels.features import center_features  # local: features imports nothing from here

  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  x = center_features(x)
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

  The distances are computed from centred features (`squared_distances`), so an offset of the features
  costs no accuracy.

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
  d2 = squared_distances(x, precision=precision)  # from centred features: accurate for any offset
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


# Most estimated relative rounding error (`centring_error`) that `hsic` and `cka_from_grams` accept in a centred
# Gram: 3 digits. The rounding error of HSIC relative to √(HSIC(K,K)·HSIC(L,L)) (i.e. of CKA) is bounded by
# about the sum of the two estimates, beyond the float32 rounding of the products themselves; measured on
# offset float32 features (n = 40..500, d = 6..4000) it was 0.001..0.2 of that sum.
CENTRING_TOLERANCE = 1e-3


def centring_tolerance(dtype) -> float:
  """`max(CENTRING_TOLERANCE, 10·ε)` for a Gram of `dtype`: 1e-3 in float32/float64; float16 and bfloat16
  Grams, whose own entries carry 1e-3..1e-2 relative rounding, are allowed 10 units of it."""
  return max(CENTRING_TOLERANCE, 10.0 * float(jnp.finfo(dtype).eps))


def centring_error(gram: jax.Array, centred: jax.Array, *, eps: float | None = None) -> jax.Array:
  """Estimated relative rounding error of a centred Gram matrix: `ε · ‖K‖_F / ‖K_c‖_F`.

  Every entry of `K` carries a rounding error of about `ε·|K|` (from the product that formed it), and so
  does every entry of `K_c` after centring subtracts the row, column and grand means. Relative to `K_c`
  that error is `ε` divided by the fraction `‖K_c‖_F / ‖K‖_F` of the Gram that survives centring. For
  features with a common offset c and spread σ the fraction is `~ σ²/c²`: in float32 (ε ≈ 1.2e-7) the
  centred Gram of unit-variance features offset by 1e4 is pure rounding noise, while
  `gram_linear(x, center=True)` keeps the fraction near 1.

  Args:
    gram: `(..., n, n)` Gram matrix K as given.
    centred: its centred version (`center_gram`, biased or unbiased), same shape.
    eps: machine epsilon of the arithmetic that formed K (default: that of `gram.dtype`).

  Returns:
    The estimate, `()` (or one per leading index): 0 where `K_c` is exactly zero (a constant representation,
    nothing to lose: the callers report it as zero variance), NaN for a Gram with NaN/Inf.
  """
  if eps is None:
    eps = float(jnp.finfo(gram.dtype).eps)
  # Norms of K / max|K|: no overflow of the squares for Grams of large activations.
  scale = jnp.max(jnp.abs(gram), axis=(-2, -1), keepdims=True)
  scale = jnp.where(scale > 0, scale, 1.0)
  norm_k = jnp.sqrt(jnp.sum(jnp.sum(jnp.square(gram / scale), axis=-1), axis=-1))
  norm_c = jnp.sqrt(jnp.sum(jnp.sum(jnp.square(centred / scale), axis=-1), axis=-1))
  zero = norm_c == 0
  return jnp.where(zero, 0.0, eps * norm_k / jnp.where(zero, 1.0, norm_c))


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
