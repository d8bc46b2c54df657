"""One pass over a data split: activations (from arrays or from models) → kernel accumulators.

Activations travel as ordered `dict[str, Array]` (layer name → `(n, ...)`), one dict per minibatch; they are
flattened per example only inside the kernels. With a mesh, each minibatch is split over the `data` axis and
every device's shard is one CKA minibatch (`rsim_jax.parallel.sharded_minibatch_cka_update`), so activations
stay on the devices that produced them.

The CKA minibatch is always per device: a global batch of `D·b` examples on a mesh of D devices is D
minibatches of b consecutive examples, the same minibatches (and so the same numbers, up to float32 summation
order) as b-example batches streamed through one device. `split_batches(config, batch_size=b)` makes global
batches of `b × devices`; `compare_models` runs on a mesh of all devices unless given another.

Multi-host (one process per host, all running the same code after `jax.distributed.initialize()`):
`compare_models` takes each process's rows of every global batch (as `data.eval_batches` yields them), builds
global arrays over a mesh of all hosts' devices (`jax.make_array_from_process_local_data`), combines the CKA,
PCA and sample states across all devices, and gathers predictions and labels to every host
(`jax.experimental.multihost_utils.process_allgather`): every process returns the same `ModelComparison`.
`minibatch_cka_of_arrays` expects the whole arrays on every process (e.g. the same .npz file) and places each
process's rows.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

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
  if not enabled or jax.process_index() != 0:
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
    mesh: split each batch over the mesh's `data` axis, one minibatch per device (the batch must divide over
      the mesh's devices); None: one device (on a multi-host run every process then computes the whole result).
      Host arrays must hold the whole batch on every process; each process places its rows.
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
      state = _sharded_cka_update(state, xs, ys, mask, mesh)
  if state is None:
    raise ValueError("`batches` was empty: nothing to compare.")
  if int(state.num_skipped):
    warnings.warn(
        f"{int(state.num_skipped)} device minibatch(es) had fewer than 4 valid examples and were skipped.",
        stacklevel=2,
    )
  matrix = np.asarray(kernels.minibatch_cka_result(state))
  return CKAResult(matrix, x_names, y_names, int(state.num_batches), num_examples)


def _check_divides(global_rows: int, mesh: jax.sharding.Mesh, what: str) -> None:
  devices = mesh.shape[parallel.DATA_AXIS]
  if global_rows % devices:
    processes = jax.process_count()
    raise ValueError(
        f"{what} of {global_rows} examples does not divide over the {devices} devices of the data mesh "
        f"({processes} process(es) × {devices // processes} devices); use a batch size that is a multiple "
        f"of {devices}."
    )


def _check_mesh_spans_processes(mesh: jax.sharding.Mesh) -> None:
  processes = {d.process_index for d in mesh.devices.flat}
  if len(processes) != jax.process_count():
    raise ValueError(
        f"`mesh` holds devices of {len(processes)} of the {jax.process_count()} processes; on a multi-host run "
        "the data mesh must span every process (`parallel.data_mesh()`, all devices)."
    )


def _place_whole(x, sharding):
  """A host array holding the whole global batch on every process → a global array split by `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _sharded_cka_update(state, xs, ys, mask, mesh):
  """One global batch (host arrays holding the whole batch on every process) → the updated state."""
  xs, ys, mask = kernels.minibatch.prepare_batch(xs, ys, mask, state)
  n = xs[0].shape[0]
  _check_divides(n, mesh, "The batch")
  if n // mesh.shape[parallel.DATA_AXIS] < kernels.minibatch.MIN_EXAMPLES:
    raise ValueError(f"The batch of {n} examples leaves fewer than {kernels.minibatch.MIN_EXAMPLES} per device "
                     f"on {mesh.shape[parallel.DATA_AXIS]} devices (unbiased HSIC); use a larger batch size.")
  if mask is None:
    mask = np.ones((n,), bool)
  if jax.process_count() > 1:
    _check_mesh_spans_processes(mesh)
    sharding = parallel.batch_sharding(mesh)
    xs = [_place_whole(x, sharding) for x in xs]
    ys = None if ys is None else [_place_whole(y, sharding) for y in ys]
    mask = _place_whole(mask, sharding)
  return parallel._sharded_update(state, xs, ys, mask, mesh, parallel.DATA_AXIS, kernels.gram.DEFAULT_PRECISION)


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
    batch_size: b, the CKA minibatch, per device: with a mesh of D devices each global batch holds D·b
      examples, D minibatches of b consecutive examples, which gives the same numbers as one device with b.
    mesh: a mesh with a `data` axis (all devices of all hosts: `parallel.data_mesh()`), or None for one device.
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


# --- Models → layers → accumulators -------------------------------------------------------------------


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a bijective, well-mixed `uint64 → uint64` hash (Steele et al. 2014)."""
  with np.errstate(over="ignore"):  # arithmetic modulo 2⁶⁴ is the point
    z = np.asarray(x, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


_NO_KEY = np.iinfo(np.uint64).max


class ExampleSampler:
  """A seeded uniform random sample of `size` examples from a stream of unknown length (host side).

  Every example gets a pseudo-random key `hash(seed, position)`; the sample is the `size` examples with the
  smallest keys ("bottom-k" sampling). It is therefore a uniformly random subset, the same for any batch size
  or device count, and it needs no pass over the data to know N. `assign` tells the device which buffer slot
  each row of a batch goes to (`size` = not kept), so the activations themselves never visit the host.
  """

  def __init__(self, size: int, *, seed: int = 0):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
      raise ValueError(f"`sample_size` must be a positive integer, got {size!r}.")
    self.size = int(size)
    self._seed_key = _mix64(np.uint64(seed % 2**64))
    self.slot_position = np.full(self.size, -1, np.int64)
    self.slot_label = np.full(self.size, -1, np.int64)
    self._slot_key = np.full(self.size, _NO_KEY, np.uint64)

  def assign(self, positions: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """`positions (b,)` int: each row's example position in the split, −1 for padding rows.

    Returns `(b,)` int32 buffer slots, `size` for rows not (or no longer) in the sample.
    """
    positions = np.asarray(positions, np.int64)
    valid = positions >= 0
    keys = np.where(valid, _mix64(positions.astype(np.uint64) ^ self._seed_key), _NO_KEY)
    # A stable sort puts existing slots before new rows on equal keys, so padding never displaces anything.
    chosen = np.argsort(np.concatenate([self._slot_key, keys]), kind="stable")[: self.size]
    kept_slots = chosen[chosen < self.size]
    new_rows = chosen[chosen >= self.size] - self.size
    new_rows = new_rows[valid[new_rows]]
    free = np.setdiff1d(np.arange(self.size), kept_slots)[: len(new_rows)]
    dest = np.full(len(positions), self.size, np.int32)
    dest[new_rows] = free
    self.slot_position[free] = positions[new_rows]
    self._slot_key[free] = keys[new_rows]
    if labels is not None:
      self.slot_label[free] = np.asarray(labels)[new_rows]
    return dest

  def filled_slots(self) -> np.ndarray:
    """Slots holding an example, ordered by the example's position in the split."""
    filled = np.nonzero(self.slot_position >= 0)[0]
    return filled[np.argsort(self.slot_position[filled], kind="stable")]


@dataclasses.dataclass(frozen=True)
class ModelComparison:
  """What one pass of a split through one or two models gives.

  Attributes:
    within: per model, its all-pairs within-model `CKAResult` (empty when CKA was not requested).
    cross: the `(model 0 layers, model 1 layers)` `CKAResult` for two models, else None.
    predictions: per model, `(N,)` int predicted class of every example (in split order).
    labels: `(N,)` true labels.
    pca: per model, layer name → `kernels.PCAResult` of the streamed (whole-split) PCA, for `pca_layers`.
    samples: per model, layer name → `(m, features)` float32 flattened activations of the sampled examples.
    sample_positions: `(m,)` positions in the split (among valid examples) of the sampled examples, sorted;
      the same examples for every model.
    sample_labels: `(m,)` their labels.
  """

  within: tuple[CKAResult, ...]
  cross: CKAResult | None
  predictions: tuple[np.ndarray, ...]
  labels: np.ndarray
  pca: tuple[dict, ...] = ()
  samples: tuple[dict[str, np.ndarray], ...] = ()
  sample_positions: np.ndarray | None = None
  sample_labels: np.ndarray | None = None

  def accuracy(self, model: int = 0) -> float:
    return float(np.mean(self.predictions[model] == self.labels))


def _forward_fn(model):
  """A pure `(state, images) -> (logits, layers)` for an NNX model in eval mode (BatchNorm running stats)."""
  from flax import nnx

  model.eval()
  graphdef, state = nnx.split(model)

  def forward(state, images):
    return nnx.merge(graphdef, state)(images, capture=True)

  return forward, state


def _flat(x):
  return x.reshape(x.shape[0], -1)



def _replicate(tree, mesh: jax.sharding.Mesh):
  """Places `tree` (the same values on every process: weights loaded from one checkpoint, fresh states)
  replicated on every device of `mesh`. Across hosts `device_put` cannot move a process-local array, so
  each process fills its own devices from its host copy."""
  sharding = parallel.replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def place(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(place(jax.random.key_data(x)), impl=impl)
    host = np.asarray(jax.device_get(x))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(place, tree)


def _process_rows(sharding, global_rows: int, local_rows: int) -> tuple[int, int]:
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


def _gather_rows(local: np.ndarray) -> np.ndarray:
  """Every process's rows of a host array, concatenated in process order (the global batch's row order)."""
  if jax.process_count() == 1:
    return np.asarray(local)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def _to_host(x: jax.Array) -> np.ndarray:
  """A global array (any sharding, possibly on other hosts' devices) as a NumPy array on every host."""
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def compare_models(
    models,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    layers: Sequence[str] | None = None,
    cka: bool = True,
    pca_layers: Sequence[str] | bool = (),
    pca_max_features: int = 4096,
    sample_size: int = 0,
    sample_seed: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ModelComparison:
  """Streams a split through one or two models once and feeds every layer to the kernels.

  In the same pass: within- and cross-model all-pairs minibatch CKA, a streaming PCA of chosen layers
  (`kernels.pca_update`: mean and centred scatter, Chan et al.), a fixed random sample of every layer's
  activations (for intrinsic dimension or a full-batch PCA of wide layers), and every example's prediction.
  One jit-compiled step per batch runs the forward passes and all updates, so activations never leave the
  devices. Each global batch of B examples is split over the mesh's D devices (all devices of all hosts by
  default) and every device's shard of b = B/D consecutive examples is one CKA minibatch: the result equals
  streaming b-example batches through one device (Nguyen et al. 2021's minibatch CKA is a mean of per-minibatch
  HSIC₁ values, summed across devices with `psum`). `split_batches(config, batch_size=b)` makes B = b·D.

  Multi-host: every process calls this with its own rows of each global batch (`data.eval_batches` with the
  global batch size), in process order; the returned `ModelComparison` (CKA, PCA, samples, predictions of
  all N examples) is the same on every process.

  Memory on device, beyond the forward pass: per PCA layer `2·d²` floats (hence `pca_max_features`; use the
  sample and `kernels.pca`, whose Gram route costs `m²`, for wider layers); per sampled layer `m·d` floats.

  Args:
    models: one NNX model, or a sequence of one or two, each `model(images, capture=True) -> (logits, dict)`.
      They are switched to eval mode.
    batches: this process's rows of each global batch: dicts with "image" `(B/P, H, W, C)`, "label" `(B/P,)`
      and optional "mask" `(B/P,)` (padding rows False), e.g. from `rsim_jax.data.eval_batches`; with one
      process, the whole batch. B must divide over the mesh's devices.
    layers: names of the captured layers to compare and sample (default: all, in the model's order); with two
      models the same names must exist in both, or pass None to use each model's own full list.
    cka: accumulate minibatch CKA (False: only PCA, samples and predictions).
    pca_layers: layers (a subset of `layers`) to stream a PCA of; True = all of `layers`.
    pca_max_features: largest flattened width allowed for a streamed PCA (its scatter is `d × d`).
    sample_size: m, the number of examples to keep (0 = none); a uniform random subset fixed by
      `sample_seed` and independent of batch size and device count (`ExampleSampler`).
    mesh: a mesh with a `data` axis; None: `parallel.data_mesh()`, all devices of all hosts (pass
      `parallel.data_mesh(1)` for one device on a single host).
    total: number of batches, for the progress bar.
  """
  if not isinstance(models, (list, tuple)):
    models = [models]
  if not 1 <= len(models) <= 2:
    raise ValueError(f"`models` must be one or two models, got {len(models)}.")
  mesh = parallel.data_mesh() if mesh is None else mesh
  if parallel.DATA_AXIS not in mesh.axis_names:
    raise ValueError(f"`mesh` must have a {parallel.DATA_AXIS!r} axis, got axes {mesh.axis_names}.")
  _check_mesh_spans_processes(mesh)
  forwards = [_forward_fn(m) for m in models]
  names = [tuple(layers) if layers is not None else tuple(m.layer_names) for m in models]
  for m, layer_names in zip(models, names):
    missing = [n for n in layer_names if n not in m.layer_names]
    if missing:
      raise ValueError(f"`layers` names {missing} are not captured by {type(m).__name__}; see model.layer_names.")
  pca_names = [tuple(n) if pca_layers is True else tuple(pca_layers or ()) for n in names]
  for layer_names, chosen in zip(names, pca_names):
    extra = [n for n in chosen if n not in layer_names]
    if extra:
      raise ValueError(f"`pca_layers` {extra} are not among the compared `layers`.")
  sampler = ExampleSampler(sample_size, seed=sample_seed) if sample_size else None
  params = _replicate(tuple(state for _, state in forwards), mesh)

  def update(cka_state, xs, ys, mask):
    return parallel._sharded_update(cka_state, xs, ys, mask, mesh, parallel.DATA_AXIS, kernels.gram.DEFAULT_PRECISION)

  def pca_update(state, x, mask):
    return parallel._sharded_pca_update(state, x, mask, mesh, parallel.DATA_AXIS)

  def sample_update(buffer, x, dest):
    # The few kept rows may sit on any device: gather this batch's rows (b × d) rather than combine m × d
    # buffers across devices.
    x, dest = jax.reshard((x, dest), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    # Rows with dest == m (not sampled, or padding) fall outside the buffer and are dropped.
    return buffer.at[dest].set(x.astype(buffer.dtype), mode="drop")

  # The carry is donated: the sample buffers (m × d per layer) are updated in place, not copied per batch.
  @functools.partial(jax.jit, donate_argnums=(1,))
  def step(params, carry, images, mask, dest):
    cka_states, cross, pca_states, buffers = carry
    outputs = [fwd(p, images) for (fwd, _), p in zip(forwards, params)]
    acts = [[out[1][n] for n in layer_names] for out, layer_names in zip(outputs, names)]
    if cka:
      cka_states = tuple(update(s, a, None, mask) for s, a in zip(cka_states, acts))
      if cross is not None:
        cross = update(cross, acts[0], acts[1], mask)
    pca_states = tuple(
        {n: pca_update(s[n], _flat(out[1][n]), mask) for n in s} for s, out in zip(pca_states, outputs)
    )
    if sampler is not None:
      buffers = tuple({n: sample_update(b[n], _flat(out[1][n]), dest) for n in b} for b, out in zip(buffers, outputs))
    predictions = tuple(jax.numpy.argmax(out[0], axis=-1) for out in outputs)
    return (cka_states, cross, pca_states, buffers), predictions

  def initial_carry(images):
    shapes = [jax.eval_shape(fwd, p, images)[1] for (fwd, _), p in zip(forwards, params)]
    widths = [{n: int(np.prod(s[n].shape[1:])) for n in layer_names} for s, layer_names in zip(shapes, names)]
    for width, chosen in zip(widths, pca_names):
      too_wide = {n: width[n] for n in chosen if width[n] > pca_max_features}
      if too_wide:
        raise ValueError(
            f"`pca_layers` {too_wide} (flattened widths) exceed pca_max_features={pca_max_features}: a streamed "
            "PCA keeps a d × d scatter. Use the activation sample (`sample_size`) and `kernels.pca` (Gram route) "
            "for them, or raise `pca_max_features` if the memory (8·d² bytes per layer) is available."
        )
    cka_states = tuple(kernels.minibatch_cka_init(len(n)) for n in names) if cka else ()
    cross = kernels.minibatch_cka_init(len(names[0]), len(names[1])) if cka and len(models) == 2 else None
    pca_states = tuple({n: kernels.pca_init(w[n]) for n in chosen} for w, chosen in zip(widths, pca_names))
    buffers = ()
    if sampler is not None:
      buffers = tuple({n: np.zeros((sampler.size, w[n]), np.float32) for n in layer_names}
                      for w, layer_names in zip(widths, names))
    return _replicate((cka_states, cross, pca_states, buffers), mesh)

  carry = None
  predictions = [[] for _ in models]
  labels = []
  num_examples = 0
  sharding = parallel.batch_sharding(mesh)
  rows: dict[int, tuple[int, int]] = {}
  for batch in _progress(batches, total=total, desc="extract", enabled=progress):
    images = np.asarray(batch["image"])
    local_mask = np.asarray(batch.get("mask", np.ones(len(images), bool)), bool)
    # Every process needs the global batch's mask and labels: positions in the split, the sample's slots
    # and the skip decision must be the same everywhere (a process that skipped alone would hang the others).
    mask = _gather_rows(local_mask)
    batch_labels = _gather_rows(np.asarray(batch["label"]))
    global_rows = len(mask)
    if global_rows not in rows:  # this process's rows of a global batch of that size
      _check_divides(global_rows, mesh, "The global batch")
      rows[global_rows] = _process_rows(sharding, global_rows, len(images))
    if cka and mask.sum() < kernels.minibatch.MIN_EXAMPLES:
      warnings.warn(f"Skipping a batch with {int(mask.sum())} valid examples (< 4, too few for unbiased HSIC).", stacklevel=2)
      continue
    positions = np.where(mask, num_examples + np.cumsum(mask) - 1, -1)
    dest = sampler.assign(positions, batch_labels) if sampler is not None else np.zeros(global_rows, np.int32)
    lo, hi = rows[global_rows]
    global_images, global_mask, global_dest = (
        jax.make_array_from_process_local_data(sharding, local, (global_rows,) + local.shape[1:])
        for local in (images, local_mask, dest[lo:hi])
    )
    if carry is None:
      carry = initial_carry(global_images)
    carry, preds = step(params, carry, global_images, global_mask, global_dest)
    for i, p in enumerate(preds):
      predictions[i].append((p, mask))  # kept on the devices: gathered once, at the end
    labels.append(batch_labels[mask])
    num_examples += int(mask.sum())
  if carry is None:
    raise ValueError("`batches` was empty: nothing to compare.")
  cka_states, cross, pca_states, buffers = carry

  def result(state, x_names, y_names):
    return CKAResult(_to_host(kernels.minibatch_cka_result(state)), x_names, y_names, int(state.num_batches),
                     num_examples)

  within = tuple(result(s, n, n) for s, n in zip(cka_states, names))
  cross_result = result(cross, names[0], names[1]) if cross is not None else None
  # The carry's dicts went through jit, which sorts their keys: put results back in layer order.
  pca_results = tuple({n: jax.tree.map(_to_host, kernels.pca_result(s[n])) for n in order if n in s}
                      for s, order in zip(pca_states, names))
  samples, positions, sample_labels = (), None, None
  if sampler is not None:
    slots = sampler.filled_slots()
    samples = tuple({n: _to_host(b[n])[slots] for n in order if n in b} for b, order in zip(buffers, names))
    positions, sample_labels = sampler.slot_position[slots], sampler.slot_label[slots]
    for i, model_samples in enumerate(samples):
      bad = [n for n, a in model_samples.items() if not np.all(np.isfinite(a))]
      if bad:
        raise ValueError(f"Model {i}: the activations of layers {bad} contain NaN/Inf on the sampled examples.")
  gathered = []
  for per_batch in predictions:
    values = _to_host(jax.numpy.stack([p for p, _ in per_batch])) if per_batch else np.zeros((0, 0), np.int32)
    gathered.append(np.concatenate([v[m] for v, (_, m) in zip(values, per_batch)]))
  return ModelComparison(
      within, cross_result, tuple(gathered), np.concatenate(labels),
      pca=pca_results, samples=samples, sample_positions=positions, sample_labels=sample_labels,
  )


def sample_activations(
    model,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    num_examples: int,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
  """A fixed, seeded uniform random sample of `num_examples` examples of a split, every layer flattened.

  One pass, forward only (no CKA); the subset depends only on `seed` and the split's order (see
  `ExampleSampler`), so two models or two checkpoints sampled with the same seed see the same examples.
  `batches` and `mesh` as in `compare_models` (all devices of all hosts by default).

  Returns:
    layer name → `(m, features)` float32, m = min(num_examples, examples in the split), rows in split order.
  """
  comparison = compare_models(model, batches, layers=layers, cka=False, sample_size=num_examples,
                              sample_seed=seed, mesh=mesh, total=total, progress=progress)
  return comparison.samples[0]


def split_batches(config, *, split: str | None = None, batch_size: int = 256, mesh: jax.sharding.Mesh | None = None,
                  max_examples: int | None = None, seed: int = 0, local: bool = False):
  """Evaluation batches of a trained model's data, for `compare_models`: `(batches, number of batches)`.

  Each global batch holds `batch_size × D` examples (D = devices of `mesh`), so each device's CKA minibatch has
  `batch_size` examples: the same minibatches, and the same CKA, on any number of devices and hosts. Every
  process reads only its rows of each global batch (`data.eval_batches`); the last batch is padded and masked,
  so every example is used exactly once whatever the number of processes.

  Args:
    config: the model's `TrainConfig` (from `rsim_jax.train.load_model`): its data source and options.
    split: the split to stream (default: the config's evaluation split).
    batch_size: b, examples per device per batch (the CKA minibatch).
    mesh: the mesh `compare_models` will run on (default: all devices of all hosts, as there).
    max_examples: cap on examples; a class-balanced seeded subset (`data.subsample`) when the split allows
      one, else the first `max_examples` (None = the whole split).
    seed: seed of that subset.
    local: every process reads every example, in whole batches of `batch_size` (for code that runs on one
      device per process and needs the whole split, e.g. `analysis.pruning`); `mesh` is then ignored.
  """
  from rsim_jax import data

  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f"`batch_size` (examples per device) must be a positive int, got {batch_size!r}.")
  devices = 1 if local else (parallel.data_mesh() if mesh is None else mesh).shape[parallel.DATA_AXIS]
  global_batch = int(batch_size) * devices
  ds = data.load(config.data, split or config.eval_split, **config.data_kwargs)
  if max_examples is not None and max_examples < len(ds.labels):
    try:
      ds = data.subsample(ds, count=max_examples - max_examples % ds.num_classes, seed=seed)
    except (ValueError, AttributeError):
      ds = data.select(ds, np.arange(max_examples))
  share = {"process_index": 0, "process_count": 1} if local else {}
  return data.eval_batches(ds, batch_size=global_batch, **share), -(-len(ds.labels) // global_batch)
