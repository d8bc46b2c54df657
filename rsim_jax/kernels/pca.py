"""Principal components of layer activations: streamed (any number of examples) or full batch (any width).

Streaming API (state is a pytree; every function is pure and jit-able):

  state = pca_init(d)
  for batch in data:
    state = pca_update(state, x, mask=...)    # x: (n, d); mask: (n,) bool for a ragged last batch
  result = pca_result(state, k=10)            # PCAResult: mean, eigenvalues, components, ...

The state holds the example count, the mean and the centred scatter matrix `M2 = Σ (x − x̄)(x − x̄)ᵀ`.
Each batch is centred on its own mean (itself computed after a shift by one of its rows, so an offset of 1e4
cancels exactly in float32) before its scatter is formed, and batches are combined with the parallel update
of Chan, Golub & LeVeque (1979, "Updating formulae and a pairwise algorithm for computing sample variances"):

  `n = n_a + n_b,  δ = x̄_b − x̄_a,  x̄ = x̄_a + δ·n_b/n,  M2 = M2_a + M2_b + δδᵀ·n_a·n_b/n`.

Sums are kept in compensated float32 (TwoSum double-word, `rsim_jax.kernels.compensated`) or in float64 when
`jax_enable_x64` is on. `pca_merge` combines states of different hosts or data shards the same way.
Memory: `2·d²` floats for the state (the scatter and its compensation) plus about `2·d²` of temporaries per
update — for wide conv layers with `d = C·H·W` in the tens of thousands use the full-batch `pca`, which takes
the `(n, n)` Gram route.

References:
  Pearson (1901); Hotelling (1933) — principal components.
  Chan, Golub & LeVeque (1979/1983) — pairwise updates of the scatter matrix.
  Gao, Trauger, Mitrovic & Ganguli (2017), "A theory of multineuronal dimensionality, dynamics and
    measurement" — participation ratio `(Σλ)²/Σλ²`; Recanatesi et al. (2019) use it per layer.
  Nguyen, Raghu & Kornblith (2021) — the fraction of variance on the first principal component of the
    layers inside a block structure, and CKA after removing it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding
from rsim_jax.kernels import compensated

_PRECISION = lax.Precision.HIGHEST
METHODS = ("auto", "gram", "covariance")


class PCAState(NamedTuple):
  """Running statistics of a stream of `(n, d)` batches.

  Attributes:
    count: `()` int32, examples seen.
    mean: `(d,)` compensated running mean (value = `high + low`).
    scatter: `(d, d)` compensated centred scatter matrix `Σ (x − x̄)(x − x̄)ᵀ`.
  """

  count: jax.Array
  mean: compensated.CompensatedSum
  scatter: compensated.CompensatedSum

  @property
  def num_features(self) -> int:
    return self.mean.high.shape[-1]


class PCAResult(NamedTuple):
  """Principal components of centred data, largest variance first.

  Attributes:
    mean: `(d,)` mean of the data.
    eigenvalues: `(k,)` variances along the components (sample covariance, divisor `n − 1`), descending.
    components: `(d, k)` orthonormal principal directions (columns), each signed so that its entry of largest
      magnitude is positive. Directions of zero variance are not determined by the data: the Gram route
      returns zero columns for them.
    explained_variance_ratio: `(k,)` `eigenvalues / total_variance`.
    total_variance: `()` `Σ` of all d variances (trace of the covariance), not only the k returned.
    num_examples: `()` examples the statistics are over.
  """

  mean: jax.Array
  eigenvalues: jax.Array
  components: jax.Array
  explained_variance_ratio: jax.Array
  total_variance: jax.Array
  num_examples: jax.Array


# --- Streaming ---


def pca_init(num_features: int) -> PCAState:
  """An empty accumulator for `(n, num_features)` batches (float64 sums under `jax_enable_x64`, else
  compensated float32). Memory: `2·d² + O(d)` floats (the scatter and its compensation)."""
  if isinstance(num_features, bool) or not isinstance(num_features, (int, np.integer)) or num_features < 1:
    raise ValueError(f"`num_features` must be a positive integer, got {num_features!r}.")
  d = int(num_features)
  return PCAState(jnp.zeros((), jnp.int32), compensated.zeros((d,)), compensated.zeros((d, d)))


def pca_batch_state(x: jax.Array, mask: jax.Array | None) -> PCAState:
  """Count, mean (as an exact pivot + shift pair) and centred scatter of one batch."""
  dtype = compensated.accumulation_dtype()
  x = x.astype(dtype)
  n = x.shape[0]
  valid = jnp.ones((n,), bool) if mask is None else _sharding.replicated(mask)
  weight = valid.astype(dtype)[:, None]
  count = jnp.sum(valid.astype(jnp.int32))
  # Shift by one valid row: x − pivot is exact for values within a factor 2 (Sterbenz), so a common offset
  # (1e4) is gone before anything is summed.
  pivot = _sharding.row(x, jnp.argmax(valid))
  shifted = (x - pivot) * weight
  shift = jnp.sum(shifted, axis=0) / jnp.maximum(count, 1).astype(dtype)
  centred = (shifted - shift) * weight
  # Split examples: each device forms its rows' scatter and XLA adds them (psum); x is never gathered.
  scatter = _sharding.contract_examples(centred, centred, precision=_PRECISION)
  mean = compensated.CompensatedSum(*compensated.two_sum(pivot, shift))
  return PCAState(count, mean, compensated.CompensatedSum(scatter, jnp.zeros_like(scatter)))


def _merge(a: PCAState, b: PCAState) -> PCAState:
  dtype = a.mean.high.dtype
  na, nb = a.count.astype(dtype), b.count.astype(dtype)
  n = na + nb
  wb = nb / jnp.maximum(n, 1.0)
  # δ = mean_b − mean_a in double-word: the leading difference is exact (TwoSum), the rest is small.
  lead, err = compensated.two_sum(b.mean.high, -a.mean.high)
  delta = lead + (err + (b.mean.low - a.mean.low))
  mean = compensated.add(a.mean, delta * wb)
  scatter = compensated.merge(a.scatter, b.scatter)
  scatter = compensated.add(scatter, jnp.outer(delta, delta) * (na * wb))
  merged = PCAState(a.count + b.count, mean, scatter)
  # An empty side contributes nothing; taking the other side whole keeps its double-word mean exact.
  merged = jax.tree.map(lambda m, bb: jnp.where(a.count == 0, bb, m), merged, b)
  return jax.tree.map(lambda m, aa: jnp.where(b.count == 0, aa, m), merged, a)


@jax.jit
def _update(state, x, mask):
  return _merge(state, pca_batch_state(x, mask))


def pca_update(state: PCAState, x: jax.Array, *, mask: jax.Array | None = None) -> PCAState:
  """Adds a batch of examples to the running mean and centred scatter (Chan et al. parallel update).

  Args:
    state: a `PCAState` for d features.
    x: `(n, d)` batch (flatten conv maps first with `flatten_features`).
    mask: optional `(n,)` bool; rows where it is False (padding of a ragged last batch) are ignored.

  Returns:
    The updated state. A batch whose mask is all False leaves it unchanged.
  """
  x = _checks.as_float_array(x, "x")
  _checks.check_2d(x, "x")
  if x.shape[1] != state.num_features:
    raise ValueError(
        f"`x` has {x.shape[1]} features but the state was initialised with num_features={state.num_features}."
    )
  if mask is not None:
    mask = jnp.asarray(mask)
    if mask.shape != (x.shape[0],):
      raise ValueError(f"`mask` must have shape ({x.shape[0]},) to match `x`, got {tuple(mask.shape)}.")
    mask = mask.astype(bool)
    if _checks.is_concrete(mask) and _checks.is_concrete(x):
      # `where`, not boolean indexing: the valid rows of an array split over devices stay where they are.
      _checks.check_finite(jnp.where(mask[:, None], x, 0.0), "x")
  else:
    _checks.check_finite(x, "x")
  return _update(state, x, mask)


@jax.jit
def pca_merge(a: PCAState, b: PCAState) -> PCAState:
  """Combines two states (e.g. of two hosts or data shards): equal to one stream over both (Chan et al.)."""
  if a.num_features != b.num_features:
    raise ValueError(f"Cannot merge states of {a.num_features} and {b.num_features} features.")
  return _merge(a, b)


def _check_pca_k(k, limit: int, what: str) -> int:
  if k is None:
    return limit
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
    raise ValueError(f"`k` must be an integer in [1, {limit}] ({what}), got {k!r}.")
  return int(k)


def _orient(components: jax.Array) -> jax.Array:
  """Signs each column so that its entry of largest magnitude is positive (a deterministic convention)."""
  pivot = jnp.take_along_axis(components, jnp.argmax(jnp.abs(components), axis=0)[None, :], axis=0)
  return components * jnp.where(pivot < 0, -1.0, 1.0).astype(components.dtype)


def _raise_if_degenerate(count, total_variance, name: str) -> None:
  if not (_checks.is_concrete(count) and _checks.is_concrete(total_variance)):
    return
  if int(count) < 2:
    raise ValueError(f"`{name}` holds {int(count)} example(s); PCA needs at least 2.")
  if not float(total_variance) > 0:
    raise ValueError(
        f"`{name}` has zero variance (all points identical): principal components and variance ratios are "
        "undefined."
    )


def pca_result(state: PCAState, *, k: int | None = None) -> PCAResult:
  """Principal components of the streamed data: eigendecomposition of the covariance `M2 / (n − 1)`.

  Args:
    state: a `PCAState` with at least 2 examples.
    k: components to return (default all d).

  Returns:
    A `PCAResult`.

  Raises:
    ValueError: fewer than 2 examples or zero variance (checked when the state is concrete; under `jit`
      such states give NaN ratios).
  """
  k = _check_pca_k(k, state.num_features, "at most the number of features")
  result = _result(state, k)
  _raise_if_degenerate(state.count, result.total_variance, "state")
  return result


@functools.partial(jax.jit, static_argnames="k")
def _result(state, k):
  n = state.count.astype(state.mean.high.dtype)
  cov = compensated.value(state.scatter) / jnp.maximum(n - 1.0, 1.0)
  cov = 0.5 * (cov + cov.T)
  values, vectors = jnp.linalg.eigh(cov)
  values, vectors = jnp.maximum(values[::-1][:k], 0.0), vectors[:, ::-1][:, :k]
  total = jnp.trace(cov)
  return PCAResult(
      mean=compensated.value(state.mean),
      eigenvalues=values,
      components=_orient(vectors),
      explained_variance_ratio=values / total,
      total_variance=total,
      num_examples=state.count,
  )


# --- Full batch ---


def _centre(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  pivot = _sharding.row(x, 0)[None, :]
  shifted = x - pivot
  shift = jnp.mean(shifted, axis=0, keepdims=True)
  return shifted - shift, (pivot + shift)[0]


def _validated(x, name: str = "x") -> jax.Array:
  x = _checks.as_float_array(x, name)
  _checks.check_2d(x, name)
  _checks.check_min_examples(x.shape[0], 2, name, why="a covariance (divisor n − 1)")
  _checks.check_finite(x, name)
  if x.dtype in (jnp.float16, jnp.bfloat16):
    x = x.astype(jnp.float32)
  return x


def _route(n: int, d: int, method: str) -> str:
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
  if method == "auto":
    return "gram" if n < d else "covariance"
  return method


def pca(x: jax.Array, *, k: int | None = None, method: str = "auto") -> PCAResult:
  """Full-batch PCA of `(n, d)` data, top-k components, whatever the width d.

  Two exact routes, chosen by shape (`method="auto"`):
    - **Gram** (`n < d`, e.g. wide conv layers with `d = C·H·W`): eigendecomposition of the `(n, n)` Gram
      matrix `G = X̃X̃ᵀ` of the centred data `X̃`; its nonzero eigenvalues are those of `X̃ᵀX̃`, and the
      components are `v_i = X̃ᵀu_i / √μ_i`. Memory: `n·d` (the data) `+ 2·n²` (Gram, eigenvectors)
      `+ d·k`; time `n²·d + O(n³)`. At most `n − 1` variances are nonzero; `k ≤ min(n, d)`.
    - **Covariance** (`n ≥ d`): eigendecomposition of the `(d, d)` covariance `X̃ᵀX̃/(n − 1)`. Memory:
      `n·d + 2·d²`; time `n·d² + O(d³)`.
  Eigenvalues are variances (divisor `n − 1`). The data is centred after a shift by its first row, so large
  offsets (1e4 in float32) do not cost precision.

  Args:
    x: `(n, d)` data, n ≥ 2.
    k: components to return, `1 ≤ k ≤ min(n, d)` (default `min(n, d)`).
    method: "auto", "gram" or "covariance" (both exact; they differ in memory and time).

  Returns:
    A `PCAResult` (see its fields).

  Raises:
    ValueError: `x` not 2-D, fewer than 2 rows, NaN/Inf or zero variance (values checked when concrete),
      `k` out of range, unknown `method`.
  """
  x = _validated(x)
  n, d = x.shape
  k = _check_pca_k(k, min(n, d), "at most min(n, d)")
  route = _route(n, d, method)
  result = _pca(x, k=k, route=route)
  _raise_if_degenerate(jnp.asarray(n), result.total_variance, "x")
  return result


@functools.partial(jax.jit, static_argnames=("k", "route"))
def _pca(x, *, k, route):
  n = x.shape[0]
  xc, mean = _centre(x)
  if route == "gram":
    # The Gram's rows stay split with the examples; `eigh` is not distributed, so the (n, n) Gram (smaller
    # than the (n, d) data on this route) is gathered for it.
    gram = _sharding.replicated(_sharding.gram(xc, xc, precision=_PRECISION))
    values, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
    values, vectors = jnp.maximum(values[::-1][:k], 0.0), vectors[:, ::-1][:, :k]
    # v = X̃ᵀu/√μ; directions with (numerically) zero variance are left as zero columns.
    tiny = values <= values[0] * (n * jnp.finfo(x.dtype).eps)
    scale = jnp.where(tiny, 0.0, 1.0 / jnp.sqrt(jnp.where(tiny, 1.0, values)))
    components = _sharding.contract_examples(xc, vectors, precision=_PRECISION) * scale
    total = jnp.trace(gram)
  else:
    scatter = _sharding.contract_examples(xc, xc, precision=_PRECISION)  # split examples: a psum
    values, vectors = jnp.linalg.eigh(0.5 * (scatter + scatter.T))
    values, components = jnp.maximum(values[::-1][:k], 0.0), vectors[:, ::-1][:, :k]
    total = jnp.trace(scatter)
  variances = values / (n - 1)
  total = total / (n - 1)
  return PCAResult(
      mean=mean,
      eigenvalues=variances,
      components=_orient(components),
      explained_variance_ratio=variances / total,
      total_variance=total,
      num_examples=jnp.asarray(n, jnp.int32),
  )


# --- Spectrum summaries ---


def _eigenvalues_arg(x, eigenvalues, fn: str) -> jax.Array | None:
  if (x is None) == (eigenvalues is None):
    raise ValueError(f"`{fn}` takes exactly one of `x` (data) or `eigenvalues` (a spectrum).")
  if eigenvalues is None:
    return None
  ev = _checks.as_float_array(eigenvalues, "eigenvalues")
  _checks.check_rank(ev, 1, "eigenvalues", hint="Pass a 1-D spectrum (e.g. `pca(x).eigenvalues`).")
  if ev.shape[0] < 1:
    raise ValueError("`eigenvalues` is empty.")
  _checks.check_finite(ev, "eigenvalues")
  if _checks.is_concrete(ev):
    if bool(jnp.any(ev < 0)):
      raise ValueError("`eigenvalues` must be non-negative variances.")
    if not float(jnp.sum(ev)) > 0:
      raise ValueError("`eigenvalues` sum to zero (zero variance): the ratio is undefined.")
  return ev


@jax.jit
def _second_moment_matrix(x):
  """The smaller of the Gram `X̃X̃ᵀ` and scatter `X̃ᵀX̃` of centred x: same nonzero spectrum."""
  xc, _ = _centre(x)
  if x.shape[0] < x.shape[1]:
    return _sharding.gram(xc, xc, precision=_PRECISION)  # rows split like the examples
  return _sharding.contract_examples(xc, xc, precision=_PRECISION)  # replicated: a psum over devices


def participation_ratio(x: jax.Array | None = None, *, eigenvalues: jax.Array | None = None) -> jax.Array:
  """Participation ratio `PR = (Σλ)² / Σλ²` of the covariance spectrum (Gao et al. 2017): from 1 (one
  direction) to d (isotropic); a linear measure of dimensionality (Recanatesi et al. 2019).

  From data no eigendecomposition is needed: `Σλ = tr(C)` and `Σλ² = ‖C‖_F²`, computed on the smaller of
  the Gram `(n, n)` and scatter `(d, d)` matrices of the centred data (they share the nonzero spectrum).

  Args:
    x: `(n, d)` data, or
    eigenvalues: `(m,)` non-negative variances (e.g. `pca(x).eigenvalues`; a truncated spectrum gives the
      PR of those components only).

  Returns:
    `()` float.
  """
  ev = _eigenvalues_arg(x, eigenvalues, "participation_ratio")
  if ev is not None:
    return jnp.sum(ev) ** 2 / jnp.sum(ev * ev)
  x = _validated(x)
  m = _second_moment_matrix(x)
  total = _sharding.trace(m)
  _raise_if_degenerate(jnp.asarray(x.shape[0]), total, "x")
  return total**2 / jnp.sum(m * m)


def first_pc_fraction(x: jax.Array | None = None, *, eigenvalues: jax.Array | None = None) -> jax.Array:
  """Fraction of the variance on the first principal component, `λ₁ / Σλ` (Nguyen et al. 2021 relate a
  dominant PC1 to the block structure of CKA heatmaps).

  Args:
    x: `(n, d)` data (the largest eigenvalue of the smaller of its Gram/scatter matrices), or
    eigenvalues: `(m,)` non-negative variances (`Σλ` is over those given: pass the full spectrum).

  Returns:
    `()` float in (0, 1].
  """
  ev = _eigenvalues_arg(x, eigenvalues, "first_pc_fraction")
  if ev is not None:
    return jnp.max(ev) / jnp.sum(ev)
  x = _validated(x)
  m = _second_moment_matrix(x)
  total = _sharding.trace(m)
  _raise_if_degenerate(jnp.asarray(x.shape[0]), total, "x")
  m = _sharding.replicated(m)  # `eigvalsh` needs the whole matrix on one device (the smaller of n×n, d×d)
  return jnp.linalg.eigvalsh(0.5 * (m + m.T))[-1] / total


def _top_components(x: jax.Array, k: int, components: jax.Array | None) -> jax.Array:
  n, d = x.shape
  if components is None:
    return pca(x, k=_check_pca_k(k, min(n, d), "at most min(n, d)")).components
  comps = _checks.as_float_array(components, "components")
  _checks.check_rank(comps, 2, "components", hint="Pass `(d, ≥k)` directions as columns, e.g. `pca(x).components`.")
  if comps.shape[0] != d:
    raise ValueError(f"`components` must have d={d} rows (one per feature of `x`), got shape {tuple(comps.shape)}.")
  _check_pca_k(k, comps.shape[1], "at most the number of columns of `components`")
  return comps[:, :k].astype(x.dtype)


def project_top_pcs(x: jax.Array, *, k: int, components: jax.Array | None = None) -> jax.Array:
  """The centred data restricted to its top-k principal subspace: `X̃ V_k V_kᵀ`.

  Args:
    x: `(n, d)` data; it is centred on its own mean.
    k: number of leading directions kept.
    components: optional `(d, ≥k)` orthonormal directions (e.g. PCs of another split); default the top-k of
      `pca(x)`.

  Returns:
    `(n, d)` (rank ≤ k; `X̃ V_k` are the `(n, k)` scores, which give the same linear CKA).
  """
  x = _validated(x)
  v = _top_components(x, k, components)
  xc, _ = _centre(x)
  return jnp.matmul(jnp.matmul(xc, v, precision=_PRECISION), v.T, precision=_PRECISION)


def remove_top_pcs(x: jax.Array, *, k: int, components: jax.Array | None = None) -> jax.Array:
  """The centred data with its top-k principal directions projected out: `X̃ (I − V_k V_kᵀ)`.

  Used for "CKA after removing the first principal component" (Nguyen et al. 2021, Sec. 4): if the block
  structure lives on PC1, CKA between block layers drops once it is removed.

  Args:
    x: `(n, d)` data; it is centred on its own mean.
    k: number of leading directions removed.
    components: optional `(d, ≥k)` orthonormal directions; default the top-k of `pca(x)`.

  Returns:
    `(n, d)` centred residual.
  """
  x = _validated(x)
  v = _top_components(x, k, components)
  xc, _ = _centre(x)
  return xc - jnp.matmul(jnp.matmul(xc, v, precision=_PRECISION), v.T, precision=_PRECISION)
