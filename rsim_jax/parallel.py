"""Meshes, shardings and sharded updates of the kernel accumulators.

The kernels (`rsim_jax.kernels`) are single-device pure functions; this module runs them over a `data`
mesh axis with `jax.shard_map`, combining per-device partial statistics with collectives.
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None, *, axis_name: str = DATA_AXIS) -> jax.sharding.Mesh:
  """A 1-D mesh over `num_devices` devices (all by default) with one axis, `axis_name`."""
  n = jax.device_count() if num_devices is None else int(num_devices)
  if n < 1 or n > jax.device_count():
    raise ValueError(f"`num_devices` must be in [1, {jax.device_count()}], got {num_devices}.")
  return jax.make_mesh((n,), (axis_name,), devices=jax.devices()[:n])


def batch_sharding(mesh: jax.sharding.Mesh, *, axis_name: str = DATA_AXIS) -> NamedSharding:
  """Sharding that splits the leading (example) axis over `axis_name` and replicates the rest."""
  return NamedSharding(mesh, P(axis_name))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(tree, mesh: jax.sharding.Mesh, *, axis_name: str = DATA_AXIS):
  """Places every array of `tree` on `mesh`, split along its leading axis (which must divide evenly)."""
  size = mesh.shape[axis_name]

  def put(x):
    if x.shape[0] % size:
      raise ValueError(
          f"Leading dimension {x.shape[0]} does not divide over {size} devices of mesh axis "
          f"'{axis_name}'; pad the batch (and pass a mask) or choose a batch size divisible by {size}."
      )
    return jax.device_put(x, batch_sharding(mesh, axis_name=axis_name))

  return jax.tree.map(put, tree)
