"""Canonical correlation analysis between representations: CCA, SVCCA and PWCCA.

Every variant reduces each centred representation `X̃` to an `(n, r)` basis `A_x` with orthogonal columns
(`A_xᵀA_x = diag(w_x²)`, weights `w ∈ [0, 1]`) spanning the directions it keeps; the canonical correlations
are the singular values of `A_xᵀA_y` (Björck & Golub 1973: cosines of the principal angles between the two
column spaces), largest first. The variants differ only in the basis:

  - `cca`, `ridge=0`: features are scaled to unit norm (CCA is invariant to any invertible linear map of the
    features, and this removes badly scaled features before any rounding) and `A = Q` of a thin Householder
    QR, `w = 1`. Needs `n > d + 1` for each input (centring uses one degree of freedom): with `d ≥ n − 1` the
    centred features span all of the `n − 1` dimensions and every canonical correlation is 1 whatever the data. Linearly dependent features are an
    error (use `ridge` or `svcca`).
  - `cca`, `ridge=λ > 0` (canonical ridge, Vinod 1976): the correlation matrix of each input's features is
    replaced by `Σ_zz + λI` (λ in units of each feature's variance, so the answer stays scale free); with
    the unit-norm-column `Z̃ = ŨSVᵀ`, `A = Ũ·diag(w)`, `w_i = s_i/√(s_i² + λ)`, and the correlations are the
    singular values of `(Σ_zz + λI)^{-1/2} Σ_zw (Σ_ww + λI)^{-1/2}`. Any d is allowed; every correlation
    shrinks.
  - `svcca` (Raghu et al. 2017): `A = Ũ_k`, the top-k left singular vectors of the centred (unscaled)
    features, k the fewest explaining `variance_kept` of the variance, or a fixed `num_components`; then CCA.
    Needs `n > k + 1`. The singular vectors come from `eigh` of the smaller of `X̃ᵀX̃` and `X̃X̃ᵀ` (float32 `eigh`
    is accurate for the leading directions SVCCA keeps, and much faster on CPU than an SVD with vectors).
  - `pwcca` (Morcos et al. 2018): the correlations of `cca` (or of `svcca` when a truncation is given),
    averaged with weights `α_i ∝ Σ_j |⟨h_i, x̃_j⟩|`, `h_i` the i-th canonical variate of X (unit norm) and
    `x̃_j` X's j-th centred neuron: how much of X's own activity each canonical direction accounts for.
    Asymmetric: `pwcca(x, y)` weighs by x's neurons.

Accuracy: per-feature scales and offsets cost nothing (centring after a shift, unit-norm columns); what
remains is the conditioning of the standardised features themselves, ~`ε·cond(Z̃)` on each correlation
(≈1e-5 for collinear float32 features with cond ~ 1e2; enable `jax_enable_x64` for float64).

A basis has `r = min(n, d)` columns (`d` for `ridge=0`); `min(r_x, r_y)` correlations are returned, those
beyond the number of directions either side keeps set to 0, and the means are over the kept ones.

When `k_x + k_y > n − 1`, at least `k_x + k_y − (n − 1)` canonical correlations are 1 for any data (the two
subspaces of the (n − 1)-dimensional centred sample space must intersect): keep `k_x + k_y` well below n.

References:
  Hotelling (1936). Relations between two sets of variates. Biometrika 28.
  Björck & Golub (1973). Numerical methods for computing angles between linear subspaces. Math. Comp. 27.
  Vinod (1976). Canonical ridge and econometrics of joint production. J. Econometrics 4.
  Raghu, Gilmer, Yosinski & Sohl-Dickstein (2017). SVCCA: Singular Vector Canonical Correlation Analysis for
    Deep Learning Dynamics and Interpretability. NeurIPS.
  Morcos, Raghu & Bengio (2018). Insights on representational similarity in neural networks with canonical
    correlation. NeurIPS (PWCCA, Eq. 1 and Sec. 2.2).
  Kornblith, Norouzi, Lee & Hinton (2019). Similarity of Neural Network Representations Revisited. ICML
    (`R²_CCA` = mean squared canonical correlation, `ρ̄` = mean correlation).
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


class CCAResult(NamedTuple):
  """Canonical correlations and their summaries.

  Attributes:
    correlations: `(min(r_x, r_y),)` canonical correlations, descending; entries beyond `num_components`
      are 0.
    num_components: `()` int, the correlations that count: min of the directions kept by x and by y.
    mean: `()` mean canonical correlation `ρ̄` (SVCCA's similarity).
    mean_squared: `()` mean squared canonical correlation, Kornblith et al.'s `R²_CCA`.
  """

  correlations: jax.Array
  num_components: jax.Array
  mean: jax.Array
  mean_squared: jax.Array


class PWCCAResult(NamedTuple):
  """Projection-weighted CCA (Morcos et al. 2018).

  Attributes:
    similarity: `()` `Σ_i α_i ρ_i`.
    weights: `(min(r_x, r_y),)` `α`, non-negative, summing to 1 over the kept correlations (0 beyond).
    correlations: `(min(r_x, r_y),)` the canonical correlations `ρ`, descending.
  """

  similarity: jax.Array
  weights: jax.Array
  correlations: jax.Array


class _Basis(NamedTuple):
  a: jax.Array  # (n, r) orthogonal columns, A ᵀA = diag(w2)
  w2: jax.Array  # (r,) squared column norms in [0, 1]; 0 = direction not kept
  neurons: jax.Array | None  # (r, d) Aᵀ X̃, the basis against X's centred neurons (PWCCA only)


# --- Options ---


def _check_ridge(ridge) -> float:
  if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.floating, np.integer)) or not ridge >= 0:
    raise ValueError(f"`ridge` must be a non-negative number, got {ridge!r}.")
  return float(ridge)


def _truncation(variance_kept, num_components) -> tuple | None:
  """`None` (no truncation), `("variance", v)` or `("count", k)`, validated."""
  if num_components is not None:
    if variance_kept is not None:
      raise ValueError("Pass at most one of `variance_kept` and `num_components`.")
    if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)) or num_components < 1:
      raise ValueError(f"`num_components` must be a positive integer, got {num_components!r}.")
    return ("count", int(num_components))
  if variance_kept is None:
    return None
  if not isinstance(variance_kept, (int, float, np.floating)) or not 0.0 < variance_kept <= 1.0:
    raise ValueError(f"`variance_kept` must be a fraction in (0, 1], got {variance_kept!r}.")
  return ("variance", float(variance_kept))


def _check_shape_rules(shape: tuple[int, int], name: str, *, ridge: float, truncation) -> None:
  """The rank rule: fewer directions kept than examples (centring leaves n − 1 dimensions)."""
  n, d = shape
  _checks.check_min_examples(n, 3, name, why="canonical correlation analysis")
  if truncation is None and ridge == 0 and d >= n - 1:
    raise ValueError(
        f"`{name}` has {d} features but only {n} examples: CCA without ridge needs n > d + 1 (with d ≥ n − 1 the "
        "centred features span every direction and all canonical correlations are 1). Pass `ridge > 0`, use "
        "`svcca` (num_components < n − 1), or use more examples."
    )
  if truncation is not None and truncation[0] == "count":
    k = truncation[1]
    if k > d:
      raise ValueError(f"`num_components`={k} exceeds the {d} features of `{name}`.")
    if k >= n - 1:
      raise ValueError(
          f"`num_components`={k} needs more than {k + 1} examples (centring uses one), but `{name}` has {n}: keep fewer components "
          "or use more examples."
      )


# --- Per-representation bases ---


def _descending_eigh(m):
  values, vectors = jnp.linalg.eigh(0.5 * (m + m.T))
  return jnp.maximum(values[::-1], 0.0), vectors[:, ::-1]


def _basis(x, *, ridge: float, truncation, with_neurons: bool) -> _Basis:
  """The `(n, min(n, d))` basis of one representation (see the module docstring)."""
  xc = center_features(x)
  n, d = xc.shape
  eps = jnp.finfo(xc.dtype).eps
  if truncation is None:
    column_norms = jnp.sqrt(jnp.sum(xc * xc, axis=0))
    z = xc / jnp.where(column_norms > 0, column_norms, 1.0)
    if ridge == 0:
      q, r = jnp.linalg.qr(z)
      diag = jnp.abs(jnp.diagonal(r))
      # A zero pivot of the (unpivoted) QR: the features are linearly dependent (reported by the callers).
      kept = diag > max(n, d) * eps * jnp.max(diag)
      w2 = kept.astype(xc.dtype)
      a = q * w2
    else:
      shrink = ridge  # z has unit-norm columns: zᵀz is the correlation matrix Σ_zz
      if d <= n:
        values, vectors = _descending_eigh(jnp.matmul(z.T, z, precision=DEFAULT_PRECISION))
        # Z V diag(1/√(λ + shrink)) = Ũ diag(s/√(s² + shrink)), without dividing by small s.
        a = jnp.matmul(z, vectors, precision=DEFAULT_PRECISION) / jnp.sqrt(values + shrink)
      else:
        values, vectors = _descending_eigh(jnp.matmul(z, z.T, precision=DEFAULT_PRECISION))
        a = vectors * jnp.sqrt(values / (values + shrink))
      w2 = values / (values + shrink)
      # Centring leaves at most n − 1 directions; the ridge already silences tiny ones (w → 0), so no float32
      # threshold is needed, and the structural rank fixes how many correlations the means count.
      kept = jnp.arange(values.shape[0]) < min(n - 1, d)
      w2 = jnp.where(kept, w2, 0.0)
      a = a * kept
  else:
    if d <= n:
      values, vectors = _descending_eigh(jnp.matmul(xc.T, xc, precision=DEFAULT_PRECISION))
      nonzero = values > max(n, d) * eps * values[0]
      u = jnp.matmul(xc, vectors, precision=DEFAULT_PRECISION) / jnp.sqrt(jnp.where(nonzero, values, 1.0))
    else:
      values, u = _descending_eigh(jnp.matmul(xc, xc.T, precision=DEFAULT_PRECISION))
      nonzero = values > max(n, d) * eps * values[0]
    index = jnp.arange(values.shape[0])
    if truncation[0] == "count":
      kept = index < truncation[1]
    else:
      fraction_before = (jnp.cumsum(values) - values) / jnp.sum(values)
      # Keep direction i while the variance of the ones before it is short of the target.
      kept = fraction_before < truncation[1]
    kept = kept & nonzero
    w2 = kept.astype(xc.dtype)
    a = u * w2
  neurons = jnp.matmul(a.T, xc, precision=DEFAULT_PRECISION) if with_neurons else None
  return _Basis(a, w2, neurons)


def _raise_if_degenerate(basis: _Basis, name: str, *, ridge: float, truncation) -> None:
  if not _checks.is_concrete(basis.w2):
    return
  w2 = np.asarray(basis.w2)
  if not np.all(np.isfinite(w2)) or not np.any(w2 > 0):
    raise ValueError(f"CCA is undefined: `{name}` has zero variance across examples (constant layer).")
  if truncation is None and ridge == 0 and not np.all(w2 > 0):
    raise ValueError(
        f"`{name}` has linearly dependent features (rank {int(np.sum(w2 > 0))} < {w2.shape[0]} after centring, "
        "e.g. a constant or duplicated feature): its canonical correlations are not determined. Pass "
        "`ridge > 0` or use `svcca`."
    )
  if truncation is not None and truncation[0] == "count" and int(np.sum(w2 > 0)) < truncation[1]:
    raise ValueError(
        f"`{name}` has only {int(np.sum(w2 > 0))} directions of nonzero variance, fewer than "
        f"`num_components`={truncation[1]}."
    )


def _used_columns(basis: _Basis) -> int:
  """The leading columns some kept direction uses (concrete bases only); the trailing ones can be trimmed."""
  return int(np.max(np.nonzero(np.asarray(basis.w2) > 0)[0], initial=0)) + 1


@functools.partial(jax.jit, static_argnames="width")
def _resized(a, w2, *, width):
  """The first `width` columns of a basis and their weights, zero-padded when it has fewer (one program)."""
  r = w2.shape[0]
  if width <= r:
    return a[:, :width], w2[:width]
  return _pairs.pad_columns(a, width), jnp.pad(w2, (0, width - r))


@functools.partial(jax.jit, static_argnames="width")
def _neurons(a, x, *, width):
  """`Aᵀ X̃` of a (trimmed) basis, `(k, width)`: the neuron count is zero-padded to the model's widest layer
  (zero neurons add nothing to `Σ_j |⟨h_i, x̃_j⟩|`), so layers group by k alone and share compiled loops."""
  neurons = jnp.matmul(a.T, center_features(x), precision=DEFAULT_PRECISION)
  return jnp.pad(neurons, ((0, 0), (0, width - x.shape[1])))


# --- Pair contraction ---


def _correlations(bx: _Basis, by: _Basis):
  cross = jnp.matmul(bx.a.T, by.a, precision=DEFAULT_PRECISION)
  rho = _pairs.singular_values(cross)
  count = jnp.minimum(jnp.sum(bx.w2 > 0), jnp.sum(by.w2 > 0))
  valid = jnp.arange(rho.shape[0]) < count
  return cross, jnp.where(valid, jnp.clip(rho, 0.0, 1.0), 0.0), count, valid


def _summaries(rho, count):
  denominator = jnp.maximum(count, 1).astype(rho.dtype)
  return jnp.sum(rho) / denominator, jnp.sum(rho * rho) / denominator


def _projection_weights(cross, basis: _Basis, num: int, valid):
  """Morcos et al.'s `α_i ∝ Σ_j |⟨h_i, x̃_j⟩|` for the canonical variates `h_i = A a_i/‖A a_i‖` of the side
  whose basis is `basis`; `a_i` are the left singular vectors of `cross`, read off `eigh(cross crossᵀ)` (an SVD
  with vectors is far slower on CPU; the weights tolerate the squared conditioning)."""
  _, vectors = _descending_eigh(jnp.matmul(cross, cross.T, precision=DEFAULT_PRECISION))
  vectors = vectors[:, :num]
  norms = jnp.sqrt(jnp.matmul(basis.w2, vectors * vectors, precision=DEFAULT_PRECISION))
  projections = jnp.matmul(vectors.T, basis.neurons, precision=DEFAULT_PRECISION)  # (num, d): ⟨A a_i, x̃_j⟩
  alpha = jnp.sum(jnp.abs(projections), axis=1) / jnp.where(norms > 0, norms, 1.0)
  alpha = jnp.where(valid, alpha, 0.0)
  return alpha / jnp.sum(alpha)


def _cca_pair(bx, by, *, both):
  _, rho, count, _ = _correlations(bx, by)
  mean, mean_squared = _summaries(rho, count)
  value = {"mean": mean, "mean_squared": mean_squared}
  return value, (value if both else None)


def _cca_self_pair(basis: _Basis) -> dict[str, float]:
  """A layer against itself: `A_xᵀA_x = diag(w²)`, so the correlations are the weights `w²` themselves."""
  w2 = np.clip(np.asarray(basis.w2, np.float64), 0.0, 1.0)
  count = max(int(np.sum(w2 > 0)), 1)
  return {"mean": float(np.sum(w2) / count), "mean_squared": float(np.sum(w2 * w2) / count)}


def _pwcca_pair(bx, by, *, both):
  cross, rho, _, valid = _correlations(bx, by)
  num = rho.shape[0]
  forward = {"pwcca": jnp.sum(_projection_weights(cross, bx, num, valid) * rho)}
  backward = {"pwcca": jnp.sum(_projection_weights(cross.T, by, num, valid) * rho)} if both else None
  return forward, backward


# --- Public API ---


def _validated_pair(x, y, *, ridge, truncation):
  x, y = _checks.validated_pair(x, y)
  # QR and eigh need every example on one device: an example-split input is gathered.
  x, y = _sharding.replicated(x), _sharding.replicated(y)
  _check_shape_rules(x.shape, "x", ridge=ridge, truncation=truncation)
  _check_shape_rules(y.shape, "y", ridge=ridge, truncation=truncation)
  return x, y


def _pair_bases(x, y, *, ridge, truncation, with_neurons):
  x, y = _validated_pair(x, y, ridge=ridge, truncation=truncation)
  bases = []
  for arr, name in ((x, "x"), (y, "y")):
    basis = _basis_jit(arr, ridge=ridge, truncation=truncation, with_neurons=with_neurons)
    _raise_if_degenerate(basis, name, ridge=ridge, truncation=truncation)
    bases.append(basis)
  return bases


def _cca_result(bx: _Basis, by: _Basis) -> CCAResult:
  _, rho, count, _ = _correlations(bx, by)
  return CCAResult(rho, count, *_summaries(rho, count))


def cca(x: jax.Array, y: jax.Array, *, ridge: float = 0.0) -> CCAResult:
  """Canonical correlations of two representations (Hotelling 1936), optionally ridge-regularised.

  `ρ_i` = singular values of `Q_xᵀQ_y`, `Q` an orthonormal basis of the centred, unit-variance features
  (thin QR). With `ridge=λ > 0`: of `(Σ_xx + λI)^{-1/2} Σ_xy (Σ_yy + λI)^{-1/2}` on unit-variance features
  (canonical ridge, Vinod 1976). Summaries: `ρ̄ = mean ρ_i` and `R²_CCA = mean ρ_i²` over
  `min(d_x, d_y)` correlations (Kornblith et al. 2019). Invariant to invertible linear maps and translations
  of either input (`ridge=0`); symmetric.

  Args:
    x: `(n, d_x)` activations.
    y: `(n, d_y)` activations of the same examples.
    ridge: λ ≥ 0, added to the correlation matrix of each input's features.

  Returns:
    A `CCAResult`.

  Raises:
    ValueError: `ridge=0` and `d ≥ n − 1` for either input (too few examples: every correlation would be 1),
      linearly dependent or constant features with `ridge=0` (concrete inputs), NaN/Inf, mismatched example
      counts, fewer than 3 examples.
  """
  ridge = _check_ridge(ridge)
  bx, by = _pair_bases(x, y, ridge=ridge, truncation=None, with_neurons=False)
  return _cca_result(bx, by)


def svcca(
    x: jax.Array, y: jax.Array, *, variance_kept: float | None = 0.99, num_components: int | None = None
) -> CCAResult:
  """SVCCA (Raghu et al. 2017): CCA between the leading singular directions of each representation.

  Each centred representation `X̃ = ŨSVᵀ` keeps its top k directions `Ũ_k`: the fewest whose variance
  `Σ_{i≤k} s_i²` reaches `variance_kept` of the total (Raghu et al. keep 99%), or `num_components` of them.
  The SVCCA similarity is the mean of the `min(k_x, k_y)` canonical correlations (singular values of
  `Ũ_{x,k}ᵀŨ_{y,k}`). Invariant to orthogonal transforms, isotropic scaling and translation of either input
  (not to general linear maps, which change the singular directions); symmetric.

  Args:
    x: `(n, d_x)` activations.
    y: `(n, d_y)` activations of the same examples.
    variance_kept: fraction in (0, 1] of each input's variance to keep (ignored when `num_components` is set).
    num_components: a fixed k for both inputs, `k < n − 1` and `k ≤ d`.

  Returns:
    A `CCAResult`; `mean` is the SVCCA similarity.

  Raises:
    ValueError: `num_components ≥ n − 1` (too few examples for the truncation) or `> d`, NaN/Inf, mismatched
      example counts, constant inputs (concrete values).
  """
  truncation = _truncation(None if num_components is not None else variance_kept, num_components)
  if truncation is None:
    raise ValueError("`svcca` needs `variance_kept` or `num_components`; for untruncated CCA use `cca`.")
  bx, by = _pair_bases(x, y, ridge=0.0, truncation=truncation, with_neurons=False)
  return _cca_result(bx, by)


def pwcca(
    x: jax.Array,
    y: jax.Array,
    *,
    ridge: float = 0.0,
    variance_kept: float | None = None,
    num_components: int | None = None,
) -> PWCCAResult:
  """Projection-weighted CCA (Morcos et al. 2018, Sec. 2.2), weighted by x's neurons.

  `PWCCA = Σ_i α_i ρ_i`, `α_i = α̃_i/Σ_k α̃_k`, `α̃_i = Σ_j |⟨h_i, x̃_j⟩|`, with `h_i` x's i-th canonical variate
  (unit norm, `(n,)`) and `x̃_j` x's j-th centred neuron (`(n,)`, unscaled): canonical directions that account
  for more of x's activity count more, so noise directions with low correlation are discounted. The
  correlations are those of `cca` (no truncation, Morcos et al.'s setting) or of `svcca` when
  `variance_kept`/`num_components` is given. Asymmetric: `pwcca(y, x)` weighs by y's neurons. Invariant to
  translation, isotropic scaling and permutation/sign flips of neurons, not to general linear maps.

  Args:
    x: `(n, d_x)` activations (their neurons set the weights).
    y: `(n, d_y)` activations of the same examples.
    ridge: as in `cca` (untruncated only).
    variance_kept, num_components: optional SVCCA truncation of both inputs first.

  Returns:
    A `PWCCAResult`.

  Raises:
    ValueError: as `cca` / `svcca`.
  """
  ridge = _check_ridge(ridge)
  truncation = _truncation(variance_kept, num_components)
  if truncation is not None and ridge:
    raise ValueError("`ridge` applies to untruncated CCA; pass either `ridge` or a truncation, not both.")
  bx, by = _pair_bases(x, y, ridge=ridge, truncation=truncation, with_neurons=True)
  cross, rho, _, valid = _correlations(bx, by)
  weights = _projection_weights(cross, bx, rho.shape[0], valid)
  return PWCCAResult(jnp.sum(weights * rho), weights, rho)


_basis_jit = jax.jit(_basis, static_argnames=("ridge", "truncation", "with_neurons"))


def _all_pairs(layers_x, layers_y, *, ridge, truncation, with_neurons, pair_fn, self_pair=None):
  xs = _pairs.as_layers(layers_x, "layers_x")
  ys = None if layers_y is None else _pairs.as_layers(layers_y, "layers_y")
  if ys is not None:
    _checks.check_same_examples(xs[0], ys[0], "layers_x[0]", "layers_y[0]")
  n = xs[0].shape[0]

  def bases(layers, name):
    widest = max(layer.shape[1] for layer in layers)
    full = []
    for i, layer in enumerate(layers):
      _check_shape_rules(layer.shape, f"{name}[{i}]", ridge=ridge, truncation=truncation)
      basis = _basis_jit(layer, ridge=ridge, truncation=truncation, with_neurons=False)
      _raise_if_degenerate(basis, f"{name}[{i}]", ridge=ridge, truncation=truncation)
      used = _used_columns(basis)
      # Trimmed now to a ladder rung over the columns in use (a truncated basis keeps few of its min(n, d)).
      full.append((_Basis(*_resized(basis.a, basis.w2, width=_pairs.bucket_width(used, n)), None), used))
    # Then zero-padded or trimmed to a few shared widths: one compiled pair loop per group of layers.
    widths = _pairs.group_widths([used for _, used in full], n)
    out = []
    for (basis, _), layer, width in zip(full, layers, widths):
      if width != basis.w2.shape[0]:
        basis = _Basis(*_resized(basis.a, basis.w2, width=width), None)
      if with_neurons:  # after trimming: k·d·n flops instead of min(n, d)·d·n
        basis = basis._replace(neurons=_neurons(basis.a, layer, width=widest))
      out.append(basis)
    return out

  fx = bases(xs, "layers_x")
  fy = None if ys is None else bases(ys, "layers_y")
  return _pairs.all_pairs(fx, fy, pair_fn, self_pair=self_pair)


class CCAPairs(NamedTuple):
  """All-pairs CCA summaries, `(L_x, L_y)` each: `mean` (ρ̄, SVCCA's similarity) and `mean_squared` (R²_CCA)."""

  mean: np.ndarray
  mean_squared: np.ndarray


def cca_all_pairs(layers_x, layers_y=None, *, ridge: float = 0.0) -> CCAPairs:
  """`cca` between all layer pairs of one model (`layers_y=None`) or of two models.

  Each layer's basis is computed once; each pair costs one `(r_x, r_y)` product and its singular values,
  in jitted loops over the pairs of equally wide layers (one model: upper triangle only, and each layer with
  itself in closed form: `A_xᵀA_x = diag(w²)`). The pairs are spread over a CPU's cores or a mesh's devices
  as in `procrustes_all_pairs`.

  Args:
    layers_x: list / ordered dict / stacked array of `(n, ...)` activations.
    layers_y: optional second model over the same examples.
    ridge: as in `cca`.

  Returns:
    `CCAPairs` of `(L_x, L_y)` arrays.
  """
  ridge = _check_ridge(ridge)
  out = _all_pairs(
      layers_x, layers_y, ridge=ridge, truncation=None, with_neurons=False, pair_fn=_cca_pair,
      self_pair=_cca_self_pair,
  )
  return CCAPairs(out["mean"], out["mean_squared"])


def svcca_all_pairs(
    layers_x, layers_y=None, *, variance_kept: float | None = 0.99, num_components: int | None = None
) -> CCAPairs:
  """`svcca` between all layer pairs; each layer's truncated basis is computed once and trimmed to the
  directions it keeps (so the pair cost is `O(k_x·k_y·min(k_x, k_y))`, not `O(r³)`).

  Returns:
    `CCAPairs`; `mean` is the SVCCA similarity.
  """
  truncation = _truncation(None if num_components is not None else variance_kept, num_components)
  if truncation is None:
    raise ValueError("`svcca_all_pairs` needs `variance_kept` or `num_components`.")
  out = _all_pairs(
      layers_x, layers_y, ridge=0.0, truncation=truncation, with_neurons=False, pair_fn=_cca_pair,
      self_pair=_cca_self_pair,
  )
  return CCAPairs(out["mean"], out["mean_squared"])


def pwcca_all_pairs(
    layers_x,
    layers_y=None,
    *,
    ridge: float = 0.0,
    variance_kept: float | None = None,
    num_components: int | None = None,
) -> np.ndarray:
  """`pwcca` between all layer pairs: entry `[i, j]` weighs by the neurons of `layers_x[i]` (the row layer).
  With one model both directions of each unordered pair come from one singular value decomposition.

  Returns:
    `(L_x, L_y)` NumPy array.
  """
  ridge = _check_ridge(ridge)
  truncation = _truncation(variance_kept, num_components)
  if truncation is not None and ridge:
    raise ValueError("`ridge` applies to untruncated CCA; pass either `ridge` or a truncation, not both.")
  out = _all_pairs(layers_x, layers_y, ridge=ridge, truncation=truncation, with_neurons=True, pair_fn=_pwcca_pair)
  return out["pwcca"]
