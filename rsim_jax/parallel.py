"""Meshes, shardings and sharded updates of the kernel accumulators.

The kernels (`rsim_jax.kernels`) are single-device pure functions; this module runs them over a `data`
mesh axis with `jax.shard_map`, combining per-device partial statistics with collectives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rsim_jax import kernels
from rsim_jax.kernels import gram as kernels_gram
from rsim_jax.kernels import minibatch as kernels_minibatch

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


# --- Similarity (minibatch CKA) ---


def sharded_minibatch_cka_update(
    state: kernels.MinibatchCKAState,
    xs,
    ys=None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = DATA_AXIS,
    mask: jax.Array | None = None,
    precision=kernels_gram.DEFAULT_PRECISION,
) -> kernels.MinibatchCKAState:
  """`minibatch_cka_update` with the batch split over the mesh axis `axis_name`: one minibatch per device.

  Each device forms the U-centred Grams of its own shard and computes the HSIC₁ values of all layer pairs;
  the values are summed across devices with `psum` (`jax.shard_map`), so an update of a global batch of
  `D·b` examples on D devices equals D sequential `minibatch_cka_update` calls on the shards of b examples.
  Activations may already be sharded (as they come out of a data-parallel model) or be host arrays.

  Args:
    state: a `MinibatchCKAState`, replicated.
    xs: `num_x` arrays `(D·b, ...)` (a dict's values are taken in order).
    ys: optional `num_y` arrays `(D·b, ...)` of a second model.
    mesh: the mesh; None uses the mesh set with `jax.set_mesh`.
    axis_name: mesh axis the examples are split over.
    mask: optional `(D·b,)` bool for padding rows.
    precision: matmul precision of the Gram matrices.

  Returns:
    The updated (replicated) state.
  """
  xs, ys, mask = kernels_minibatch.prepare_batch(xs, ys, mask, state)
  active_mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  if axis_name not in active_mesh.axis_names:
    raise ValueError(
        f"Mesh axis `axis_name`={axis_name!r} not in the mesh axes {active_mesh.axis_names}; pass `mesh=` "
        "or call inside `with jax.set_mesh(mesh):`."
    )
  num_shards = active_mesh.shape[axis_name]
  n = xs[0].shape[0]
  if n % num_shards or n // num_shards < kernels_minibatch.MIN_EXAMPLES:
    raise ValueError(
        f"The batch of {n} examples must split evenly over the {num_shards} devices of axis {axis_name!r} "
        f"with at least {kernels_minibatch.MIN_EXAMPLES} per device (unbiased HSIC); pad with a mask or "
        "change the batch size."
    )
  if mask is None:
    mask = jnp.ones((n,), bool)
  return _sharded_update(state, xs, ys, mask, mesh, axis_name, precision)


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "precision"))
def _sharded_update(state, xs, ys, mask, mesh, axis_name, precision):
  def per_device(xs, ys, mask):
    terms = kernels_minibatch._minibatch_hsic(xs, ys, mask, precision)
    return jax.tree.map(lambda t: jax.lax.psum(t, axis_name), terms)

  spec = P(axis_name)
  # Split host arrays (or arrays sharded some other way) along the example axis; a no-op for activations
  # that already come out of a data-parallel model sharded this way.
  sharding = spec if mesh is None else NamedSharding(mesh, spec)
  xs, ys, mask = jax.reshard((xs, ys, mask), sharding)
  terms = jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(spec, None if ys is None else spec, spec),
      out_specs=P(),
  )(xs, ys, mask)
  return kernels.minibatch_cka_accumulate(state, terms)
