"""Feature-matrix helpers: flattening activations and centring them.

Layer activations arrive with any trailing shape (e.g. conv maps `(n, H, W, C)`); every kernel works on
`(n, d)` matrices, so activations are flattened per example at the kernel boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding


def flatten_features(x: jax.Array) -> jax.Array:
  """Flattens every example's activation into one feature vector.

  Args:
    x: `(n, ...)` activations, e.g. `(n, H, W, C)` conv maps or `(n, d)` vectors.

  Returns:
    `(n, d)` with `d = prod(x.shape[1:])`; a rank-1 `(n,)` input becomes `(n, 1)`.
  """
  x = jnp.asarray(x)
  if x.ndim == 0:
    raise ValueError("`x` must have a leading example axis, got a scalar.")
  return x.reshape(x.shape[0], -1)


def center_features(x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Subtracts the per-feature mean over (valid) examples: `x - 1 μᵀ`.

  Centring the features before forming a Gram matrix is what keeps float32 CKA accurate: the Gram of raw
  features with a large common offset `c` has entries `~ d·c²` whose cancellation in `H K H` loses all
  significant digits, while the Gram of centred features has entries of the size of the signal.

  Args:
    x: `(n, d)` features.
    mask: optional `(n,)` bool; rows where it is False are ignored for the mean and set to zero.

  Returns:
    `(n, d)` centred features (zero rows where `mask` is False).
  """
  if mask is None:
    # Shift by the first example before averaging: the residual mean is then of the size of the spread,
    # so the float32 mean is accurate even for data offset by 1e4 (Sterbenz: x - x0 is exact for close values).
    shifted = x - _sharding.row(x, 0)[None, :]
    return shifted - jnp.mean(shifted, axis=0, keepdims=True)
  m = mask.astype(x.dtype)[:, None]
  count = jnp.maximum(jnp.sum(m), 1.0)
  # Shift by a valid example for the same reason as above.
  pivot = _sharding.row(x, jnp.argmax(mask))[None, :]
  shifted = (x - pivot) * m
  return (shifted - jnp.sum(shifted, axis=0, keepdims=True) / count) * m


def as_features(x, name: str) -> jax.Array:
  """Validates one activation array and returns it as `(n, d)` floating features."""
  arr = _checks.as_float_array(x, name)
  if arr.ndim < 2:
    raise ValueError(
        f"`{name}` must be (num_examples, ...) with at least one feature axis, got shape {tuple(arr.shape)}."
    )
  return flatten_features(arr)
