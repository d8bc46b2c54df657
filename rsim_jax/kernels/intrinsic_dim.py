"""Intrinsic dimension by TwoNN (Facco, d'Errico, Rodriguez & Laio 2017, Sci. Rep. 7:12140).

For each point, `μ = r₂ / r₁`, the ratio of its second- to first-nearest-neighbour distance. If the density is
roughly constant on the scale of the second neighbour, μ follows a Pareto law `F(μ) = 1 − μ^(−d)` whatever
the density, so the intrinsic dimension d is read off the μ of all points:

  - "fit" (Facco et al.): sort μ, take the empirical `F(μ_(i)) = i/N`, discard the largest
    `discard_fraction` of the μ (the tail is the most affected by curvature and density changes) and fit
    `−log(1 − F) = d · log μ` by least squares through the origin: `d = Σ xᵢyᵢ / Σ xᵢ²`.
  - "mle": the maximum-likelihood estimate of the Pareto exponent with the `(N − 1)` bias correction,
    `d = (N − 1) / Σ log μᵢ` over all N points (`discard_fraction` does not apply).

Duplicated points (`r₁ = 0`, so `μ = ∞`) are the usual failure of TwoNN implementations on real activations
(ReLU layers map many inputs to the same point). `duplicates="drop"` keeps one copy of each distinct point
and warns with the number dropped; `"error"` raises.

Protocols over subsets:
  - `twonn_scaling`: the decimation of Facco et al. — the same estimate on disjoint random subsets of
    N, N/2, N/4, … points, averaged per scale, with the median r₂ as the length scale probed. A plateau is the
    ID; a drift with scale shows noise (small scales) or curvature (large scales).
  - `twonn_subsampled`: mean and standard deviation over random subsets of a fraction of the points, the
    protocol of Ansuini, Laio, Macke & Zoccolan (2019, NeurIPS, "Intrinsic dimension of data representations
    in deep neural networks") for per-layer ID.

`twonn*` are host-level functions (they drop duplicates, a data-dependent shape); inside `jit`/`vmap` use
`knn_distances(x, k=2)` and `twonn_from_distances`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax.kernels import _checks
from rsim_jax.kernels import _sharding
from rsim_jax.kernels import neighbors

ESTIMATORS = ("fit", "mle")
DUPLICATES = ("drop", "error")
MIN_POINTS = 3  # two neighbours per point


class DuplicatePointsWarning(UserWarning):
  """Issued when duplicated points are dropped before a TwoNN estimate."""


class TwoNNScaling(NamedTuple):
  """TwoNN estimates across scales (decimation protocol of Facco et al. 2017). Arrays of length num_scales,
  from all points (scale 0) to the smallest subsets.

  Attributes:
    num_points: `(S,)` points per subset (N, N/2, N/4, … of the distinct points).
    num_subsets: `(S,)` disjoint random subsets averaged at each scale (1, 2, 4, …).
    intrinsic_dim: `(S,)` mean TwoNN estimate over the subsets.
    intrinsic_dim_std: `(S,)` standard deviation over the subsets (0 at scale 0).
    r2_median: `(S,)` median second-neighbour distance: the length scale each estimate probes.
  """

  num_points: np.ndarray
  num_subsets: np.ndarray
  intrinsic_dim: np.ndarray
  intrinsic_dim_std: np.ndarray
  r2_median: np.ndarray


class TwoNNSubsampled(NamedTuple):
  """TwoNN over random subsets (Ansuini et al. 2019).

  Attributes:
    mean: mean estimate over the repeats.
    std: standard deviation over the repeats (divisor `repeats`).
    estimates: `(repeats,)` the individual estimates.
    num_points: points per subset.
  """

  mean: float
  std: float
  estimates: np.ndarray
  num_points: int


# --- Argument checks ---


def check_discard_fraction(discard_fraction) -> float:
  try:
    f = float(discard_fraction)
  except (TypeError, ValueError):
    raise ValueError(f"`discard_fraction` must be a number in [0, 1), got {discard_fraction!r}.") from None
  if not 0.0 <= f < 1.0:
    raise ValueError(f"`discard_fraction` must be in [0, 1), got {discard_fraction!r}.")
  return f


def check_choice(value, choices, name: str) -> str:
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
  return value


def num_fitted(n: int, discard_fraction: float) -> int:
  """Points in the "fit" regression: `⌊N(1 − discard_fraction)⌋`, at most `N − 1` (F = 1 has no log)."""
  return int(min(n - 1, math.floor(n * (1.0 - discard_fraction) + 1e-9)))


def check_enough_points(n: int, discard_fraction: float, estimator: str, name: str) -> None:
  if n < MIN_POINTS:
    raise ValueError(f"`{name}` has {n} points; TwoNN needs at least {MIN_POINTS} (two neighbours each).")
  if estimator == "fit" and num_fitted(n, discard_fraction) < 1:
    raise ValueError(
        f"`{name}` has {n} points and `discard_fraction`={discard_fraction} discards all of them; use more "
        "points or a smaller `discard_fraction`."
    )


def validated_points(x, name: str = "x") -> jax.Array:
  x = _checks.as_float_array(x, name)
  _checks.check_2d(x, name)
  _checks.check_finite(x, name)
  return x


# --- The estimate from neighbour distances (jit-able) ---


def twonn_from_distances(
    distances: jax.Array, *, discard_fraction: float = 0.1, estimator: str = "fit"
) -> jax.Array:
  """TwoNN estimate from each point's first two neighbour distances (jit- and vmap-able).

  Args:
    distances: `(N, ≥2)` sorted neighbour distances, e.g. `knn_distances(x, k=2)[0]`; `r₁ > 0` is assumed
      (a zero gives `μ = ∞`: drop duplicates first, as `twonn` does).
    discard_fraction: fraction of the largest μ left out of the "fit", in [0, 1).
    estimator: "fit" (least squares of `−log(1 − F)` on `log μ` through the origin) or "mle"
      (`(N − 1)/Σ log μ`). See the module docstring.

  Returns:
    `()` float estimate of the intrinsic dimension.
  """
  distances = _checks.as_float_array(distances, "distances")
  _checks.check_rank(distances, 2, "distances", hint="Pass the (N, k) output of `knn_distances`.")
  if distances.shape[1] < 2:
    raise ValueError(f"`distances` must hold at least 2 neighbours per point, got shape {tuple(distances.shape)}.")
  f = check_discard_fraction(discard_fraction)
  check_choice(estimator, ESTIMATORS, "estimator")
  check_enough_points(distances.shape[0], f, estimator, "distances")
  return estimate_from_distances(distances[:, 0], distances[:, 1], f, estimator)


@functools.partial(jax.jit, static_argnums=(2, 3))
def estimate_from_distances(r1, r2, discard_fraction, estimator):
  n = r1.shape[0]
  log_mu = jnp.log(r2) - jnp.log(r1)
  if estimator == "mle":
    return (n - 1) / jnp.sum(log_mu)
  m = num_fitted(n, discard_fraction)
  # The empirical CDF ranks all N ratios: the sort needs them on one device (N values, gathered if split).
  x = jnp.sort(_sharding.replicated(log_mu))[:m]
  y = -jnp.log1p(-jnp.arange(1, m + 1, dtype=x.dtype) / n)  # −log(1 − i/N)
  return jnp.sum(x * y) / jnp.sum(x * x)


# --- Duplicates ---


def drop_duplicate_points(x: jax.Array, distances: jax.Array, duplicates: str, name: str, stacklevel: int = 4):
  """Returns `(x, distances)` with duplicated points dropped (one copy kept), or raises."""
  if not bool(jnp.any(distances[:, 0] == 0)):
    return x, distances
  host = np.asarray(x) + 0.0  # −0.0 → +0.0, so np.unique compares values as the distances do
  _, first = np.unique(host, axis=0, return_index=True)
  keep = np.sort(first)
  n, n_distinct = x.shape[0], keep.shape[0]
  if n_distinct == 1:
    raise ValueError(f"All {n} points of `{name}` are identical: the intrinsic dimension is undefined.")
  if duplicates == "error":
    raise ValueError(
        f"`{name}` holds {n - n_distinct} duplicated point(s) ({n_distinct} distinct of {n}); TwoNN needs "
        "r₁ > 0. Pass duplicates='drop' to keep one copy of each point."
    )
  warnings.warn(
      f"TwoNN: dropped {n - n_distinct} duplicated point(s) of `{name}` (kept one copy of each; "
      f"{n_distinct} distinct points remain).",
      DuplicatePointsWarning,
      stacklevel=stacklevel,  # the caller of the public function
  )
  return jnp.asarray(host[keep], x.dtype), None


def distinct_points(x: jax.Array, *, duplicates: str = "drop", block_size: int | None = None, name: str = "x"):
  """`(x_distinct, distances)`: x with duplicates dropped (or an error) and its `(N, 2)` neighbour distances."""
  check_choice(duplicates, DUPLICATES, "duplicates")
  distances, _ = neighbors.knn_distances(x, k=2, block_size=block_size)
  x, fresh = drop_duplicate_points(x, distances, duplicates, name)
  if fresh is None:
    check_enough_points(x.shape[0], 0.0, "mle", name)
    distances, _ = neighbors.knn_distances(x, k=2, block_size=block_size)
    if bool(jnp.any(distances[:, 0] == 0)):
      raise ValueError(
          f"`{name}` holds distinct points closer than float resolution (r₁ = 0); rescale the data."
      )
  return x, distances


# --- Host-level estimators ---


def twonn(
    x: jax.Array,
    *,
    discard_fraction: float = 0.1,
    estimator: str = "fit",
    duplicates: str = "drop",
    block_size: int | None = None,
) -> float:
  """Intrinsic dimension of the points `x` by TwoNN (Facco et al. 2017).

  Exact first and second neighbour distances (`knn_distances`), `μ = r₂/r₁`, then the "fit" or "mle"
  estimate of the module docstring. Cost: `N²·d/2` multiply-adds (blocked, never `(N, N)` in memory).
  Deterministic, so it takes no PRNG key (the random protocols `twonn_scaling` and `twonn_subsampled` do).

  Args:
    x: `(N, d)` points.
    discard_fraction: fraction of the largest μ left out of the "fit", in [0, 1) (Facco et al. use 0.1).
    estimator: "fit" or "mle".
    duplicates: "drop" — keep one copy of each duplicated point, with a `DuplicatePointsWarning` giving the
      number dropped; "error" — raise ValueError.
    block_size: tile size of the neighbour search (see `knn_distances`).

  Returns:
    The estimate, a Python float.

  Raises:
    ValueError: `x` not 2-D or with NaN/Inf; fewer than 3 (distinct) points, or none left for the fit; all
      points identical; duplicates with `duplicates="error"`; `discard_fraction` outside [0, 1); unknown
      `estimator`/`duplicates`.
  """
  x = validated_points(x)
  f = check_discard_fraction(discard_fraction)
  check_choice(estimator, ESTIMATORS, "estimator")
  check_choice(duplicates, DUPLICATES, "duplicates")
  check_enough_points(x.shape[0], f, estimator, "x")
  x, distances = distinct_points(x, duplicates=duplicates, block_size=block_size)
  check_enough_points(x.shape[0], f, estimator, "x")
  return float(estimate_from_distances(distances[:, 0], distances[:, 1], f, estimator))


def _auto_num_scales(n: int) -> int:
  """As many halvings as keep at least 20 points per subset, at most 8 scales."""
  s = 1
  while s < 8 and n >> s >= 20:
    s += 1
  return s


def twonn_scaling(
    x: jax.Array,
    *,
    key: jax.Array,
    num_scales: int | None = None,
    discard_fraction: float = 0.1,
    estimator: str = "fit",
    duplicates: str = "drop",
    block_size: int | None = None,
) -> TwoNNScaling:
  """TwoNN as a function of scale: the decimation protocol of Facco et al. (2017, Fig. 2).

  The distinct points are randomly permuted; at scale s they are split into `2^s` disjoint subsets of
  `⌊N/2^s⌋` points, TwoNN is computed on each (a `lax.map` over the subsets) and averaged. The work halves
  from one scale to the next, so all scales together cost about twice one `twonn`. Fewer points means
  larger neighbour distances, so each scale probes a larger length, reported as the median r₂.

  Args:
    x: `(N, d)` points.
    key: PRNG key for the permutation.
    num_scales: number of scales S (default: as many halvings as keep ≥ 20 points per subset, at most 8).
      Needs `N/2^(S−1) ≥ 3` and a non-empty fit at the smallest scale.
    discard_fraction, estimator, duplicates, block_size: as in `twonn` (duplicates are handled once, on all
      points).

  Returns:
    A `TwoNNScaling` of NumPy arrays, scale 0 (all points) first.
  """
  x = validated_points(x)
  # Random subsets draw from all the points (one gather, then every subset on every device), so points
  # split over devices are gathered first.
  x = _sharding.replicated(x)
  f = check_discard_fraction(discard_fraction)
  check_choice(estimator, ESTIMATORS, "estimator")
  check_enough_points(x.shape[0], f, estimator, "x")
  x, distances = distinct_points(
      x, duplicates=check_choice(duplicates, DUPLICATES, "duplicates"), block_size=block_size
  )
  n = x.shape[0]
  if num_scales is None:
    num_scales = _auto_num_scales(n)
  if isinstance(num_scales, bool) or not isinstance(num_scales, (int, np.integer)) or num_scales < 1:
    raise ValueError(f"`num_scales` must be a positive integer, got {num_scales!r}.")
  smallest = n >> (int(num_scales) - 1)
  if smallest < MIN_POINTS or (estimator == "fit" and num_fitted(smallest, f) < 1):
    raise ValueError(
        f"`num_scales`={num_scales} leaves subsets of {smallest} of the {n} distinct points; TwoNN needs at "
        f"least {MIN_POINTS} (and a non-empty fit). Use fewer scales or more points."
    )
  order = jax.random.permutation(key, n)
  rows = dict(num_points=[], num_subsets=[], intrinsic_dim=[], intrinsic_dim_std=[], r2_median=[])
  for s in range(int(num_scales)):
    parts, m = 1 << s, n >> s
    if s == 0:  # all points: the distances are already there
      estimates, r2 = estimate_from_distances(distances[:, 0], distances[:, 1], f, estimator)[None], distances[:, 1]
    else:
      subsets = x[order[: parts * m]].reshape(parts, m, x.shape[1])
      estimates, r2 = _subset_estimates(subsets, f, estimator, neighbors.check_block_size(block_size))
    estimates = np.asarray(estimates, np.float64)
    rows["num_points"].append(m)
    rows["num_subsets"].append(parts)
    rows["intrinsic_dim"].append(estimates.mean())
    rows["intrinsic_dim_std"].append(estimates.std())
    rows["r2_median"].append(float(np.median(np.asarray(r2))))
  return TwoNNScaling(**{name: np.asarray(v) for name, v in rows.items()})


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _subset_estimates(subsets, discard_fraction, estimator, block_size):
  """TwoNN of each of the `(P, m, d)` subsets and their r₂ distances `(P, m)`, one subset after another."""
  m = subsets.shape[1]
  c = neighbors.default_num_candidates(m, 2)
  block = neighbors.tile_size(m, block_size, c)

  def one(points):
    distances, _ = neighbors.knn_search(points, k=2, num_candidates=c, block=block)
    return estimate_from_distances(distances[:, 0], distances[:, 1], discard_fraction, estimator), distances[:, 1]

  return jax.lax.map(one, subsets)


def twonn_subsampled(
    x: jax.Array,
    *,
    key: jax.Array,
    fraction: float = 0.9,
    repeats: int = 5,
    discard_fraction: float = 0.1,
    estimator: str = "fit",
    duplicates: str = "drop",
    block_size: int | None = None,
) -> TwoNNSubsampled:
  """Mean and standard deviation of TwoNN over random subsets (Ansuini et al. 2019, per-layer ID).

  Each repeat draws `⌊fraction·N⌋` of the distinct points without replacement and estimates TwoNN on them;
  the repeats run one after another inside one compiled function (`lax.map`).

  Args:
    x: `(N, d)` points.
    key: PRNG key for the subsets.
    fraction: fraction of the points in each subset, in (0, 1].
    repeats: number of subsets (≥ 1).
    discard_fraction, estimator, duplicates, block_size: as in `twonn`.

  Returns:
    A `TwoNNSubsampled`.
  """
  x = validated_points(x)
  # Random subsets draw from all the points (one gather, then every subset on every device), so points
  # split over devices are gathered first.
  x = _sharding.replicated(x)
  f = check_discard_fraction(discard_fraction)
  check_choice(estimator, ESTIMATORS, "estimator")
  try:
    fraction = float(fraction)
  except (TypeError, ValueError):
    raise ValueError(f"`fraction` must be a number in (0, 1], got {fraction!r}.") from None
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
  if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
    raise ValueError(f"`repeats` must be a positive integer, got {repeats!r}.")
  check_enough_points(x.shape[0], f, estimator, "x")
  x, _ = distinct_points(x, duplicates=check_choice(duplicates, DUPLICATES, "duplicates"), block_size=block_size)
  n = x.shape[0]
  m = int(math.floor(fraction * n + 1e-9))
  if m < MIN_POINTS or (estimator == "fit" and num_fitted(m, f) < 1):
    raise ValueError(
        f"`fraction`={fraction} of the {n} distinct points of `x` leaves {m} per subset; TwoNN needs at least "
        f"{MIN_POINTS} (and a non-empty fit)."
    )
  keys = jax.random.split(key, int(repeats))
  estimates = np.asarray(
      _subsampled(x, keys, m, f, estimator, neighbors.check_block_size(block_size)), np.float64
  )
  return TwoNNSubsampled(float(estimates.mean()), float(estimates.std()), estimates, m)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _subsampled(x, keys, m, discard_fraction, estimator, block_size):
  n = x.shape[0]
  c = neighbors.default_num_candidates(m, 2)
  block = neighbors.tile_size(m, block_size, c)

  def one(key):
    points = x[jax.random.permutation(key, n)[:m]]
    distances, _ = neighbors.knn_search(points, k=2, num_candidates=c, block=block)
    return estimate_from_distances(distances[:, 0], distances[:, 1], discard_fraction, estimator)

  return jax.lax.map(one, keys)
