import inspect
import warnings

import jax
import numpy as np
import pytest

from rsim_jax import kernels
from rsim_jax.kernels import intrinsic_dim
from tests.kernels.test_neighbors import brute_force


def reference_twonn(x, *, discard_fraction=0.1, estimator="fit"):
  """Facco et al. (2017) from float64 brute-force distances, written from the paper (and the convention of
  their reference code: F(μ_(i)) = i/N, fit on the ⌊N(1 − f)⌋ smallest μ, least squares through the origin)."""
  dist, _ = brute_force(x, 2)
  mu = dist[:, 1] / dist[:, 0]
  n = len(mu)
  if estimator == "mle":
    return (n - 1) / np.log(mu).sum()
  m = min(n - 1, int(np.floor(n * (1 - discard_fraction))))
  xs = np.sort(np.log(mu))[:m]
  ys = -np.log(1 - np.arange(1, m + 1) / n)
  return float(np.linalg.lstsq(xs[:, None], ys, rcond=None)[0][0])


def embed(points, ambient, seed):
  """Points of R^k placed in R^ambient by a random isometry, plus an offset."""
  rng = np.random.default_rng(seed)
  basis = np.linalg.qr(rng.standard_normal((ambient, points.shape[1])))[0]
  return (points @ basis.T + rng.uniform(-3, 3, ambient)).astype(np.float32)


@pytest.mark.parametrize("estimator, discard_fraction", [("fit", 0.1), ("fit", 0.0), ("fit", 0.5), ("mle", 0.1)])
def test_matches_float64_reference_estimate(estimator, discard_fraction):
  x = embed(np.random.default_rng(0).standard_normal((600, 4)), 12, seed=1)
  got = kernels.twonn(x, discard_fraction=discard_fraction, estimator=estimator)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, reference_twonn(x, discard_fraction=discard_fraction, estimator=estimator), rtol=1e-5)


# TwoNN assumes a locally uniform density. On an isotropic Gaussian it is biased low as d grows (the density
# changes across the second-neighbour ball): with N = 4,000 the fit gives ≈ 9.9 for d = 10, 14.0 for 15 and
# 17.5 for 20, hence the wider tolerance at d = 20.
@pytest.mark.parametrize("d, rtol", [(2, 0.1), (5, 0.1), (10, 0.1), (15, 0.1), (20, 0.15)])
def test_gaussian_in_a_linear_subspace(d, rtol):
  x = embed(np.random.default_rng(d).standard_normal((4000, d)), 40, seed=d)
  np.testing.assert_allclose(kernels.twonn(x), d, rtol=rtol)


@pytest.mark.parametrize("d", [2, 4])
def test_uniform_in_a_linear_subspace(d):
  x = embed(np.random.default_rng(d).uniform(size=(3000, d)), 30, seed=10 + d)
  np.testing.assert_allclose(kernels.twonn(x), d, rtol=0.1)
  np.testing.assert_allclose(kernels.twonn(x, estimator="mle"), d, rtol=0.1)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_hypersphere(k):
  z = np.random.default_rng(k).standard_normal((3000, k + 1))
  sphere = z / np.linalg.norm(z, axis=1, keepdims=True)  # uniform on S^k ⊂ R^(k+1)
  np.testing.assert_allclose(kernels.twonn(embed(sphere, 30, seed=k)), k, rtol=0.1)


def test_swiss_roll():
  rng = np.random.default_rng(7)
  t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=3000))
  roll = np.stack([t * np.cos(t), 21 * rng.uniform(size=3000), t * np.sin(t)], axis=1)  # scikit-learn's recipe
  np.testing.assert_allclose(kernels.twonn(roll.astype(np.float32)), 2.0, rtol=0.1)


def test_duplicates_dropped_with_a_warning_or_refused():
  rng = np.random.default_rng(8)
  distinct = embed(rng.standard_normal((2000, 3)), 10, seed=8)
  x = np.concatenate([distinct, distinct[:150], distinct[:20]])  # 170 extra copies
  x = x[rng.permutation(len(x))]
  with pytest.warns(kernels.DuplicatePointsWarning, match="dropped 170 duplicated point"):
    got = kernels.twonn(x)
  np.testing.assert_allclose(got, kernels.twonn(distinct), rtol=1e-6)
  np.testing.assert_allclose(got, 3.0, rtol=0.1)
  with pytest.raises(ValueError, match="`x` holds 170 duplicated point"):
    kernels.twonn(x, duplicates="error")
  with pytest.raises(ValueError, match="All 30 points of `x` are identical"):
    kernels.twonn(np.ones((30, 4), np.float32))
  with pytest.raises(ValueError, match="TwoNN needs at least 3"):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", kernels.DuplicatePointsWarning)
      kernels.twonn(np.array([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0]], np.float32))
  # No duplicates: no warning.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    kernels.twonn(distinct)


