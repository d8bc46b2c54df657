"""Activations split over examples on a mesh with Explicit axes (sharding in types).

`jax.make_mesh` gives Explicit axes by default (JAX ≥ 0.7): the sharding of every array is part of its type
(`jax.typeof(x).sharding`), and an operation whose output sharding is ambiguous — a Gram matrix `XXᵀ` of
row-split X (rows and columns would both be split), a contraction over the split example axis, a slice of
one row, a sort along the split axis — raises `ShardingTypeError` instead of letting XLA choose. The helpers
below do the plain `jnp` operation when the example axis is not split in the type (unsharded arrays, meshes
with Auto axes, where XLA propagates shardings itself, and per-device shards inside `shard_map`), so those
paths compute what they always did (one exception, exact: `row` takes a row at a traced index by a masked sum
on every path, since on Auto meshes XLA all-gathers a split array for a dynamic slice), and otherwise state the
layout of the result:

  - work that splits over examples stays split: a Gram matrix keeps the rows of its left operand
    (`P(axes, None)`: each device forms its own rows against all examples), and a contraction over examples
    (`XᵀY`, the Frobenius products of U-centred Grams) is a per-device partial sum that XLA adds across devices
    (a psum), returned replicated;
  - small values that every device needs (one pivot row, row sums, a mask) are replicated;
  - whole-array algorithms (sorts, eigendecompositions, the neighbour search) are given a replicated copy by
    the kernel that needs it, with the reason stated there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def _spec(x) -> tuple:
  return tuple(jax.typeof(x).sharding.spec)


def example_axes(x: jax.Array):
  """The Explicit mesh axes (a name or tuple of names) that split the leading axis of `x` in its type, or None."""
  spec = _spec(x)
  return spec[0] if spec else None


def is_split(x: jax.Array) -> bool:
  """True when any axis of `x` is split over Explicit mesh axes in its type."""
  return any(s is not None for s in _spec(x))


def sharding(x: jax.Array, *spec) -> NamedSharding:
  """`NamedSharding(mesh of x, P(*spec))`.

  A concrete array carries its concrete mesh (eager resharding needs the devices); a tracer only the abstract
  one, which is what `jit` needs. Neither needs `jax.set_mesh`.
  """
  concrete = getattr(x, "sharding", None) if not isinstance(x, jax.core.Tracer) else None
  mesh = concrete.mesh if isinstance(concrete, NamedSharding) else jax.typeof(x).sharding.mesh
  return NamedSharding(mesh, P(*spec))


def on_one_cpu_device(x) -> bool:
  """True when `x` is a concrete array held by a single CPU device (host memory: NumPy can read it in place,
  and XLA:CPU's LAPACK calls go through SciPy's OpenBLAS)."""
  if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
    return False
  devices = x.devices()
  return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def replicated(x: jax.Array) -> jax.Array:
  """`x` whole on every device (an all-gather) when it is split over Explicit axes, else `x` unchanged."""
  if not is_split(x):
    return x
  return jax.sharding.reshard(x, sharding(x))


def _split_operand(*arrays):
  return next((a for a in arrays if is_split(a)), None)


def gram(a: jax.Array, b: jax.Array, *, precision) -> jax.Array:
  """`a bᵀ`, `(n_a, n_b)`, contracting the feature axis; the rows keep the example split of `a`.

  Each device forms its own rows against all of `b` (XLA all-gathers the `(n_b, d)` operand: every row of a
  Gram matrix involves every example).
  """
  ref = _split_operand(a, b)
  if ref is None:
    return jnp.matmul(a, b.T, precision=precision)
  return jnp.matmul(a, b.T, precision=precision, out_sharding=sharding(ref, example_axes(a), None))


def contract_examples(a: jax.Array, b: jax.Array, *, precision) -> jax.Array:
  """`aᵀ b`, `(d_a, d_b)`, summed over the shared leading (example) axis; replicated.

  With the examples split, each device multiplies its own rows and XLA adds the partial products across
  devices (a psum of `d_a·d_b` values): the data is never gathered.
  """
  ref = _split_operand(a, b)
  if ref is None:
    return jnp.matmul(a.T, b, precision=precision)
  if example_axes(a) != example_axes(b):
    # Both operands must split the contracted axis alike; slicing a replicated operand costs no communication.
    a, b = (jax.sharding.reshard(t, sharding(ref, example_axes(ref), *([None] * (t.ndim - 1)))) for t in (a, b))
  return jnp.matmul(a.T, b, precision=precision, out_sharding=sharding(ref))


def einsum_replicated(subscripts: str, *operands, precision=None) -> jax.Array:
  """`jnp.einsum` whose result is replicated (for contractions over split axes: a psum of partial sums)."""
  ref = _split_operand(*operands)
  if ref is None:
    return jnp.einsum(subscripts, *operands, precision=precision)
  return jnp.einsum(subscripts, *operands, precision=precision, out_sharding=sharding(ref))


def row(x: jax.Array, index) -> jax.Array:
  """`x[index]` (one example, e.g. a pivot row), replicated; `index` may be traced.

  Slicing one row out of a split axis has no unambiguous sharding in the type system. With the examples split,
  the row is taken as `Σ_i [i = index] x_i`: each device sums its own rows under a one-hot mask and XLA adds
  the `d`-vectors across devices. This is exact (one term plus zeros) and moves `d` values, where a gather with
  the axes switched to Auto (`auto_axes`) made XLA all-gather the whole `(n, d)` array for a traced index.
  A traced index takes the masked sum whatever the type says: on an Auto mesh the split is not in the type,
  and XLA all-gathers `x` for a dynamic slice of it too (one extra elementwise pass over `x` otherwise).
  """
  if isinstance(index, int) and example_axes(x) is None:
    return x[index]
  one_hot = jnp.arange(x.shape[0]) == index
  picked = where(one_hot.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros((), x.dtype))
  return jnp.sum(picked, axis=0)


def diagonal(g: jax.Array) -> jax.Array:
  """The diagonal of the last two axes, `(..., n)`; exact (a sum of one entry and zeros) when rows are split,
  where `jnp.diagonal`'s gather has no unambiguous output sharding. The result keeps the row split."""
  if not is_split(g):
    return jnp.diagonal(g, axis1=-2, axis2=-1)
  eye = jnp.eye(g.shape[-1], dtype=bool)
  return jnp.sum(where(eye, g, jnp.zeros((), g.dtype)), axis=-1)


def where(which: jax.Array, on_true: jax.Array, on_false) -> jax.Array:
  """`jnp.where(which, on_true, on_false)` for `on_true` split over examples.

  A `select` needs its condition laid out like its cases. Under `jax.set_mesh` a mask made with
  `jnp.ones`/`jnp.eye` is typed as replicated on the mesh, so it is broadcast to the shape of `on_true` and
  given its split (each device keeps its slice of a replicated array: no communication). Masks made outside
  a mesh carry no sharding and broadcast as they are.
  """
  which = jnp.asarray(which)
  if which.ndim and is_split(on_true) and jax.typeof(which).sharding.mesh.axis_names:
    which = jnp.broadcast_to(which, on_true.shape)
    if _spec(which) != _spec(on_true):
      which = jax.sharding.reshard(which, sharding(on_true, *_spec(on_true)))
  return jnp.where(which, on_true, on_false)


def trace(g: jax.Array) -> jax.Array:
  """`jnp.trace` of a square matrix, also when its rows are split (via `diagonal`)."""
  if not is_split(g):
    return jnp.trace(g)
  return jnp.sum(diagonal(g), axis=-1)
