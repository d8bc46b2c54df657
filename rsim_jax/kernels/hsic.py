"""Hilbert-Schmidt Independence Criterion estimators.

References:
  Gretton, Bousquet, Smola & Schölkopf (2005). Measuring statistical dependence with Hilbert-Schmidt norms.
  Song, Smola, Gretton, Bedo & Borgwardt (2012). Feature Selection via Dependence Maximization. JMLR 13.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsim_jax.kernels import _checks
from rsim_jax.kernels.gram import center_gram, centring_error, centring_tolerance


def sum_2d(a: jax.Array) -> jax.Array:
  # Row sums first, then their sum: two short reductions keep float32 error ~ (n + n)·eps instead of n²·eps.
  return jnp.sum(jnp.sum(a, axis=-1), axis=-1)


def centred_gram_checked(gram: jax.Array, name: str, *, unbiased: bool, raise_lost: bool = True):
  """`(K_c, ok)`: the centred Gram (double- or U-centred) and a `()` bool, whether it kept its centred part.

  `ok` is `centring_error(K, K_c) ≤ centring_tolerance(dtype)`, with ε of the Gram's own dtype. A concrete
  Gram that fails raises the ValueError of `_checks.check_centring_precision` when `raise_lost`. float16 and
  bfloat16 Grams are centred in float32 (their own rounding still counts).
  """
  dtype = gram.dtype
  if dtype in (jnp.float16, jnp.bfloat16):
    gram = gram.astype(jnp.float32)
  centred = center_gram(gram, unbiased=unbiased)
  error = centring_error(gram, centred, eps=float(jnp.finfo(dtype).eps))
  tolerance = centring_tolerance(dtype)
  if raise_lost:
    _checks.check_centring_precision(error, tolerance, name, dtype)
  return centred, error <= tolerance


def hsic(gram_x: jax.Array, gram_y: jax.Array, *, unbiased: bool = False) -> jax.Array:
  """HSIC of two Gram matrices over the same n examples.

  Biased (Gretton et al. 2005): `tr(K H L H) / (n − 1)² = ⟨HKH, HLH⟩ / (n − 1)²`.

  Unbiased, "HSIC₁" (Song et al. 2012, Eq. 5), with `K̃, L̃` the Grams with zeroed diagonals:
    `[tr(K̃L̃) + 1ᵀK̃1 · 1ᵀL̃1 / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))`,
  computed as `⟨K̃ᵤ, L̃ᵤ⟩ / (n(n−3))` with the U-centred Grams of `center_gram(…, unbiased=True)` (the same
  value; the formula's terms are each `~ n²·max|K|·max|L|` and cancel, the U-centred product does not).

  Both Grams are centred before their product, and each must keep its centred part through rounding: the
  Gram of float32 features with a large common offset (`gram_linear(x + 1e4)`) has entries `~ d·1e8` and a
  centred part `~ d` that float32 cannot hold. Such a Gram (`centring_error` above `centring_tolerance`: 1e-3
  in float32) raises a ValueError rather than give a wrong number; form it from centred features
  (`gram_linear(x, center=True)`). Accepted Grams give HSIC to within a few 1e-3 of
  `√(HSIC(K,K)·HSIC(L,L))`, and to float32 rounding when their features were centred.

  Args:
    gram_x: `(n, n)` Gram matrix of the first representation.
    gram_y: `(n, n)` Gram matrix of the second representation.
    unbiased: use the unbiased estimator (needs n ≥ 4).

  Returns:
    Scalar HSIC estimate (float32 for float16/bfloat16 Grams). Under `jit`, where values cannot be checked,
    NaN for Grams that lost their centred part.

  Raises:
    ValueError: shapes that differ or are not square; too few examples; NaN/Inf; a Gram that lost its centred
      part to rounding (the message says how to centre first).
  """
  gram_x = _checks.as_float_array(gram_x, "gram_x")
  gram_y = _checks.as_float_array(gram_y, "gram_y")
  _checks.check_square(gram_x, "gram_x")
  _checks.check_square(gram_y, "gram_y")
  _checks.check_same_examples(gram_x, gram_y, "gram_x", "gram_y")
  n = gram_x.shape[0]
  if unbiased:
    _checks.check_min_examples(n, 4, "gram_x", why="the unbiased HSIC estimator (divides by n(n−3))")
  else:
    _checks.check_min_examples(n, 2, "gram_x", why="HSIC")
  _checks.check_finite(gram_x, "gram_x")
  _checks.check_finite(gram_y, "gram_y")
  kc, ok_x = centred_gram_checked(gram_x, "gram_x", unbiased=unbiased)
  lc, ok_y = centred_gram_checked(gram_y, "gram_y", unbiased=unbiased)
  value = sum_2d(kc * lc) / (n * (n - 3) if unbiased else (n - 1) ** 2)
  return jnp.where(ok_x & ok_y, value, jnp.nan)
