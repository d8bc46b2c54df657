import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels
from rsim_jax.kernels import neighbors


def brute_force(x, k):
  """float64 NumPy reference: all pairwise distances of the given (float32) points, self excluded by index."""
  x = np.asarray(x, np.float64)
  d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  order = np.argsort(d, axis=1, kind="stable")[:, :k]  # ties by index, like the kernel
  return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize(
    "n, d, k, block_size",
    [
        (300, 7, 3, None),  # one tile
        (700, 20, 5, 128),  # several tiles, n not a multiple of the tile; two-stage selection
        (400, 3, 40, 64),  # many neighbours: plain top-k selection
        (50, 600, 1, 16),  # wide points, tiny tiles
    ],
)
def test_matches_float64_brute_force(n, d, k, block_size):
  rng = np.random.default_rng(n + d)
  x = (rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)).astype(np.float32)
  dist, idx = kernels.knn_distances(x, k=k, block_size=block_size)
  ref_dist, ref_idx = brute_force(x, k)
  assert dist.shape == idx.shape == (n, k) and idx.dtype == jnp.int32
  np.testing.assert_allclose(dist, ref_dist, rtol=2e-6)
  np.testing.assert_array_equal(idx, ref_idx)


def test_large_offset_and_tiny_scale_stay_exact():
  rng = np.random.default_rng(1)
  # Offset by 1e4: the squared norms are 1e9 and their float32 cancellation would swamp unit distances.
  x = (rng.standard_normal((500, 6)) + 1e4).astype(np.float32)
  dist, idx = kernels.knn_distances(x, k=4, block_size=128)
  ref_dist, ref_idx = brute_force(x, 4)
  np.testing.assert_allclose(dist, ref_dist, rtol=2e-6)
  np.testing.assert_array_equal(idx, ref_idx)
  # Distances of 1e-22: their squares underflow float32; the scaled recomputation does not.
  tiny = (rng.standard_normal((200, 5)) * 1e-22).astype(np.float32)
  dist, idx = kernels.knn_distances(tiny, k=2)
  ref_dist, ref_idx = brute_force(tiny, 2)
  assert np.all(np.asarray(dist) > 0)
  np.testing.assert_allclose(dist, ref_dist, rtol=2e-6)
  np.testing.assert_array_equal(idx, ref_idx)


def test_duplicates_are_neighbours_at_distance_zero():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((400, 10)).astype(np.float32) + 50.0
  x[10] = x[3]
  x[200] = x[3]  # three copies
  x[399] = x[0]
  dist, idx = kernels.knn_distances(x, k=3, block_size=128)
  dist, idx = np.asarray(dist), np.asarray(idx)
  np.testing.assert_array_equal(dist[3, :2], 0.0)
  assert set(idx[3, :2]) == {10, 200} and set(idx[10, :2]) == {3, 200} and set(idx[200, :2]) == {3, 10}
  assert dist[3, 2] > 0
  assert (dist[0, 0], idx[0, 0], dist[399, 0], idx[399, 0]) == (0.0, 399, 0.0, 0)
  assert np.all(idx != np.arange(400)[:, None])  # never itself
  # Distinct points are never at distance zero (no false zeros from cancellation).
  others = np.setdiff1d(np.arange(400), [0, 3, 10, 200, 399])
  assert np.all(dist[others] > 0)
  ref_dist, _ = brute_force(x, 3)
  np.testing.assert_allclose(dist, ref_dist, rtol=2e-6)


def test_jit_and_vmap():
  rng = np.random.default_rng(3)
  stack = rng.standard_normal((3, 120, 4)).astype(np.float32)
  jitted = jax.jit(lambda a: kernels.knn_distances(a, k=2, block_size=64))
  batched = jax.vmap(lambda a: kernels.knn_distances(a, k=2, block_size=64))(stack)
  for i in range(3):
    ref_dist, ref_idx = brute_force(stack[i], 2)
    for dist, idx in (jitted(stack[i]), (batched[0][i], batched[1][i])):
      np.testing.assert_allclose(dist, ref_dist, rtol=2e-6)
      np.testing.assert_array_equal(idx, ref_idx)


def test_float64_under_x64():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((150, 5))
  with jax.enable_x64(True):
    dist, idx = kernels.knn_distances(x, k=3)
    assert dist.dtype == jnp.float64
  ref_dist, ref_idx = brute_force(x, 3)
  np.testing.assert_allclose(dist, ref_dist, rtol=1e-12)
  np.testing.assert_array_equal(idx, ref_idx)


def test_grouped_candidate_lists_hold_the_smallest_entries():
  rng = np.random.default_rng(5)
  scores = rng.standard_normal((256, 512)).astype(np.float32)
  scores[0, :40] = -10.0  # many small entries in the same groups
  ref = np.sort(scores, axis=1)[:, :6]
  values, positions = neighbors.smallest(jnp.asarray(scores), 6)
  np.testing.assert_array_equal(values, ref)
  np.testing.assert_array_equal(np.take_along_axis(scores, np.asarray(positions), 1), ref)
  for axis, lines in ((1, scores), (0, scores.T)):
    values, positions = neighbors.members(jnp.asarray(scores), 6, axis=axis)
    assert values.shape == (len(lines), 6 * 16)
    np.testing.assert_array_equal(np.take_along_axis(lines, np.asarray(positions), 1), values)
    np.testing.assert_array_equal(np.sort(np.asarray(values), axis=1)[:, :6], np.sort(lines, axis=1)[:, :6])


def test_errors_name_the_argument():
  x = np.random.default_rng(6).standard_normal((10, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="`k`=10 must be smaller than the number of points n=10"):
    kernels.knn_distances(x, k=10)
  with pytest.raises(ValueError, match="`k` must be at least 1"):
    kernels.knn_distances(x, k=0)
  with pytest.raises(ValueError, match="`k` must be a positive integer"):
    kernels.knn_distances(x, k=2.5)
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.knn_distances(x[None], k=2)
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.knn_distances(x[:, 0], k=2)
  bad = x.copy()
  bad[2, 1] = np.nan
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    kernels.knn_distances(bad, k=2)
  bad[2, 1] = np.inf
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    kernels.knn_distances(bad, k=2)
  with pytest.raises(ValueError, match="`block_size`"):
    kernels.knn_distances(x, k=2, block_size=0)
  with pytest.raises(ValueError, match="`num_candidates`=1 must be at least `k`=2"):
    kernels.knn_distances(x, k=2, num_candidates=1)
