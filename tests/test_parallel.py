import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from rsim_jax import kernels, parallel
from tests.kernels.test_minibatch import _batches, _layers


# Every sharded update runs on meshes with Explicit axes (JAX's default) and with Auto axes.
AXIS_TYPES = pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])


def test_eight_devices_are_simulated():
  assert jax.device_count() == 8
  assert parallel.data_mesh().axis_types == (AxisType.Explicit,)
  assert parallel.data_mesh(4, axis_type=AxisType.Auto).axis_types == (AxisType.Auto,)


@AXIS_TYPES
@pytest.mark.parametrize("two_models", [False, True])
def test_sharded_update_equals_sequential_updates(two_models, axis_type):
  rng = np.random.default_rng(0)
  xs = _layers(rng, 256, offset=1e4)
  ys = _layers(np.random.default_rng(1), 256, dims=(12, 40)) if two_models else None
  mesh = parallel.data_mesh(axis_type=axis_type)
  num_y = len(ys) if two_models else None
  sharded = kernels.minibatch_cka_init(len(xs), num_y)
  sequential = kernels.minibatch_cka_init(len(xs), num_y)
  for start in (0, 128):  # two global batches of 8 devices x 16 examples
    gx = [a[start : start + 128] for a in xs]
    gy = None if ys is None else [a[start : start + 128] for a in ys]
    sharded = parallel.sharded_minibatch_cka_update(sharded, gx, gy, mesh=mesh)
    for i, bx in enumerate(_batches(gx, 16)):
      by = None if gy is None else [a[i * 16 : (i + 1) * 16] for a in gy]
      sequential = kernels.minibatch_cka_update(sequential, bx, by)
  assert int(sharded.num_batches) == int(sequential.num_batches) == 16
  np.testing.assert_allclose(
      kernels.minibatch_cka_result(sharded), kernels.minibatch_cka_result(sequential), rtol=1e-6, atol=1e-7
  )


@AXIS_TYPES
def test_sharded_update_with_context_mesh_and_presharded_inputs(axis_type):
  rng = np.random.default_rng(2)
  xs = _layers(rng, 64)
  mesh = parallel.data_mesh(axis_type=axis_type)
  with jax.set_mesh(mesh):
    on_devices = parallel.shard_batch(xs, mesh)
    assert len(on_devices[0].sharding.device_set) == 8
    state = parallel.sharded_minibatch_cka_update(kernels.minibatch_cka_init(4), on_devices)
  sequential = kernels.minibatch_cka_init(4)
  for b in _batches(xs, 8):
    sequential = kernels.minibatch_cka_update(sequential, b)
  np.testing.assert_allclose(
      kernels.minibatch_cka_result(state), kernels.minibatch_cka_result(sequential), rtol=1e-6, atol=1e-7
  )


@AXIS_TYPES
def test_sharded_mask_drops_padding_rows(axis_type):
  rng = np.random.default_rng(3)
  xs = _layers(rng, 64)
  mesh = parallel.data_mesh(4, axis_type=axis_type)
  mask = np.ones(64, bool)
  mask[56:] = False  # the last device's shard of 16 keeps 8 valid rows
  noisy = [a.copy() for a in xs]
  for a in noisy:
    a[56:] = 1e3
  state = parallel.sharded_minibatch_cka_update(kernels.minibatch_cka_init(4), noisy, mesh=mesh, mask=mask)
  sequential = kernels.minibatch_cka_init(4)
  for start, stop in ((0, 16), (16, 32), (32, 48), (48, 56)):
    sequential = kernels.minibatch_cka_update(sequential, [a[start:stop] for a in xs])
  np.testing.assert_allclose(
      kernels.minibatch_cka_result(state), kernels.minibatch_cka_result(sequential), rtol=1e-6, atol=1e-7
  )


def test_sharded_errors():
  xs = _layers(np.random.default_rng(4), 24)
  mesh = parallel.data_mesh()
  with pytest.raises(ValueError, match="split evenly"):
    parallel.sharded_minibatch_cka_update(kernels.minibatch_cka_init(4), xs, mesh=mesh)
  with pytest.raises(ValueError, match="axis_name"):
    parallel.sharded_minibatch_cka_update(kernels.minibatch_cka_init(4), xs, mesh=mesh, axis_name="model")
  with pytest.raises(ValueError, match="does not divide over 8 devices"):
    parallel.shard_batch([a[:20] for a in xs], mesh)
  with pytest.raises(ValueError, match="num_devices"):
    parallel.data_mesh(9)
