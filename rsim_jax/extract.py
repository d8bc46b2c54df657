"""One pass over a data split: activations (from arrays or from models) → kernel accumulators.

Activations travel as ordered `dict[str, Array]` (layer name → `(n, ...)`), one dict per minibatch; they are
flattened per example only inside the kernels. With a mesh, each minibatch is split over the `data` axis and
every device's shard is one CKA minibatch (`rsim_jax.parallel.sharded_minibatch_cka_update`), so activations
stay on the devices that produced them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Iterator, Mapping

import jax
import numpy as np

from rsim_jax import kernels, parallel


@dataclasses.dataclass(frozen=True)
class CKAResult:
  """All-pairs minibatch CKA with the layer names of its rows (`x_names`) and columns (`y_names`)."""

  matrix: np.ndarray  # (num_x, num_y)
  x_names: tuple[str, ...]
  y_names: tuple[str, ...]
  num_batches: int
  num_examples: int

  def to_json(self) -> dict:
    return {
        "cka": np.asarray(self.matrix, np.float64).tolist(),
        "x_names": list(self.x_names),
        "y_names": list(self.y_names),
        "num_batches": self.num_batches,
        "num_examples": self.num_examples,
    }


def array_batches(
    arrays: Mapping[str, np.ndarray], *, batch_size: int, min_valid: int = kernels.minibatch.MIN_EXAMPLES
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
  """Splits aligned per-layer arrays `(N, ...)` into minibatches of `batch_size`, padding the last one.

  Yields `(layers, mask)` with every layer `(batch_size, ...)` and `mask (batch_size,)` bool. A ragged tail
  with fewer than `min_valid` examples (too few for unbiased HSIC) is dropped with a warning.
  """
  names = list(arrays)
  if not names:
    raise ValueError("`arrays` is empty: pass at least one layer.")
  n = len(arrays[names[0]])
  for name in names:
    if len(arrays[name]) != n:
      raise ValueError(f"Layer {name!r} has {len(arrays[name])} examples but {names[0]!r} has {n}.")
  if batch_size < min_valid:
    raise ValueError(f"`batch_size` must be at least {min_valid} for unbiased HSIC, got {batch_size}.")
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    valid = stop - start
    if valid < min_valid:
      warnings.warn(
          f"Dropping the last {valid} of {n} examples: a minibatch needs at least {min_valid} for unbiased "
          "HSIC. Choose a batch size that leaves a larger tail to use them.",
          stacklevel=2,
      )
      return
    batch = {}
    for name in names:
      chunk = np.asarray(arrays[name][start:stop])
      if valid < batch_size:
        pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      batch[name] = chunk
    yield batch, np.arange(batch_size) < valid


def _progress(iterable, *, total=None, desc: str, enabled: bool):
  if not enabled:
    return iterable
  from tqdm.auto import tqdm

  return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True)


def stream_minibatch_cka(
    batches: Iterable[tuple[Mapping[str, jax.Array], Mapping[str, jax.Array] | None, np.ndarray | None]],
    *,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "minibatch CKA",
) -> CKAResult:
  """Accumulates all-pairs minibatch CKA over `(xs, ys, mask)` batches (`ys` None: a model against itself).

  Args:
    batches: iterable of `(xs, ys, mask)`: layer dicts for the same examples and an optional `(n,)` mask.
    mesh: split each batch over the mesh's `data` axis, one minibatch per device; None: one device.
    total: number of batches, for the progress bar.

  Returns:
    A `CKAResult`.
  """
  state = None
  x_names = y_names = None
  num_examples = 0
  for xs, ys, mask in _progress(batches, total=total, desc=desc, enabled=progress):
    if state is None:
      x_names = tuple(xs)
      y_names = tuple(ys) if ys is not None else x_names
      state = kernels.minibatch_cka_init(len(x_names), None if ys is None else len(y_names))
    if tuple(xs) != x_names or (ys is not None and tuple(ys) != y_names):
      raise ValueError("Every batch must carry the same layers in the same order.")
    num_examples += int(np.sum(mask)) if mask is not None else len(next(iter(xs.values())))
    if mesh is None:
      state = kernels.minibatch_cka_update(state, xs, ys, mask=mask)
    else:
      state = parallel.sharded_minibatch_cka_update(state, xs, ys, mask=mask, mesh=mesh)
  if state is None:
    raise ValueError("`batches` was empty: nothing to compare.")
  if int(state.num_skipped):
    warnings.warn(
        f"{int(state.num_skipped)} device minibatch(es) had fewer than 4 valid examples and were skipped.",
        stacklevel=2,
    )
  matrix = np.asarray(kernels.minibatch_cka_result(state))
  return CKAResult(matrix, x_names, y_names, int(state.num_batches), num_examples)


def minibatch_cka_of_arrays(
    xs: Mapping[str, np.ndarray],
    ys: Mapping[str, np.ndarray] | None = None,
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
) -> CKAResult:
  """Minibatch CKA between stored activations (e.g. the arrays of an .npz file per model).

  Args:
    xs: layer name → `(N, ...)` activations of the first model.
    ys: the same N examples through a second model, or None to compare `xs` with itself.
    batch_size: CKA minibatch size (per device with a mesh).
  """
  names_x = list(xs)
  merged = dict(xs)
  if ys is not None:
    n_x, n_y = len(xs[names_x[0]]), len(next(iter(ys.values())))
    if n_x != n_y:
      raise ValueError(f"`xs` and `ys` must hold the same examples: {n_x} vs {n_y}.")
    merged.update({("__y__", k): v for k, v in ys.items()})
  global_batch = batch_size * (1 if mesh is None else mesh.shape[parallel.DATA_AXIS])
  n = len(xs[names_x[0]])

  def split(batches):
    for batch, mask in batches:
      bx = {k: batch[k] for k in names_x}
      by = None if ys is None else {k: batch[("__y__", k)] for k in ys}
      yield bx, by, mask

  total = -(-n // global_batch)
  return stream_minibatch_cka(
      split(array_batches(merged, batch_size=global_batch)), mesh=mesh, total=total, progress=progress
  )