def test_scaling_protocol():
  x = embed(np.random.default_rng(9).standard_normal((2048, 3)), 10, seed=9)
  out = kernels.twonn_scaling(x, key=jax.random.key(0), num_scales=5)
  np.testing.assert_array_equal(out.num_points, [2048, 1024, 512, 256, 128])
  np.testing.assert_array_equal(out.num_subsets, [1, 2, 4, 8, 16])
  assert out.intrinsic_dim.shape == out.intrinsic_dim_std.shape == out.r2_median.shape == (5,)
  np.testing.assert_allclose(out.intrinsic_dim[0], kernels.twonn(x), rtol=1e-6)
  np.testing.assert_allclose(out.intrinsic_dim, 3.0, rtol=0.1)  # a plateau: no scale dependence here
  assert out.intrinsic_dim_std[0] == 0 and np.all(out.intrinsic_dim_std[1:] > 0)
  assert np.all(np.diff(out.r2_median) > 0)  # fewer points probe larger distances
  # A 2-D square with isotropic noise in 10-D: at the smallest scale (all points) the neighbours are as
  # close as the noise and the ID is high; sparser subsets see the square (≈ 6.3, 5.2, 4.5, 3.5, 2.9 here).
  rng = np.random.default_rng(10)
  square = np.concatenate([rng.uniform(size=(2048, 2)) * 7, np.zeros((2048, 8))], axis=1)
  noisy = (square + 0.05 * rng.standard_normal((2048, 10))).astype(np.float32)
  out = kernels.twonn_scaling(noisy, key=jax.random.key(2), num_scales=5)
  assert out.intrinsic_dim[0] > 4.5 and out.intrinsic_dim[-1] < 3.5
  assert np.all(np.diff(out.intrinsic_dim) < 0)
  # The default number of scales keeps at least 20 points per subset (at most 8 scales).
  assert [intrinsic_dim._auto_num_scales(n) for n in (30, 40, 200, 2048, 10**6)] == [1, 2, 4, 7, 8]


def test_subsampled_protocol():
  x = embed(np.random.default_rng(11).standard_normal((1000, 5)), 16, seed=11)
  out = kernels.twonn_subsampled(x, key=jax.random.key(3), fraction=0.9, repeats=4)
  assert out.num_points == 900 and out.estimates.shape == (4,)
  np.testing.assert_allclose(out.mean, out.estimates.mean())
  np.testing.assert_allclose(out.std, out.estimates.std())
  assert 0 < out.std < 0.5
  np.testing.assert_allclose(out.mean, 5.0, rtol=0.1)
  again = kernels.twonn_subsampled(x, key=jax.random.key(3), fraction=0.9, repeats=4)
  np.testing.assert_array_equal(again.estimates, out.estimates)
  full = kernels.twonn_subsampled(x, key=jax.random.key(3), fraction=1.0, repeats=2)
  np.testing.assert_allclose(full.estimates, kernels.twonn(x), rtol=1e-6)  # every subset is all points


def test_twonn_from_distances_jit_and_vmap():
  stack = np.stack([embed(np.random.default_rng(s).standard_normal((300, 3)), 8, seed=s) for s in range(3)])

  def estimate(points):
    distances, _ = kernels.knn_distances(points, k=2)
    return kernels.twonn_from_distances(distances)

  batched = jax.vmap(estimate)(stack)
  jitted = jax.jit(estimate)
  for i in range(3):
    np.testing.assert_allclose(batched[i], reference_twonn(stack[i]), rtol=1e-5)
    np.testing.assert_allclose(jitted(stack[i]), reference_twonn(stack[i]), rtol=1e-5)


def test_twonn_is_deterministic_and_takes_no_key():
  # TwoNN on all points has nothing random: the same points give the same float, and a PRNG key (which it
  # used to accept and ignore) is refused rather than silently dropped; the random protocols do take one.
  x = embed(np.random.default_rng(13).standard_normal((80, 3)), 6, seed=13)
  assert kernels.twonn(x) == kernels.twonn(x.copy())
  with pytest.raises(TypeError, match="key"):
    kernels.twonn(x, key=jax.random.key(0))
  assert "key" not in inspect.signature(kernels.twonn).parameters
  assert inspect.signature(kernels.twonn_subsampled).parameters["key"].default is inspect.Parameter.empty


def test_errors_name_the_argument():
  x = embed(np.random.default_rng(12).standard_normal((50, 2)), 4, seed=12)
  with pytest.raises(ValueError, match="`x` has 2 points; TwoNN needs at least 3"):
    kernels.twonn(x[:2])
  with pytest.raises(ValueError, match="`discard_fraction`=0.7 discards all"):
    kernels.twonn(x[:3], discard_fraction=0.7)
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.twonn(x[:, 0])
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.twonn(x[None])
  for value in (np.nan, np.inf, -np.inf):
    bad = x.copy()
    bad[1, 1] = value
    with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
      kernels.twonn(bad)
  for f in (-0.1, 1.0, 1.5, "a"):
    with pytest.raises(ValueError, match=r"`discard_fraction` must be .*\[0, 1\)"):
      kernels.twonn(x, discard_fraction=f)
  with pytest.raises(ValueError, match="`estimator` must be one of"):
    kernels.twonn(x, estimator="ml")
  with pytest.raises(ValueError, match="`duplicates` must be one of"):
    kernels.twonn(x, duplicates="keep")
  with pytest.raises(ValueError, match="`num_scales`=6 leaves subsets of 1"):
    kernels.twonn_scaling(x, key=jax.random.key(0), num_scales=6)
  with pytest.raises(ValueError, match="`num_scales` must be a positive integer"):
    kernels.twonn_scaling(x, key=jax.random.key(0), num_scales=0)
  with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
    kernels.twonn_subsampled(x, key=jax.random.key(0), fraction=0.0)
  with pytest.raises(ValueError, match="`fraction`=0.05 of the 50 distinct points"):
    kernels.twonn_subsampled(x, key=jax.random.key(0), fraction=0.05)
  with pytest.raises(ValueError, match="`repeats` must be a positive integer"):
    kernels.twonn_subsampled(x, key=jax.random.key(0), repeats=0)
  with pytest.raises(ValueError, match="`distances` must hold at least 2 neighbours"):
    kernels.twonn_from_distances(np.ones((10, 1)))
