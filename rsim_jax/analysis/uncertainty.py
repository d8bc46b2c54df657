"""Error bars for the statistics that a single pass cannot give a jackknife for: over seeds and over examples.

Minibatch CKA has its own error bar from the same pass (`kernels.minibatch_cka_jackknife`, the
`stderr_groups=` option of `streaming.CKA` / `extract.compare_models`); TwoNN has the spread of its subsampled
protocol (`analysis.intrinsic_dim.id_profile`: `intrinsic_dim_std`). This module adds:

- `seed_bootstrap`: a summary of values measured between *pairs of seeds* (cross-seed CKA of a layer, say):
  resample the seeds with replacement (Efron & Tibshirani 1993, Ch. 6), keep the pairs of distinct resampled
  seeds, recompute the mean; the spread of the resampled means is the standard error, its 2.5/97.5
  percentiles the interval. Pairs share seeds, so they are not independent: resampling pairs instead of
  seeds would understate the error.
- `pc1_fraction_bootstrap`: the PC1 fraction `λ₁ / Σλ` of a layer, resampling its examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax import kernels


@dataclasses.dataclass(frozen=True)
class Bootstrap:
  """A statistic with its bootstrap spread.

  Attributes:
    estimate: the statistic on the original data (any shape).
    stderr: standard deviation of the resampled statistics (same shape).
    low, high: 2.5% and 97.5% percentiles of the resampled statistics (percentile interval).
    num_resamples: resamples that gave a defined statistic.
  """

  estimate: np.ndarray
  stderr: np.ndarray
  low: np.ndarray
  high: np.ndarray
  num_resamples: int


def seed_bootstrap(values: Mapping[tuple[int, int], np.ndarray], *, num_resamples: int = 2000,
                   seed: int = 0) -> Bootstrap:
  """Mean over seed pairs of a per-pair value, with a bootstrap over seeds.

  Args:
    values: `(seed_a, seed_b)` → value (a scalar or an array, the same shape for every pair), e.g. the
      cross-seed CKA of corresponding layers `(L,)`; unordered pairs of distinct seeds.
    num_resamples: bootstrap resamples of the seeds.
    seed: RNG seed of the resampling.

  Returns:
    A `Bootstrap` of the mean over pairs. A resample is used when it holds at least two distinct seeds that
    form a measured pair; each pair counts once per (multiplicity of seed a × multiplicity of seed b).

  Raises:
    ValueError: fewer than 3 seeds (two seeds make one pair: nothing to resample), a pair of a seed with
      itself, or values of different shapes.
  """
  if not values:
    raise ValueError("`values` is empty: pass (seed_a, seed_b) → value for every measured pair.")
  pairs = {}
  for (a, b), v in values.items():
    if a == b:
      raise ValueError(f"`values` has the pair ({a}, {b}) of a seed with itself; pass distinct seeds.")
    pairs[tuple(sorted((a, b)))] = np.asarray(v, np.float64)
  shapes = {v.shape for v in pairs.values()}
  if len(shapes) != 1:
    raise ValueError(f"Every value must have the same shape, got {sorted(shapes)}.")
  seeds = sorted({s for p in pairs for s in p})
  if len(seeds) < 3:
    raise ValueError(f"`values` covers {len(seeds)} seeds; a seed bootstrap needs at least 3 (2 seeds give one "
                     "pair, whose spread over seeds cannot be estimated).")
  if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 10:
    raise ValueError(f"`num_resamples` must be an integer ≥ 10, got {num_resamples!r}.")
  index = {s: i for i, s in enumerate(seeds)}
  keys = list(pairs)
  stacked = np.stack([pairs[k] for k in keys])  # (P, ...)
  ia = np.array([index[a] for a, _ in keys])
  ib = np.array([index[b] for _, b in keys])
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, len(seeds), size=(num_resamples, len(seeds)))
  counts = np.stack([np.bincount(d, minlength=len(seeds)) for d in draws])  # (R, S) multiplicities
  weights = counts[:, ia] * counts[:, ib]  # (R, P): how often each pair occurs in the resample
  total = weights.sum(axis=1)
  used = total > 0
  flat = stacked.reshape(len(keys), -1)
  means = (weights[used] @ flat) / total[used, None]
  estimate = stacked.mean(axis=0)
  shape = estimate.shape
  return Bootstrap(estimate, means.std(axis=0, ddof=1).reshape(shape),
                   np.percentile(means, 2.5, axis=0).reshape(shape),
                   np.percentile(means, 97.5, axis=0).reshape(shape), int(used.sum()))


# Below this size the resampled second-moment matrix is eigendecomposed exactly; above it only its largest
# eigenvalue is needed, and subspace iteration gets it in a few matrix products instead of a full eigh.
_EXACT_EIGH_SIZE = 64
_SUBSPACE_RANK = 8
_SUBSPACE_ITERATIONS = 12
# Up to this many examples the resamples go through the `(n, n)` Gram whatever the width (a gather per
# resample, no matrix product, at a few MB of Gram); beyond it, the `(d, d)` scatter of a narrow layer.
_GRAM_ROUTE_EXAMPLES = 1024


def _top_eigenvalue(m, start):
  """Largest eigenvalue of a symmetric PSD `(k, k)` matrix `m`, from `start` `(k, r)` near its top eigenvectors.

  Subspace (block power) iteration, then Rayleigh–Ritz on the `(r, r)` projection (Golub & Van Loan 2013,
  §8.2.4): the Ritz value's relative error falls like `tan²θ₀ (λ_{r+1}/λ₁)^{2q}` after q iterations from a
  start at angle θ₀. A resample's top eigenvectors are close to the original data's, so starting there, a dozen
  iterations reach float32 rounding even when λ₂ is close to λ₁ — instead of a full eigendecomposition each.
  """
  if m.shape[0] <= _EXACT_EIGH_SIZE:
    return jnp.linalg.eigvalsh(m)[-1]

  def step(_, q):
    return jnp.linalg.qr(m @ q)[0]

  q = jax.lax.fori_loop(0, _SUBSPACE_ITERATIONS, step, jnp.linalg.qr(start)[0])
  ritz = q.T @ m @ q
  return jnp.linalg.eigvalsh(0.5 * (ritz + ritz.T))[-1]


def _leading_eigenvectors(m):
  k = min(_SUBSPACE_RANK, m.shape[0])
  return jnp.linalg.eigh(m)[1][:, -k:]


def _fractions(second_moment, start_of, indices):
  def fraction(idx):
    m = second_moment(idx)
    return _top_eigenvalue(0.5 * (m + m.T), start_of(idx)) / jnp.trace(m)

  return jax.lax.map(fraction, indices, batch_size=8)


@jax.jit
def _pc1_fractions_from_gram(x, indices):
  """PC1 fraction of every resample `idx` (rows of `indices` `(R, n)`) of centred data `x` `(n, d)` through its
  Gram `K` `(n, n)`: the resample's centred Gram is a gather, re-centred, `H K[idx][:, idx] H`, and its top
  eigenvectors start from the rows `idx` of K's. Compiled once per (n, d)."""
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  top = _leading_eigenvectors(gram)

  def second_moment(idx):
    g = gram[idx][:, idx]
    return g - g.mean(axis=0) - g.mean(axis=1)[:, None] + g.mean()

  return _fractions(second_moment, lambda idx: top[idx], indices)


