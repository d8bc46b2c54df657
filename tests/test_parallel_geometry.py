"""Sharded geometry kernels on 8 simulated devices equal the single-device kernels."""

import warnings

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from rsim_jax import kernels, parallel
from tests.kernels.test_pca import data


# Every sharded kernel runs on meshes with Explicit axes (JAX's default) and with Auto axes.
AXIS_TYPES = pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])


def points(n, d=6, *, offset=0.0, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, 3)) @ rng.standard_normal((3, d)) + offset).astype(np.float32)


@AXIS_TYPES
@pytest.mark.parametrize("n, offset", [(512, 0.0), (509, 1e4)])  # divides over 8 devices / padded
def test_sharded_knn_equals_single_device(n, offset, axis_type):
  x = points(n, offset=offset)
  x[100] = x[7]  # a duplicate pair
  mesh = parallel.data_mesh(axis_type=axis_type)
  dist, idx = kernels.knn_distances(x, k=4, block_size=128)
  sharded_dist, sharded_idx = parallel.sharded_knn_distances(x, k=4, mesh=mesh, block_size=32)
  assert sharded_dist.shape == sharded_idx.shape == (n, 4)
  np.testing.assert_allclose(sharded_dist, dist, rtol=1e-6)
  np.testing.assert_array_equal(sharded_idx, idx)
  assert np.asarray(sharded_dist)[7, 0] == 0.0 and np.asarray(sharded_idx)[7, 0] == 100
  if n % 8 == 0:
    assert len(sharded_dist.sharding.device_set) == 8  # the result stays split over the devices


@AXIS_TYPES
def test_sharded_knn_with_context_mesh_and_presharded_points(axis_type):
  x = points(256, seed=1)
  mesh = parallel.data_mesh(axis_type=axis_type)
  with jax.set_mesh(mesh):
    on_devices = parallel.shard_batch(x, mesh)
    dist, idx = parallel.sharded_knn_distances(on_devices, k=2)
  ref_dist, ref_idx = kernels.knn_distances(x, k=2)
  np.testing.assert_allclose(dist, ref_dist, rtol=1e-6)
  np.testing.assert_array_equal(idx, ref_idx)


@AXIS_TYPES
@pytest.mark.parametrize("estimator", ["fit", "mle"])
def test_sharded_twonn_equals_single_device(estimator, axis_type):
  x = points(1000, d=8, seed=2)
  x = np.concatenate([x, x[:24]])  # duplicates: dropped (1000 distinct points do not divide over 8 + pad)
  mesh = parallel.data_mesh(axis_type=axis_type)
  with pytest.warns(kernels.DuplicatePointsWarning, match="dropped 24"):
    sharded = parallel.sharded_twonn(x, mesh=mesh, estimator=estimator, block_size=64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", kernels.DuplicatePointsWarning)
    single = kernels.twonn(x, estimator=estimator)
  np.testing.assert_allclose(sharded, single, rtol=1e-6)
  np.testing.assert_allclose(sharded, 3.0, rtol=0.15)
  with pytest.raises(ValueError, match="duplicated point"):
    parallel.sharded_twonn(x, mesh=mesh, duplicates="error")


@AXIS_TYPES
def test_sharded_pca_update_equals_single_device(axis_type):
  x = data(512, 12, offset=1e4, seed=3)
  mesh = parallel.data_mesh(axis_type=axis_type)
  sharded = kernels.pca_init(12)
  single = kernels.pca_init(12)
  for start in (0, 256):  # two global batches of 8 devices x 32 examples
    sharded = parallel.sharded_pca_update(sharded, x[start : start + 256], mesh=mesh)
    single = kernels.pca_update(single, x[start : start + 256])
  assert int(sharded.count) == 512
  value = kernels.compensated.value
  np.testing.assert_allclose(value(sharded.mean), value(single.mean), rtol=1e-7)
  np.testing.assert_allclose(value(sharded.scatter), value(single.scatter), rtol=1e-5, atol=1e-5 * 512)
  a, b = kernels.pca_result(sharded, k=5), kernels.pca_result(single, k=5)
  np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-5)
  np.testing.assert_allclose(np.abs(np.sum(a.components * b.components, 0)), 1.0, atol=1e-5)
  xc = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
  np.testing.assert_allclose(a.eigenvalues, np.linalg.eigvalsh(xc.T @ xc / 511)[::-1][:5], rtol=2e-5)


@AXIS_TYPES
def test_sharded_pca_update_mask_drops_padding_and_empty_devices(axis_type):
  x = data(64, 5, offset=1e4, seed=4)
  mesh = parallel.data_mesh(axis_type=axis_type)
  mask = np.ones(64, bool)
  mask[40:] = False  # devices 5-7 (8 rows each) hold only padding
  noisy = x.copy()
  noisy[40:] = 1e6
  # Already split over the devices (as activations of a data-parallel model are).
  state = parallel.sharded_pca_update(kernels.pca_init(5), parallel.shard_batch(noisy, mesh), mesh=mesh, mask=mask)
  single = kernels.pca_update(kernels.pca_init(5), x[:40])
  assert int(state.count) == 40
  got, want = kernels.pca_result(state).eigenvalues, kernels.pca_result(single).eigenvalues
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * want[0])  # float32 eigh: ~eps·λ₁
  # A batch with no valid row anywhere leaves the state unchanged.
  same = parallel.sharded_pca_update(state, noisy, mesh=mesh, mask=np.zeros(64, bool))
  for got, want in zip(jax.tree.leaves(same), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_sharded_geometry_errors():
  mesh = parallel.data_mesh()
  x = points(60)
  with pytest.raises(ValueError, match="axis_name"):
    parallel.sharded_knn_distances(x, k=2, mesh=mesh, axis_name="model")
  with pytest.raises(ValueError, match="`k`=60 must be smaller"):
    parallel.sharded_knn_distances(x, k=60, mesh=mesh)
  with pytest.raises(ValueError, match="split evenly over the 8 devices"):
    parallel.sharded_pca_update(kernels.pca_init(6), x, mesh=mesh)
  with pytest.raises(ValueError, match="`x` has 6 features"):
    parallel.sharded_pca_update(kernels.pca_init(5), x[:56], mesh=mesh)
  bad = x.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    parallel.sharded_twonn(bad, mesh=mesh)
