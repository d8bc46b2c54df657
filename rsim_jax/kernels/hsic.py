"""Hilbert-Schmidt Independence Criterion estimators.

References:
  Gretton, Bousquet, Smola & Schölkopf (2005). Measuring statistical dependence with Hilbert-Schmidt norms.
  Song, Smola, Gretton, Bedo & Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR 13.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsim_jax.kernels import _checks
from rsim_jax.kernels.gram import center_gram


def _sum2d(a: jax.Array) -> jax.Array:
  # Row sums first, then their sum: two short reductions keep float32 error ~ (n + n)·eps instead of n²·eps.
  return jnp.sum(jnp.sum(a, axis=-1), axis=-1)


def hsic(gram_x: jax.Array, gram_y: jax.Array, *, unbiased: bool = False) -> jax.Array:
  """HSIC of two Gram matrices over the same n examples.

  Biased (Gretton et al. 2005): `tr(K H L H) / (n − 1)²`.

  Unbiased, "HSIC₁" (Song et al. 2012, Eq. 5), with `K̃, L̃` the Grams with zeroed diagonals:
    `[tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))`.

  Args:
    gram_x: `(n, n)` Gram matrix of the first representation.
    gram_y: `(n, n)` Gram matrix of the second representation.
    unbiased: use the unbiased estimator (needs n ≥ 4).

  Returns:
    Scalar HSIC estimate.
  """
  gram_x = _checks.as_float_array(gram_x, "gram_x")
  gram_y = _checks.as_float_array(gram_y, "gram_y")
  _checks.check_square(gram_x, "gram_x")
  _checks.check_square(gram_y, "gram_y")
  _checks.check_same_examples(gram_x, gram_y, "gram_x", "gram_y")
  n = gram_x.shape[0]
  if not unbiased:
    _checks.check_min_examples(n, 2, "gram_x", why="HSIC")
    return _sum2d(center_gram(gram_x) * gram_y) / (n - 1) ** 2
  _checks.check_min_examples(n, 4, "gram_x", why="the unbiased HSIC estimator (divides by n(n−3))")
  off_diagonal = 1.0 - jnp.eye(n, dtype=gram_x.dtype)
  kt = gram_x * off_diagonal
  lt = gram_y * off_diagonal
  trace_kl = _sum2d(kt * lt)  # tr(K̃L̃) = Σ_ij K̃_ij L̃_ij for symmetric matrices
  sum_k = _sum2d(kt)
  sum_l = _sum2d(lt)
  ones_klt_ones = jnp.sum(jnp.sum(kt, axis=0) * jnp.sum(lt, axis=1))  # 1ᵀK̃L̃1
  return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_klt_ones) / (n * (n - 3))
