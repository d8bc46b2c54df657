"""Orthogonal Procrustes distance and the angular shape metric between two representations.

Each representation is centred over examples and scaled to unit Frobenius norm, `X̂ = X̃/‖X̃‖_F`. The best
orthogonal alignment of one onto the other leaves

  `min_Q ‖X̂ − ŶQ‖²_F = 2 − 2‖X̂ᵀŶ‖_*`            (Schönemann 1966; `‖·‖_*` the nuclear norm)

so `‖X̂ᵀŶ‖_*` ∈ [0, 1] is a similarity, `√(2 − 2‖X̂ᵀŶ‖_*)` the Procrustes distance and `arccos ‖X̂ᵀŶ‖_*` the
angular shape metric of Williams et al. (2021), a proper metric on shapes modulo translation, rotation,
reflection and isotropic scaling. (When d_x ≠ d_y the smaller is implicitly padded with zero features.)

Wide layers (d > n): `‖X̃ᵀỸ‖_*` depends on the data only through the Gram matrices, since any `B` with
`BBᵀ = X̃X̃ᵀ` is `X̃V` for a `V` with orthonormal columns and `‖X̃ᵀỸ‖_* = ‖B_xᵀB_y‖_*`. The kernels take
`B = Rᵀ` from a thin QR factorisation `X̃ᵀ = QR` (`(n, n)`, cost `2n²d`): Householder QR is backward stable,
so unlike a square root of the float32 Gram (which turns rounding of size `ε‖X‖²` into spurious singular
values of size `√ε‖X‖`) it keeps the small singular values, and the nuclear norm, accurate. The per-pair
work is then the singular values of an `(r_x, r_y)` matrix with `r = min(n, d)`.

References:
  Schönemann (1966). A generalized solution of the orthogonal Procrustes problem. Psychometrika 31.
  Williams, Kunz, Kornblith & Linderman (2021). Generalized Shape Metrics on Neural Representations. NeurIPS.
  Ding, Denain & Steinhardt (2021). Grounding Representation Similarity with Statistical Testing (the
    Procrustes distance `2 − 2‖X̂ᵀŶ‖_*` as a similarity baseline).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _pairs, _sharding
from rsim_jax.kernels.features import center_features
from rsim_jax.kernels.gram import DEFAULT_PRECISION
from rsim_jax.kernels.hsic import sum_2d


class ProcrustesResult(NamedTuple):
  """Shape similarity and the two distances built on it (scalars, or `(L_x, L_y)` arrays for all pairs).

  Attributes:
    similarity: `‖X̂ᵀŶ‖_*` ∈ [0, 1]; 1 iff one representation is an orthogonal transform of the other.
    distance: Procrustes distance `√(2 − 2·similarity)` ∈ [0, √2].
    angle: angular shape metric `arccos(similarity)` ∈ [0, π/2] (Williams et al. 2021). Near 0 both distances
      amplify rounding (`arccos(1 − δ) ≈ √(2δ)`): identical shapes give ~1e-3 in float32, not 0.
  """

  similarity: jax.Array
  distance: jax.Array
  angle: jax.Array


def _factor(x: jax.Array) -> jax.Array:
  """`B` with `BBᵀ = X̂X̂ᵀ`: the centred, unit-norm features themselves when d ≤ n, else `Rᵀ` of `X̂ᵀ = QR`."""
  xc = center_features(x)
  n, d = xc.shape
  norm = jnp.sqrt(sum_2d(xc * xc))
  xc = xc / jnp.where(norm > 0, norm, jnp.nan)  # zero variance: NaN, reported by the callers
  if d > n:
    return jnp.linalg.qr(xc.T, mode="r").T
  return xc


def _constant_layer_error(name: str) -> ValueError:
  return ValueError(
      f"The Procrustes distance is undefined: `{name}` has zero variance across examples (constant layer). "
      "Drop constant layers before comparing shapes."
  )


def _raise_if_constant(factor: jax.Array, name: str) -> None:
  if _checks.is_concrete(factor) and bool(jnp.any(jnp.isnan(factor))):
    raise _constant_layer_error(name)


def _result(similarity: jax.Array) -> ProcrustesResult:
  similarity = jnp.clip(similarity, 0.0, 1.0)
  return ProcrustesResult(similarity, jnp.sqrt(jnp.maximum(2.0 - 2.0 * similarity, 0.0)), jnp.arccos(similarity))


def _pair(bx, by, *, both):
  cross = jnp.matmul(bx.T, by, precision=DEFAULT_PRECISION)
  value = {"similarity": jnp.sum(_pairs.singular_values(cross))}
  return value, (value if both else None)


def _self_pair(factor) -> dict[str, float]:
  """A layer against itself: `‖X̂ᵀX̂‖_* = tr(X̂ᵀX̂) = ‖X̂‖²_F = 1` (no decomposition needed)."""
  return {"similarity": 1.0}


def procrustes(x: jax.Array, y: jax.Array) -> ProcrustesResult:
  """Orthogonal Procrustes similarity, distance and angular shape metric of two representations.

  `X̂ = X̃/‖X̃‖_F` (centred over examples, unit Frobenius norm), then
    similarity `s = ‖X̂ᵀŶ‖_*`,  distance `√(2 − 2s)`,  angle `arccos s`   (Williams et al. 2021, Eq. 4–5).
  Invariant to translation, orthogonal transforms and isotropic scaling of either input; symmetric.
  For d > n the nuclear norm is taken through a thin QR factor of each `X̃ᵀ` (see the module docstring).
  Cost: `O(n·d_x·d_y + r_x·r_y·min(r_x, r_y))` with `r = min(n, d)`, plus `2n²d` per wide input.

  Args:
    x: `(n, d_x)` activations of the first layer.
    y: `(n, d_y)` activations of the second layer, same examples in the same order.

  Returns:
    A `ProcrustesResult` of scalars.

  Raises:
    ValueError: inputs not 2-D, different example counts, fewer than 2 examples, NaN/Inf or a constant input
      (values checked when concrete; under `jit` a constant input gives NaN).
  """
  x, y = _checks.validated_pair(x, y, min_examples=2, why="centring")
  # The thin QR of each layer needs every example on one device: an example-split input is gathered.
  x, y = _sharding.replicated(x), _sharding.replicated(y)
  bx, by = _factor(x), _factor(y)
  _raise_if_constant(bx, "x")
  _raise_if_constant(by, "y")
  forward, _ = _pair(bx, by, both=False)
  return _result(forward["similarity"])


def procrustes_all_pairs(layers_x, layers_y=None) -> ProcrustesResult:
  """Procrustes similarity, distance and angle between all layer pairs of one model or of two models.

  Each layer is factored once (`B` with `BBᵀ = X̂X̂ᵀ`, `(n, min(n, d))`, see `procrustes`), then every pair's
  nuclear norm `‖B_xᵀB_y‖_*` is taken in jitted loops, one per pair of equally wide layer groups. With one
  model only the upper triangle is computed (the index is symmetric) and the diagonal is 1 without a
  decomposition (`‖X̂ᵀX̂‖_* = ‖X̂‖²_F`). A rectangular `B_xᵀB_y` is reduced to a triangle by QR before its
  singular values (`_pairs.singular_values`). On a CPU the pairs run on one thread per core; on a mesh (layers
  split or replicated over its devices) they are split over the devices (see `rsim_jax.kernels._pairs`).

  Args:
    layers_x: the first model's layers: a list, an ordered dict (its values) or a stacked array of
      `(n, ...)` activations (flattened per example).
    layers_y: optional second model's layers over the same n examples; default: `layers_x` with itself.

  Returns:
    A `ProcrustesResult` of `(L_x, L_y)` NumPy arrays.

  Raises:
    ValueError: as `procrustes`, naming the offending layer.
  """
  xs = _pairs.as_layers(layers_x, "layers_x")
  ys = None if layers_y is None else _pairs.as_layers(layers_y, "layers_y")
  if ys is not None:
    _checks.check_same_examples(xs[0], ys[0], "layers_x[0]", "layers_y[0]")
  _checks.check_min_examples(xs[0].shape[0], 2, "layers_x[0]", why="centring")
  n = xs[0].shape[0]

  def factors(layers, name):
    out = []
    widths = _pairs.group_widths([min(layer.shape) for layer in layers], n)
    for i, (layer, width) in enumerate(zip(layers, widths)):
      b, constant = _padded_factor(layer, width=width)
      if bool(constant):
        raise _constant_layer_error(f"{name}[{i}]")
      out.append(b)
    return out

  fx = factors(xs, "layers_x")
  fy = None if ys is None else factors(ys, "layers_y")
  similarity = _pairs.all_pairs(fx, fy, _pair, self_pair=_self_pair)["similarity"]
  return ProcrustesResult(*(np.asarray(v) for v in _result(jnp.asarray(similarity))))


@functools.partial(jax.jit, static_argnames="width")
def _padded_factor(x, *, width):
  """`_factor(x)` with zero columns up to `width`, and whether x is constant: one program per layer shape."""
  b = _factor(x)
  return _pairs.pad_columns(b, width), jnp.any(jnp.isnan(b))