@jax.jit
def _pc1_fractions_from_scatter(x, indices):
  """The same for data `x` `(n, d)` with many examples and d < n: the resample's `(d, d)` scatter, its top
  eigenvectors started from the original scatter's."""

  def second_moment(idx):
    xr = x[idx]
    xr = xr - xr.mean(axis=0)
    return jnp.matmul(xr.T, xr, precision=jax.lax.Precision.HIGHEST)

  top = _leading_eigenvectors(jnp.matmul(x.T, x, precision=jax.lax.Precision.HIGHEST))
  return _fractions(second_moment, lambda idx: top, indices)


def pc1_fraction_bootstrap(x, *, num_resamples: int = 200, seed: int = 0) -> Bootstrap:
  """The fraction of variance on the first principal component, `λ₁ / Σλ`, with a bootstrap over examples.

  Args:
    x: `(n, ...)` activations of one layer (flattened per example).
    num_resamples: bootstrap resamples of the n examples (each costs the largest eigenvalue of the smaller of
      the `(n, n)` Gram and the `(d, d)` scatter of the resample).
    seed: RNG seed.

  Returns:
    A `Bootstrap` of scalars.
  """
  x = np.asarray(x, np.float32)
  if x.ndim < 2 or x.shape[0] < 4:
    raise ValueError(f"`x` must be (n, ...) with n ≥ 4 examples, got shape {x.shape}.")
  x = x.reshape(x.shape[0], -1)
  if not np.all(np.isfinite(x)):
    raise ValueError("`x` holds NaN or Inf.")
  if np.all(x == x[:1]):
    raise ValueError("`x` is constant over examples: its PC1 fraction is undefined.")
  if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 10:
    raise ValueError(f"`num_resamples` must be an integer ≥ 10, got {num_resamples!r}.")
  n = x.shape[0]
  centred = jnp.asarray(x - x.mean(axis=0))
  estimate = np.asarray(kernels.first_pc_fraction(centred), np.float64)
  rng = np.random.default_rng(seed)
  indices = jnp.asarray(rng.integers(0, n, size=(num_resamples, n)), jnp.int32)
  if n <= max(x.shape[1], _GRAM_ROUTE_EXAMPLES):
    values = _pc1_fractions_from_gram(centred, indices)
  else:
    values = _pc1_fractions_from_scatter(centred, indices)
  values = np.asarray(values, np.float64)
  return Bootstrap(estimate, np.asarray(values.std(ddof=1)), np.asarray(np.percentile(values, 2.5)),
                   np.asarray(np.percentile(values, 97.5)), num_resamples)
