"""All-pairs machinery shared by the Procrustes and CCA kernels (`as_layers` by RSA too).

Each index factors every layer once (an orthonormal or weighted basis), then contracts every layer pair.
Layers whose factors have the same shapes are stacked into one group; each pair of groups is one task, one
jitted loop over its layer pairs, so the Python loop runs over groups (a handful of distinct widths), never
over examples or layer pairs. Factor widths are padded with zero columns, which leaves every index unchanged,
to a few group widths (`group_widths`: as many groups as the ladder `bucket_width` would make, so the number
of compilations stays small, with boundaries fitted to the actual widths).

The pairs are independent, and each costs a decomposition (LAPACK on CPU), so they are spread out:
  - factors on one CPU device: one thread per core, each running its share of the pairs (balanced by cost)
    through the tasks' compiled programs, with SciPy's OpenBLAS held to one thread meanwhile. XLA:CPU runs a
    program's LAPACK calls one after another, and a values-only SVD is mostly matrix–vector work that a
    second BLAS thread speeds up by only ~1.5×, so two whole pairs at once beat one pair on two threads;
  - factors on a mesh of several devices (layers passed split or replicated over it): each task's pair list is
    split over the devices with `shard_map` and the results gathered back, instead of every device
    repeating every pair;
  - one accelerator: the tasks one after another (dispatch is asynchronous).
A pair of a layer with itself can be given in closed form (`self_pair`), skipping its decomposition.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsim_jax.kernels import _checks, _sharding
from rsim_jax.kernels.features import as_features


def as_layers(layers: Any, name: str) -> list[jax.Array]:
  """Validates a model's layers: a sequence, an ordered mapping (its values) or a stacked `(L, n, ...)` array;
  each layer `(n, ...)` is flattened per example, and all must hold the same n examples."""
  if isinstance(layers, Mapping):
    layers = list(layers.values())
  elif isinstance(layers, (jax.Array, np.ndarray)):
    if layers.ndim < 3:
      raise ValueError(
          f"`{name}` must be a list of (n, d) layers or a stacked (L, n, d) array, got shape {tuple(layers.shape)}."
      )
    layers = list(layers)
  else:
    layers = list(layers)
  if not layers:
    raise ValueError(f"`{name}` is empty; pass at least one layer.")
  out = []
  for i, layer in enumerate(layers):
    # Factorisations (QR, eigh, sorts) need every example on one device: an example-split layer is gathered.
    arr = _sharding.replicated(as_features(layer, f"{name}[{i}]"))
    _checks.check_finite(arr, f"{name}[{i}]")
    if arr.dtype in (jnp.float16, jnp.bfloat16):
      arr = arr.astype(jnp.float32)
    out.append(arr)
  for i, arr in enumerate(out[1:], start=1):
    _checks.check_same_examples(out[0], arr, f"{name}[0]", f"{name}[{i}]")
  return out


def bucket_width(width: int, cap: int) -> int:
  """`width` rounded up to the ladder 32·2^(j/2) (multiples of 32), at most `cap`: ≤ 1.42× the columns (and
  ≤ 2.8× the flops of an O(r³) step) for at most ~2 log₂(cap) distinct shapes."""
  if width >= cap:
    return cap
  step = 32
  rung = step
  while rung < width:
    rung = int(math.ceil(rung * math.sqrt(2.0) / step) * step)
  return min(rung, cap)


def group_widths(widths: Sequence[int], cap: int) -> list[int]:
  """The padded width of each layer's factor: layers sorted by width are split into as many groups as the
  ladder (`bucket_width`) would make, so no more programs are compiled, but at the boundaries that minimise
  the decompositions' cost `Σ padded_width³` for these widths (dynamic programming over the sorted widths),
  each group padding to its widest member rounded up to a multiple of 32 (at most `cap`). For the bench's 20
  layers of widths 256 … 2,000 that is 14% fewer modelled flops than padding to the ladder's rungs.
  """
  widths = [int(w) for w in widths]
  distinct = sorted(set(widths))
  padded = [min(-(-w // 32) * 32, cap) for w in distinct]
  counts = [widths.count(w) for w in distinct]
  groups = min(len(distinct), len({bucket_width(w, cap) for w in widths}))
  m = len(distinct)
  # best[g][j]: least cost of the first j distinct widths in g groups; cut[g][j]: where the last group starts.
  best = [[float("inf")] * (m + 1) for _ in range(groups + 1)]
  cut = [[0] * (m + 1) for _ in range(groups + 1)]
  best[0][0] = 0.0
  for g in range(1, groups + 1):
    for j in range(1, m + 1):
      for i in range(g - 1, j):
        cost = best[g - 1][i] + sum(counts[i:j]) * float(padded[j - 1]) ** 3
        if cost < best[g][j]:
          best[g][j], cut[g][j] = cost, i
  width_of, j = {}, m
  for g in range(groups, 0, -1):
    i = cut[g][j]
    width_of.update({w: padded[j - 1] for w in distinct[i:j]})
    j = i
  return [width_of[w] for w in widths]


def pad_columns(a: jax.Array, width: int) -> jax.Array:
  """Zero columns appended to `(..., n, r)` up to `width`."""
  extra = width - a.shape[-1]
  if extra <= 0:
    return a
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])


def pad_rows(a: jax.Array, height: int) -> jax.Array:
  extra = height - a.shape[-2]
  if extra <= 0:
    return a
  return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, extra), (0, 0)])


def singular_values(c: jax.Array) -> jax.Array:
  """Singular values of a `(p, q)` matrix, descending (`min(p, q)` of them), for contractions of two factors.

  A clearly rectangular matrix is first reduced to the `(k, k)` triangle `R` of a Householder QR (of `c` or
  `cᵀ`), `k = min(p, q)`: the singular values are unchanged, and the QR is mostly matrix–matrix work, while the
  SVD's cost is LAPACK's bidiagonal reduction, matrix–vector work of `4·max·k² − 4k³/3` flops on the rectangle
  (`gesdd` takes a QR itself only above an aspect ratio of 11/6) against `8k³/3` on the triangle. Both steps are
  backward stable, so the values still agree with the exact ones to `~ε‖c‖`.
  """
  p, q = c.shape[-2:]
  if 10 * p >= 11 * q:
    c = jnp.linalg.qr(c, mode="r")
  elif 10 * q >= 11 * p:
    c = jnp.linalg.qr(jnp.swapaxes(c, -1, -2), mode="r")
  return jnp.linalg.svd(c, compute_uv=False)


def _shape_key(factor) -> tuple:
  return tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(factor))


def _groups(factors: list) -> list[tuple[list[int], Any]]:
  """Layers with equally shaped factors, stacked: `[(layer indices, stacked factor pytree), ...]`."""
  by_key: dict[tuple, list[int]] = {}
  for i, factor in enumerate(factors):
    by_key.setdefault(_shape_key(factor), []).append(i)
  return [(idx, jax.tree.map(lambda *leaves: jnp.stack(leaves), *[factors[i] for i in idx])) for idx in by_key.values()]


class _Task(NamedTuple):
  """One pair of layer groups: their stacked factors and the pairs `(index_x[k], index_y[k])` within them."""

  stack_x: Any
  stack_y: Any
  index_x: np.ndarray
  index_y: np.ndarray


def _pair_loop(pair_fn, both, stack_x, stack_y, index_x, index_y, count):
  """`pair_fn` on the pairs `(index_x[k], index_y[k])` for `k < count` (a dynamic bound); `(len(index_x),)`
  outputs whose entries from `count` on are left zero."""

  def one(k):
    fx = jax.tree.map(lambda leaf: leaf[index_x[k]], stack_x)
    fy = jax.tree.map(lambda leaf: leaf[index_y[k]], stack_y)
    return pair_fn(fx, fy, both=both)

  buffers = jax.tree.map(lambda s: jnp.zeros(index_x.shape + s.shape, s.dtype), jax.eval_shape(one, 0))

  def body(k, out):
    return jax.tree.map(lambda buffer, value: buffer.at[k].set(value), out, one(k))

  return jax.lax.fori_loop(0, count, body, buffers)


_task_program = jax.jit(_pair_loop, static_argnames=("pair_fn", "both"))


@functools.partial(jax.jit, static_argnames=("pair_fn", "both", "mesh"))
def _tasks_program_over_devices(pair_fn, both, mesh, stacks_x, stacks_y, indices_x, indices_y):
  """Every task's pair loop in one program, each task's pair list split evenly over the devices of `mesh` (the
  factors are whole on every device); the results are gathered back onto every device."""
  axes = tuple(mesh.axis_names)

  def local(sx, sy, ix, iy):
    out = [_pair_loop(pair_fn, both, *args, args[2].shape[0]) for args in zip(sx, sy, ix, iy)]
    return jax.tree.map(lambda v: jax.lax.all_gather(v, axes, tiled=True), out)

  split = [P(axes)] * len(indices_x)
  return jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(), split, split), out_specs=P(), check_vma=False
  )(stacks_x, stacks_y, indices_x, indices_y)


def _mesh_of(stack) -> Mesh | None:
  """The mesh a stacked factor lives on when it spans several devices (layers passed split or replicated over
  a mesh), else None."""
  sharding = getattr(jax.tree.leaves(stack)[0], "sharding", None)
  if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
    return sharding.mesh
  return None


MAX_CPU_WORKERS = 8


def cpu_workers(stack) -> int:
  """Threads that run pair loops side by side: the cores this process may use when the factors sit on one CPU
  device (XLA:CPU runs a program's LAPACK calls one after another on one thread, and a values-only SVD is
  mostly matrix–vector work that more BLAS threads barely speed up), else 1 (an accelerator runs one program
  at a time, and dispatch is asynchronous anyway)."""
  if not _sharding.on_one_cpu_device(jax.tree.leaves(stack)[0]):
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, MAX_CPU_WORKERS))


def _pair_cost(task: _Task) -> float:
  """A pair's relative cost, for balancing the workers: `s_x·s_y·min(r_x, r_y)` with `s` a factor's size per
  layer and `r` its width (the contraction times the decomposition's smaller side)."""
  leaf_x, leaf_y = jax.tree.leaves(task.stack_x)[0], jax.tree.leaves(task.stack_y)[0]
  size = lambda leaf: float(np.prod(leaf.shape[1:]))
  return size(leaf_x) * size(leaf_y) * min(leaf_x.shape[-1], leaf_y.shape[-1])


def _assign(tasks: list[_Task], workers: int) -> list[list[np.ndarray]]:
  """`[worker][task]` → the positions of that task's pairs the worker computes: the most expensive pairs
  first, each to the worker with the least work so far (greedy longest-processing-time scheduling)."""
  order = sorted(
      ((-_pair_cost(task), t, k) for t, task in enumerate(tasks) for k in range(len(task.index_x))),
  )
  load = np.zeros(workers)
  chosen: list[list[list[int]]] = [[[] for _ in tasks] for _ in range(workers)]
  for negative_cost, t, k in order:
    w = int(np.argmin(load))
    chosen[w][t].append(k)
    load[w] -= negative_cost
  return [[np.asarray(positions, dtype=np.int64) for positions in per_task] for per_task in chosen]


def _run_local(tasks: list[_Task], pair_fn, both: bool, workers: int) -> list:
  """All tasks on one device by `workers` threads. Each task is one compiled program (a pair loop with a dynamic
  count over padded index arrays, so every worker's share of it runs the same program; one program per task,
  not per model, keeps each program's temporary memory to one pair's), cached across calls like any `jit`.

  The programs are compiled here, in the calling thread: tracing reads thread-local settings
  (`jax.enable_x64`, `jax.default_matmul_precision`) that worker threads would not see; the threads only
  execute. SciPy's OpenBLAS, which XLA:CPU calls for QR, SVD and eigh, is held to one thread meanwhile (for
  the whole process: other threads' BLAS calls too, for those seconds), so that the workers do not
  oversubscribe the cores, and with one worker too, so that the values are the same bits for any number.
  """
  shares = _assign(tasks, workers)
  programs = []
  for task in tasks:
    index = np.zeros(len(task.index_x), np.int32)  # NumPy: shapes only, no device program to make them
    lowered = _task_program.lower(pair_fn, both, task.stack_x, task.stack_y, index, index, np.int32(0))
    programs.append(lowered.compile())

  def execute(share):
    results = {}
    for t, positions in enumerate(share):
      if len(positions):
        task = tasks[t]
        padded = lambda index: np.resize(index[positions], len(index)).astype(np.int32)
        count = np.int32(len(positions))
        results[t] = programs[t](task.stack_x, task.stack_y, padded(task.index_x), padded(task.index_y), count)
    return jax.device_get(results)

  with _blas_threads(1):  # with one worker too, so that the values do not depend on the number of workers
    if workers == 1:
      per_worker = [execute(shares[0])]
    else:
      with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        per_worker = list(pool.map(execute, shares))
  out = []
  for t, task in enumerate(tasks):
    merged = None
    for share, results in zip(shares, per_worker):
      if t not in results:
        continue
      positions = share[t]
      part = jax.tree.map(lambda v, n=len(positions): np.asarray(v)[:n], results[t])
      if merged is None:
        merged = jax.tree.map(lambda v: np.zeros((len(task.index_x),) + v.shape[1:], v.dtype), part)
      for whole, values in zip(jax.tree.leaves(merged), jax.tree.leaves(part)):
        whole[positions] = values
    out.append(merged)
  return out


def _run_on_mesh(tasks: list[_Task], pair_fn, both: bool, mesh: Mesh) -> list:
  """Each task's pairs split evenly over the mesh's devices (the list padded with repeats of its first pairs,
  whose results are dropped)."""
  axes = tuple(mesh.axis_names)
  split = NamedSharding(mesh, P(axes))

  def place(index):
    padded = np.resize(index.astype(np.int32), -(-len(index) // mesh.size) * mesh.size)
    return jax.make_array_from_callback(padded.shape, split, lambda i: padded[i])  # every process: its devices

  out = _tasks_program_over_devices(
      pair_fn,
      both,
      mesh,
      [task.stack_x for task in tasks],
      [task.stack_y for task in tasks],
      [place(task.index_x) for task in tasks],
      [place(task.index_y) for task in tasks],
  )
  return [jax.tree.map(lambda v, n=len(task.index_x): np.asarray(v)[:n], result) for task, result in zip(tasks, out)]


@contextlib.contextmanager
def _blas_threads(limit: int):
  try:
    import threadpoolctl  # noqa: PLC0415  (declared; also a scikit-learn dependency)
  except ImportError:
    yield
    return
  with threadpoolctl.threadpool_limits(limits=limit, user_api="blas"):
    yield


def _run(tasks: list[_Task], pair_fn, both: bool) -> list:
  """Every task's `(forward, backward)` as NumPy pytrees of `(len(task.index_x),)` arrays: spread over the
  devices of the mesh the factors span, or over the cores of the one CPU device they sit on, or one task after
  another on a single accelerator."""
  mesh = _mesh_of(tasks[0].stack_x)
  if mesh is not None:
    return _run_on_mesh(tasks, pair_fn, both, mesh)
  workers = min(cpu_workers(tasks[0].stack_x), sum(len(task.index_x) for task in tasks))
  return _run_local(tasks, pair_fn, both, workers)


def all_pairs(
    factors_x: list,
    factors_y: list | None,
    pair_fn: Callable,
    *,
    fill: float = np.nan,
    self_pair: Callable[[Any], dict[str, float]] | None = None,
) -> dict[str, np.ndarray]:
  """Applies `pair_fn` to every (x layer, y layer) pair and returns `{name: (L_x, L_y) array}`.

  `pair_fn(fx, fy, *, both)` (a module-level function, so the jit cache is reused across calls) returns
  `(forward, backward)`: dicts of scalars for the pair (x_i, y_j) and, when `both` is True, for (y_j, x_i)
  (else `backward` may be None). With `factors_y=None` the layers are compared with themselves: each
  unordered pair is computed once and `backward` fills the transposed entry; `self_pair(factor)`, when
  given, returns a layer's values with itself in closed form (NumPy, on the host) instead of a decomposition
  (e.g. Procrustes similarity 1: `‖X̂ᵀX̂‖_* = ‖X̂‖²_F`).

  The pairs are independent, so they are spread out (`_run`): over the devices of the mesh the factors live
  on (a `shard_map` over each group's pair list), or over the CPU's cores (threads, each running its share of
  the pairs, balanced by cost). The results do not depend on how they were spread: on a CPU not even in the
  last bit, since each pair is the same program on one BLAS thread whichever worker runs it.
  """
  symmetric = factors_y is None
  groups_x = _groups(factors_x)
  groups_y = groups_x if symmetric else _groups(factors_y)
  num_x = len(factors_x)
  num_y = num_x if symmetric else len(factors_y)
  tasks, places = [], []
  for a, (idx_x, stack_x) in enumerate(groups_x):
    for b, (idx_y, stack_y) in enumerate(groups_y):
      if symmetric and b < a:
        continue
      if symmetric and a == b:
        pi, pj = np.triu_indices(len(idx_x), k=0 if self_pair is None else 1)
      else:
        pi, pj = (g.ravel() for g in np.meshgrid(np.arange(len(idx_x)), np.arange(len(idx_y)), indexing="ij"))
      if len(pi):
        tasks.append(_Task(stack_x, stack_y, pi, pj))
        places.append((np.asarray(idx_x)[pi], np.asarray(idx_y)[pj]))
  out: dict[str, np.ndarray] = {}
  dtype = np.dtype(jax.tree.leaves(factors_x[0])[0].dtype)

  def entry(name):
    if name not in out:
      out[name] = np.full((num_x, num_y), fill, dtype=dtype)
    return out[name]

  for (rows, cols), (forward, backward) in zip(places, _run(tasks, pair_fn, symmetric) if tasks else []):
    for name, values in forward.items():
      entry(name)[rows, cols] = values
      if symmetric:
        entry(name)[cols, rows] = backward[name]
  if symmetric and self_pair is not None:
    for i, factor in enumerate(factors_x):
      for name, value in self_pair(factor).items():
        entry(name)[i, i] = value
  return out
