"""Centered Kernel Alignment (CKA) on full batches.

`CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`, in [0, 1] for positive semi-definite kernels.
Linear CKA is invariant to orthogonal transforms and isotropic scaling of either representation, and
`CKA(X, X) = 1`.

References:
  Kornblith, Norouzi, Lee & Hinton (2019). Similarity of Neural Network Representations Revisited. ICML.
  Song et al. (2012) for the unbiased HSIC behind `debiased=True`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding
from rsim_jax.kernels.features import center_features
from rsim_jax.kernels.gram import DEFAULT_PRECISION, gram_rbf
from rsim_jax.kernels.hsic import centred_gram_checked, sum_2d

_UNDEFINED_CHOICES = ("raise", "nan")


def _check_on_undefined(on_undefined: str) -> None:
  if on_undefined not in _UNDEFINED_CHOICES:
    raise ValueError(f"`on_undefined` must be one of {_UNDEFINED_CHOICES}, got {on_undefined!r}.")


def _safe_ratio(numerator, norm_x, norm_y, *, names: tuple[str, str], on_undefined: str):
  """`numerator / (norm_x · norm_y)`, raising (concrete inputs) or NaN where a norm is not positive."""
  for norm, name in zip((norm_x, norm_y), names):
    if on_undefined == "raise" and _checks.is_concrete(norm) and not bool(norm > 0):
      raise ValueError(
          f"CKA is undefined: `{name}` has zero variance across examples (its centred Gram matrix is 0). "
          "Drop constant layers, or pass on_undefined='nan' to get NaN for them."
      )
  defined = (norm_x > 0) & (norm_y > 0)
  return jnp.where(defined, numerator / jnp.where(defined, norm_x * norm_y, 1.0), jnp.nan)


def cka_from_grams(
    gram_x: jax.Array, gram_y: jax.Array, *, debiased: bool = False, on_undefined: str = "raise"
) -> jax.Array:
  """CKA of two Gram matrices over the same n examples (Kornblith et al. 2019, Eq. 4).

  `CKA = ⟨K_c, L_c⟩ / (‖K_c‖_F ‖L_c‖_F)` with `K_c` the double-centred Gram, or the U-centred Gram when
  `debiased=True` (then it is built from the unbiased HSIC of Song et al. 2012; needs n ≥ 4).

  Each Gram must keep its centred part through rounding (as in `hsic`): the Gram of float32 features with a
  large common offset (`gram_linear(x + 1e4)`) does not, and is refused rather than give a wrong number —
  form it with `gram_linear(x, center=True)`, or call `cka(x, y)` on the features. Accepted Grams give CKA to
  within a few 1e-3, and to float32 rounding when their features were centred.

  Args:
    gram_x: `(n, n)` Gram matrix.
    gram_y: `(n, n)` Gram matrix.
    debiased: use unbiased HSIC estimates.
    on_undefined: "raise" (a ValueError for a zero-variance input, or one whose centred Gram is lost to
      rounding) or "nan". Under `jit` both come back as NaN.

  Returns:
    Scalar CKA (float32 for float16/bfloat16 Grams).
  """
  _check_on_undefined(on_undefined)
  gram_x = _checks.as_float_array(gram_x, "gram_x")
  gram_y = _checks.as_float_array(gram_y, "gram_y")
  _checks.check_square(gram_x, "gram_x")
  _checks.check_square(gram_y, "gram_y")
  _checks.check_same_examples(gram_x, gram_y, "gram_x", "gram_y")
  if debiased:
    _checks.check_min_examples(gram_x.shape[0], 4, "gram_x", why="debiased CKA (unbiased HSIC)")
  _checks.check_finite(gram_x, "gram_x")
  _checks.check_finite(gram_y, "gram_y")
  raise_lost = on_undefined == "raise"
  kc, ok_x = centred_gram_checked(gram_x, "gram_x", unbiased=debiased, raise_lost=raise_lost)
  lc, ok_y = centred_gram_checked(gram_y, "gram_y", unbiased=debiased, raise_lost=raise_lost)
  norm_x = jnp.sqrt(jnp.maximum(sum_2d(kc * kc), 0.0))
  norm_y = jnp.sqrt(jnp.maximum(sum_2d(lc * lc), 0.0))
  value = _safe_ratio(sum_2d(kc * lc), norm_x, norm_y, names=("gram_x", "gram_y"), on_undefined=on_undefined)
  return jnp.where(ok_x & ok_y, value, jnp.nan)


def cka(
    x: jax.Array,
    y: jax.Array,
    *,
    kernel: str = "linear",
    threshold: float = 1.0,
    debiased: bool = False,
    on_undefined: str = "raise",
    precision=DEFAULT_PRECISION,
) -> jax.Array:
  """CKA between two representations of the same n examples (Kornblith et al. 2019).

  Features are centred before the Gram matrices are formed (this keeps float32 accurate for inputs with
  large offsets; CKA itself is unchanged by centring).

  Args:
    x: `(n, d_x)` activations of the first layer.
    y: `(n, d_y)` activations of the second layer.
    kernel: "linear" (`K = XXᵀ`) or "rbf" (`gram_rbf` with the median-distance bandwidth).
    threshold: RBF bandwidth as a fraction of the median distance (`kernel="rbf"` only).
    debiased: use the unbiased HSIC estimator (Song et al. 2012); needs n ≥ 4.
    on_undefined: "raise" or "nan" for a zero-variance representation.
    precision: matmul precision for the Gram matrices.

  Returns:
    Scalar CKA in [0, 1] (debiased CKA can be slightly negative for unrelated representations).
  """
  x, y = _checks.validated_pair(x, y)
  _check_on_undefined(on_undefined)
  if kernel == "linear":
    xc, yc = center_features(x), center_features(y)
    gx = _sharding.gram(xc, xc, precision=precision)
    gy = _sharding.gram(yc, yc, precision=precision)
  elif kernel == "rbf":
    gx = gram_rbf(x, threshold=threshold, precision=precision)
    gy = gram_rbf(y, threshold=threshold, precision=precision)
  else:
    raise ValueError(f"`kernel` must be 'linear' or 'rbf', got {kernel!r}.")
  return cka_from_grams(gx, gy, debiased=debiased, on_undefined=on_undefined)


def linear_cka_features(
    x: jax.Array, y: jax.Array, *, debiased: bool = False, on_undefined: str = "raise", precision=DEFAULT_PRECISION
) -> jax.Array:
  """Linear CKA computed in feature space, for n ≫ d (Kornblith et al. 2019, Eq. 5).

  With centred features, `⟨K, L⟩ = ‖XᵀY‖²_F`, so linear CKA costs `O(n·d_x·d_y)` time and `O(d_x·d_y)`
  memory instead of `O(n²)`:
    `CKA = ‖XᵀY‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`.
  Debiased: each `⟨K, L⟩` becomes the unbiased HSIC numerator (Song et al. 2012, with `K_ii = ‖x_i‖²`):
    `‖XᵀY‖²_F − n/(n−2) Σ_i ‖x_i‖²‖y_i‖² + tr(K) tr(L) / ((n−1)(n−2))`.

  Args:
    x: `(n, d_x)` activations.
    y: `(n, d_y)` activations.
    debiased: use the unbiased HSIC estimator (needs n ≥ 4).

  Returns:
    Scalar linear CKA, equal to `cka(x, y)` up to rounding.
  """
  x, y = _checks.validated_pair(x, y)
  _check_on_undefined(on_undefined)
  n = x.shape[0]
  if debiased:
    _checks.check_min_examples(n, 4, "x", why="debiased CKA (unbiased HSIC)")
  xc, yc = center_features(x), center_features(y)

  def similarity(a, b):
    cross = _sharding.contract_examples(a, b, precision=precision)  # split examples: a psum of partial sums
    value = sum_2d(cross * cross)
    if debiased:
      sq_rows_a = jnp.sum(a * a, axis=1)
      sq_rows_b = jnp.sum(b * b, axis=1)
      value = (
          value
          - n / (n - 2) * jnp.sum(sq_rows_a * sq_rows_b)
          + jnp.sum(sq_rows_a) * jnp.sum(sq_rows_b) / ((n - 1) * (n - 2))
      )
    return value

  norm_x = jnp.sqrt(jnp.maximum(similarity(xc, xc), 0.0))
  norm_y = jnp.sqrt(jnp.maximum(similarity(yc, yc), 0.0))
  return _safe_ratio(similarity(xc, yc), norm_x, norm_y, names=("x", "y"), on_undefined=on_undefined)
