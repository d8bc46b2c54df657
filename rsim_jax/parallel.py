"""Meshes, shardings and sharded updates of the kernel accumulators.

The kernels (`rsim_jax.kernels`) are single-device pure functions; this module runs them over a `data`
mesh axis with `jax.shard_map`, combining per-device partial statistics with collectives.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from rsim_jax import kernels
from rsim_jax.kernels import gram as kernels_gram
from rsim_jax.kernels import minibatch as kernels_minibatch

DATA_AXIS = "data"


def data_mesh(
    num_devices: int | None = None, *, axis_name: str = DATA_AXIS, axis_type: AxisType = AxisType.Explicit
) -> jax.sharding.Mesh:
  """A 1-D mesh over `num_devices` devices (all by default) with one axis, `axis_name`.

  `axis_type`: Explicit (JAX's default: shardings are part of array types) or Auto (XLA propagates them).
  The kernels and the sharded updates below accept activations split over either.
  """
  n = jax.device_count() if num_devices is None else int(num_devices)
  if n < 1 or n > jax.device_count():
    raise ValueError(f"`num_devices` must be in [1, {jax.device_count()}], got {num_devices}.")
  return jax.make_mesh((n,), (axis_name,), devices=jax.devices()[:n], axis_types=(axis_type,))


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


def lay_out(tree, spec: P, mesh: jax.sharding.Mesh | None, axis_name: str):
  """Lays every array of `tree` out as `spec` on `mesh` (None: the mesh of `jax.set_mesh`), inside `jit`.

  On an Explicit axis this is `jax.reshard` (part of the type; a no-op for activations already split this
  way, a local slice for host arrays). `reshard` takes only Explicit axes, so on an Auto axis it is a sharding
  constraint, which XLA honours the same way.
  """
  active_mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  sharding = spec if mesh is None else NamedSharding(mesh, spec)
  if active_mesh.axis_types[active_mesh.axis_names.index(axis_name)] == AxisType.Explicit:
    return jax.reshard(tree, sharding)
  return jax.lax.with_sharding_constraint(tree, sharding)


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
def sharded_minibatch_hsic(xs, ys, mask, *, mesh: jax.sharding.Mesh | None = None, axis_name: str = DATA_AXIS,
                           precision=kernels_gram.DEFAULT_PRECISION) -> kernels.MinibatchHSIC:
  """The HSIC₁ terms of one global batch split over `axis_name`, one minibatch per device, summed with `psum`.

  The building block of `sharded_minibatch_cka_update` for code that runs inside its own jitted step (the
  streaming API): no host-side checks, so the caller validates shapes (`kernels.minibatch.prepare_batch`)
  and that the batch divides over the devices. `xs`, `ys`: lists of `(D·b, ...)` arrays (ys None: one model);
  `mask (D·b,)` bool. Returns a replicated `kernels.MinibatchHSIC` (`num_batches` counts device minibatches).
  """

  def per_device(xs, ys, mask):
    terms = kernels.minibatch_hsic(xs, ys, mask=mask, precision=precision)
    return jax.tree.map(lambda t: jax.lax.psum(t, axis_name), terms)

  spec = P(axis_name)
  # Split host arrays (or arrays sharded some other way) along the example axis; a no-op for activations
  # that already come out of a data-parallel model sharded this way.
  xs, ys, mask = lay_out((xs, ys, mask), spec, mesh, axis_name)
  return jax.shard_map(
      per_device,
      mesh=mesh,
      in_specs=(spec, None if ys is None else spec, spec),
      out_specs=P(),
  )(xs, ys, mask)


def _sharded_update(state, xs, ys, mask, mesh, axis_name, precision):
  terms = sharded_minibatch_hsic(xs, ys, mask, mesh=mesh, axis_name=axis_name, precision=precision)
  return kernels.minibatch_cka_accumulate(state, terms)


# --- Geometry (PCA, nearest neighbours, intrinsic dimension) ---

from rsim_jax.kernels import _checks as kernels_checks  # noqa: E402
from rsim_jax.kernels import compensated as kernels_compensated  # noqa: E402
from rsim_jax.kernels import intrinsic_dim as kernels_intrinsic_dim  # noqa: E402
from rsim_jax.kernels import neighbors as kernels_neighbors  # noqa: E402
import importlib  # noqa: E402

# `rsim_jax.kernels.pca` is also the name of the function exported by `rsim_jax.kernels`; take the module.
kernels_pca = importlib.import_module("rsim_jax.kernels.pca")


def _num_shards(mesh, axis_name: str) -> int:
  active_mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  if axis_name not in active_mesh.axis_names:
    raise ValueError(
        f"Mesh axis `axis_name`={axis_name!r} not in the mesh axes {active_mesh.axis_names}; pass `mesh=` "
        "or call inside `with jax.set_mesh(mesh):`."
    )
  return active_mesh.shape[axis_name]


def sharded_knn_distances(
    x: jax.Array,
    *,
    k: int,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = DATA_AXIS,
    block_size: int | None = None,
    num_candidates: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """`kernels.knn_distances` with the points split over the mesh axis `axis_name`.

  Inside `jax.shard_map`, each device `all_gather`s the points and ranks its own query rows against all of
  them (tiles of `block_size`, `lax.scan` over database tiles), then recomputes its candidates' distances
  exactly from the coordinates — the result equals the single-device one (same centring, same exact second
  pass). Per-device memory: all `n·d` points plus `O(B² + (n/D)·C)`; work `n²·d/D` per device (the
  single-device kernel uses the symmetry of the distance matrix for `n²·d/2`).

  Args:
    x: `(n, d)` points, sharded along examples or a host array (padded internally when n does not divide
      over the devices; padding is never a neighbour).
    k: neighbours per point, `1 ≤ k ≤ n − 1`.
    mesh: the mesh; None uses the mesh set with `jax.set_mesh`.
    axis_name: mesh axis the points are split over.
    block_size, num_candidates: as in `kernels.knn_distances`.

  Returns:
    `(distances, indices)`, `(n, k)` each (sharded along examples when n divides over the devices).
  """
  x = kernels_neighbors.float_features(x)
  n = x.shape[0]
  k = kernels_neighbors.check_k(k, n)
  kernels_checks.check_finite(x, "x")
  c = (
      kernels_neighbors.default_num_candidates(n, k)
      if num_candidates is None
      else kernels_neighbors.check_k(num_candidates, n, "num_candidates")
  )
  if c < k:
    raise ValueError(f"`num_candidates`={c} must be at least `k`={k}.")
  shards = _num_shards(mesh, axis_name)
  per_device = -(-n // shards)
  block = kernels_neighbors.tile_size(per_device, kernels_neighbors.check_block_size(block_size), c)
  valid = jnp.ones((n,), bool)
  if per_device * shards != n:
    valid = jnp.pad(valid, (0, per_device * shards - n))
    x = jnp.pad(x, ((0, per_device * shards - n), (0, 0)))
  return _sharded_knn(x, valid, n=n, k=k, c=c, block=block, mesh=mesh, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("n", "k", "c", "block", "mesh", "axis_name"))
def _sharded_knn(x, valid, *, n, k, c, block, mesh, axis_name):
  def per_device(local, local_valid):
    points = jax.lax.all_gather(local, axis_name, tiled=True)
    points_valid = jax.lax.all_gather(local_valid, axis_name, tiled=True)
    m = local.shape[0]
    query_index = jax.lax.axis_index(axis_name) * m + jnp.arange(m, dtype=jnp.int32)
    centre, inv_scale = kernels_neighbors.normaliser(points, points_valid)  # identical on every device
    candidates = kernels_neighbors.query_candidates(
        (local - centre) * inv_scale, query_index, (points - centre) * inv_scale, points_valid, c, block
    )
    return kernels_neighbors.exact_neighbours(local, query_index, points, candidates, k, block)

  spec = P(axis_name)
  x, valid = lay_out((x, valid), spec, mesh, axis_name)
  out = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec), out_specs=(spec, spec))(x, valid)
  if x.shape[0] == n:
    return out
  # Padded: drop the padding rows (the result is then replicated; it is only (n, k)).
  out = lay_out(out, P(), mesh, axis_name)
  return tuple(a[:n] for a in out)


def sharded_twonn(
    x: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = DATA_AXIS,
    discard_fraction: float = 0.1,
    estimator: str = "fit",
    duplicates: str = "drop",
    block_size: int | None = None,
) -> float:
  """`kernels.twonn` with the neighbour search split over the mesh (`sharded_knn_distances`).

  Duplicated points are found from `r₁ = 0` and dropped on the host (or raise), then the search is redone;
  the estimate from the `(n, 2)` distances is the same function as on one device. Arguments and errors as in
  `kernels.twonn`.
  """
  x = kernels_intrinsic_dim.validated_points(x)
  f = kernels_intrinsic_dim.check_discard_fraction(discard_fraction)
  kernels_intrinsic_dim.check_choice(estimator, kernels_intrinsic_dim.ESTIMATORS, "estimator")
  kernels_intrinsic_dim.check_choice(duplicates, kernels_intrinsic_dim.DUPLICATES, "duplicates")
  kernels_intrinsic_dim.check_enough_points(x.shape[0], f, estimator, "x")

  def search(points):
    distances, _ = sharded_knn_distances(points, k=2, mesh=mesh, axis_name=axis_name, block_size=block_size)
    return jnp.asarray(jax.device_get(distances))  # (n, 2): gathered, for the sort of the estimate

  distances = search(x)
  x, fresh = kernels_intrinsic_dim.drop_duplicate_points(x, distances, duplicates, "x", stacklevel=3)
  if fresh is None:
    kernels_intrinsic_dim.check_enough_points(x.shape[0], f, estimator, "x")
    distances = search(x)
  return float(kernels_intrinsic_dim.estimate_from_distances(distances[:, 0], distances[:, 1], f, estimator))


def sharded_pca_update(
    state: kernels.PCAState,
    x: jax.Array,
    *,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = DATA_AXIS,
    mask: jax.Array | None = None,
) -> kernels.PCAState:
  """`kernels.pca_update` with the batch split over the mesh axis `axis_name`.

  Each device forms the count, mean and centred scatter of its shard (centred on the shard's own mean);
  `psum`s of the counts and of the count-weighted means (relative to one shard's mean, so offsets cancel)
  give the batch mean on every device, and one `psum` of `M2_i + n_i δ_i δ_iᵀ` (`δ_i` = shard mean − batch
  mean) gives the batch scatter: the parallel update of Chan et al. over D shards at once. The batch is then merged into `state`, so an
  update on D devices equals `pca_update` with the whole batch on one.

  Args:
    state: a `PCAState`, replicated.
    x: `(D·b, d)` batch, sharded along examples or a host array (must divide over the devices).
    mesh: the mesh; None uses the mesh set with `jax.set_mesh`.
    axis_name: mesh axis the examples are split over.
    mask: optional `(D·b,)` bool; False rows (padding) are ignored.

  Returns:
    The updated (replicated) state.
  """
  x = kernels_checks.as_float_array(x, "x")
  kernels_checks.check_2d(x, "x")
  if x.shape[1] != state.num_features:
    raise ValueError(
        f"`x` has {x.shape[1]} features but the state was initialised with num_features={state.num_features}."
    )
  n = x.shape[0]
  if mask is None:
    kernels_checks.check_finite(x, "x")
    mask = jnp.ones((n,), bool)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != (n,):
      raise ValueError(f"`mask` must have shape ({n},) to match `x`, got {tuple(mask.shape)}.")
    mask = mask.astype(bool)
    if kernels_checks.is_concrete(mask) and kernels_checks.is_concrete(x):
      # `where`, not boolean indexing: rows split over devices stay where they are.
      kernels_checks.check_finite(jnp.where(mask[:, None], x, 0.0), "x")
  shards = _num_shards(mesh, axis_name)
  if n % shards:
    raise ValueError(
        f"The batch of {n} examples must split evenly over the {shards} devices of axis {axis_name!r}; pad "
        "it and pass a mask."
    )
  return sharded_pca_accumulate(state, x, mask, mesh=mesh, axis_name=axis_name)


@functools.partial(jax.jit, static_argnames=("mesh", "axis_name"))
def sharded_pca_accumulate(state: kernels.PCAState, x, mask, *, mesh: jax.sharding.Mesh | None = None,
                           axis_name: str = DATA_AXIS) -> kernels.PCAState:
  """`sharded_pca_update` without its host-side checks, for use inside a caller's own jitted step (the
  streaming API): `x (D·b, d)` float, `mask (D·b,)` bool, the batch dividing over the devices."""
  def per_device(local, local_mask):
    own = kernels_pca.pca_batch_state(local, local_mask)
    dtype = own.mean.high.dtype
    me = jax.lax.axis_index(axis_name)
    shards = jax.lax.psum(1, axis_name)
    counts = jax.lax.psum(jnp.zeros((shards,), jnp.int32).at[me].set(own.count), axis_name)  # (D,)
    total = jnp.sum(counts).astype(dtype)
    # Batch mean = pivot + shift, the pivot being the mean of the first non-empty shard (sent to all by a
    # psum of it and zeros, which is exact): the shard means' differences from it are then small.
    first = jnp.argmax(counts > 0)
    pivot = jax.lax.psum(jnp.where(me == first, own.mean.high, 0.0), axis_name)
    offset = (own.mean.high - pivot) + own.mean.low  # this shard's mean − pivot
    count = own.count.astype(dtype)
    shift = jax.lax.psum(count * offset, axis_name) / jnp.maximum(total, 1.0)
    delta = offset - shift
    # Chan et al. over all shards at once: M2 = Σ_i (M2_i + n_i δ_i δ_iᵀ).
    scatter = jax.lax.psum(own.scatter.high + jnp.outer(delta, delta) * count, axis_name)
    mean = kernels_compensated.CompensatedSum(*kernels_compensated.two_sum(pivot, shift))
    return kernels_pca.PCAState(
        jnp.sum(counts), mean, kernels_compensated.CompensatedSum(scatter, jnp.zeros_like(scatter))
    )

  spec = P(axis_name)
  x, mask = lay_out((x, mask), spec, mesh, axis_name)
  batch = jax.shard_map(per_device, mesh=mesh, in_specs=(spec, spec), out_specs=P())(x, mask)
  return kernels.pca_merge(state, batch)


# --- Host data on a (multi-host) mesh ---
#
# On a multi-host run every process runs the same program on its own rows of each global batch; these put
# host arrays on the global mesh and bring results back, the same code on one process and on a pod slice.

import numpy as np  # noqa: E402


def check_divides(global_rows: int, mesh: jax.sharding.Mesh, what: str, *, axis_name: str = DATA_AXIS) -> None:
  """ValueError unless a global batch of `global_rows` examples splits evenly over the mesh's devices."""
  devices = mesh.shape[axis_name]
  if global_rows % devices:
    processes = jax.process_count()
    raise ValueError(
        f"{what} of {global_rows} examples does not divide over the {devices} devices of the data mesh "
        f"({processes} process(es) × {devices // processes} devices); use a batch size that is a multiple "
        f"of {devices}."
    )


def check_mesh_spans_processes(mesh: jax.sharding.Mesh) -> None:
  """ValueError unless `mesh` holds devices of every process (a multi-host data mesh must)."""
  processes = {d.process_index for d in mesh.devices.flat}
  if len(processes) != jax.process_count():
    raise ValueError(
        f"`mesh` holds devices of {len(processes)} of the {jax.process_count()} processes; on a multi-host run "
        "the data mesh must span every process (`parallel.data_mesh()`, all devices)."
    )


def place_whole(x, sharding: NamedSharding) -> jax.Array:
  """A host array holding the whole global batch on every process → a global array split by `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places `tree` (the same values on every process: weights loaded from one checkpoint, fresh states)
  replicated on every device of `mesh`. Across hosts `device_put` cannot move a process-local array, so
  each process fills its own devices from its host copy."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def place(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(place(jax.random.key_data(x)), impl=impl)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree)


def process_rows(sharding: NamedSharding, global_rows: int, local_rows: int) -> tuple[int, int]:
  """The rows `[lo, hi)` of a global batch that this process's devices hold under `sharding`; they must be
  this process's share `[p·b, (p+1)·b)` (what `data.eval_batches` reads), or examples would be misplaced."""
  indices = sharding.addressable_devices_indices_map((global_rows,)).values()
  starts = [0 if s[0].start is None else s[0].start for s in indices]
  stops = [global_rows if s[0].stop is None else s[0].stop for s in indices]
  lo, hi = min(starts), max(stops)
  expected = (jax.process_index() * local_rows, (jax.process_index() + 1) * local_rows)
  if (lo, hi) != expected or sum(b - a for a, b in zip(starts, stops)) != hi - lo:
    raise ValueError(
        f"Process {jax.process_index()}'s devices hold rows [{lo}, {hi}) of each global batch, not its share "
        f"{list(expected)}: order the data mesh's devices by process (`parallel.data_mesh()` does)."
    )
  return lo, hi


def gather_rows(local) -> np.ndarray:
  """Every process's rows of a host array, concatenated in process order (the global batch's row order)."""
  if jax.process_count() == 1:
    return np.asarray(local)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def to_host(x: jax.Array) -> np.ndarray:
  """A global array (any sharding, possibly on other hosts' devices) as a NumPy array on every host."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
