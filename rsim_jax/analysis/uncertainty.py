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


@jax.jit
def _pc1_fractions_of_resamples(x, indices):
  # The same kernel as the study's PC1 fractions (`principal_components.pc1_fractions`), once per resample.
  return jax.lax.map(lambda idx: kernels.first_pc_fraction(x[idx]), indices)


def pc1_fraction_bootstrap(x, *, num_resamples: int = 200, seed: int = 0) -> Bootstrap:
  """The fraction of variance on the first principal component, `λ₁ / Σλ`, with a bootstrap over examples.

  Args:
    x: `(n, ...)` activations of one layer (flattened per example).
    num_resamples: bootstrap resamples of the n examples (each costs an eigendecomposition of the smaller
      of the `(n, n)` Gram and the `(d, d)` scatter).
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
  values = np.asarray(_pc1_fractions_of_resamples(centred, indices), np.float64)
  return Bootstrap(estimate, np.asarray(values.std(ddof=1)), np.asarray(np.percentile(values, 2.5)),
                   np.asarray(np.percentile(values, 97.5)), num_resamples)
