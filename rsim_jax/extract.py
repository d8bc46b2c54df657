"""One pass over a data split: activations (from arrays or from models) → kernel accumulators.

Activations travel as ordered `dict[str, Array]` (layer name → `(n, ...)`), one dict per minibatch; they are
flattened per example only inside the kernels. With a mesh, each minibatch is split over the `data` axis and
every device's shard is one CKA minibatch (`rsim_jax.parallel.sharded_minibatch_cka_update`), so activations
stay on the devices that produced them.
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
  devices; with a mesh the batch is split over its `data` axis and every device's shard is one CKA minibatch
  (batch size = per-device CKA minibatch × devices).

  Memory on device, beyond the forward pass: per PCA layer `2·d²` floats (hence `pca_max_features`; use the
  sample and `kernels.pca`, whose Gram route costs `m²`, for wider layers); per sampled layer `m·d` floats.

  Args:
    models: one NNX model, or a sequence of one or two, each `model(images, capture=True) -> (logits, dict)`.
      They are switched to eval mode.
    batches: dicts with "image" `(b, H, W, C)`, "label" `(b,)` and optional "mask" `(b,)` (padding rows False),
      e.g. from `rsim_jax.data.eval_batches`.
    layers: names of the captured layers to compare and sample (default: all, in the model's order); with two
      models the same names must exist in both, or pass None to use each model's own full list.
    cka: accumulate minibatch CKA (False: only PCA, samples and predictions).
    pca_layers: layers (a subset of `layers`) to stream a PCA of; True = all of `layers`.
    pca_max_features: largest flattened width allowed for a streamed PCA (its scatter is `d × d`).
    sample_size: m, the number of examples to keep (0 = none); a uniform random subset fixed by
      `sample_seed` and independent of batch size and device count (`ExampleSampler`).
    mesh: optional mesh with a `data` axis.
    total: number of batches, for the progress bar.
  """
  if not isinstance(models, (list, tuple)):
    models = [models]
  if not 1 <= len(models) <= 2:
    raise ValueError(f"`models` must be one or two models, got {len(models)}.")
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
  params = tuple(state for _, state in forwards)
  if mesh is not None:
    params = jax.device_put(params, parallel.replicated(mesh))

  def update(cka_state, xs, ys, mask):
    if mesh is None:
      return kernels.minibatch_cka_accumulate(cka_state, kernels.minibatch._minibatch_hsic(xs, ys, mask, kernels.gram.DEFAULT_PRECISION))
    return parallel._sharded_update(cka_state, xs, ys, mask, mesh, parallel.DATA_AXIS, kernels.gram.DEFAULT_PRECISION)

  def pca_update(state, x, mask):
    if mesh is None:
      return kernels.pca_update(state, x, mask=mask)
    return parallel._sharded_pca_update(state, x, mask, mesh, parallel.DATA_AXIS)

  def sample_update(buffer, x, dest):
    if mesh is not None:
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
      buffers = tuple({n: jax.numpy.zeros((sampler.size, w[n]), jax.numpy.float32) for n in layer_names}
                      for w, layer_names in zip(widths, names))
    carry = (cka_states, cross, pca_states, buffers)
    return carry if mesh is None else jax.device_put(carry, parallel.replicated(mesh))

  carry = None
  predictions = [[] for _ in models]
  labels = []
  num_examples = 0
  sharding = None if mesh is None else parallel.batch_sharding(mesh)
  for batch in _progress(batches, total=total, desc="extract", enabled=progress):
    images = np.asarray(batch["image"])
    mask = np.asarray(batch.get("mask", np.ones(len(images), bool)), bool)
    batch_labels = np.asarray(batch["label"])
    if cka and mask.sum() < kernels.minibatch.MIN_EXAMPLES:
      warnings.warn(f"Skipping a batch with {int(mask.sum())} valid examples (< 4, too few for unbiased HSIC).", stacklevel=2)
      continue
    positions = np.where(mask, num_examples + np.cumsum(mask) - 1, -1)
    dest = sampler.assign(positions, batch_labels) if sampler is not None else np.zeros(len(images), np.int32)
    if carry is None:
      carry = initial_carry(images)
    if sharding is not None:
      images, mask_in, dest = jax.device_put((images, mask, dest), sharding)
    else:
      mask_in = mask
    carry, preds = step(params, carry, images, mask_in, dest)
    for i, p in enumerate(preds):
      predictions[i].append(np.asarray(p)[mask])  # (b,) ints: the only per-batch transfer
    labels.append(batch_labels[mask])
    num_examples += int(mask.sum())
  if carry is None:
    raise ValueError("`batches` was empty: nothing to compare.")
  cka_states, cross, pca_states, buffers = carry

  def result(state, x_names, y_names):
    return CKAResult(np.asarray(kernels.minibatch_cka_result(state)), x_names, y_names, int(state.num_batches), num_examples)

  within = tuple(result(s, n, n) for s, n in zip(cka_states, names))
  cross_result = result(cross, names[0], names[1]) if cross is not None else None
  # The carry's dicts went through jit, which sorts their keys: put results back in layer order.
  pca_results = tuple({n: kernels.pca_result(s[n]) for n in order if n in s} for s, order in zip(pca_states, names))
  samples, positions, sample_labels = (), None, None
  if sampler is not None:
    slots = sampler.filled_slots()
    samples = tuple({n: np.asarray(b[n])[slots] for n in order if n in b} for b, order in zip(buffers, names))
    positions, sample_labels = sampler.slot_position[slots], sampler.slot_label[slots]
    for i, model_samples in enumerate(samples):
      bad = [n for n, a in model_samples.items() if not np.all(np.isfinite(a))]
      if bad:
        raise ValueError(f"Model {i}: the activations of layers {bad} contain NaN/Inf on the sampled examples.")
  return ModelComparison(
      within, cross_result, tuple(np.concatenate(p) for p in predictions), np.concatenate(labels),
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

  Returns:
    layer name → `(m, features)` float32, m = min(num_examples, examples in the split), rows in split order.
  """
  comparison = compare_models(model, batches, layers=layers, cka=False, sample_size=num_examples,
                              sample_seed=seed, mesh=mesh, total=total, progress=progress)
  return comparison.samples[0]


def split_batches(config, *, split: str | None = None, batch_size: int = 256, max_examples: int | None = None,
                  seed: int = 0):
  """Evaluation batches of a trained model's data, for `compare_models`: `(batches, number of batches)`.

  Args:
    config: the model's `TrainConfig` (from `rsim_jax.train.load_model`): its data source and options.
    split: the split to stream (default: the config's evaluation split).
    batch_size: examples per batch (the CKA minibatch).
    max_examples: cap on examples; a class-balanced seeded subset (`data.subsample`) when the split allows
      one, else the first `max_examples` (None = the whole split).
    seed: seed of that subset.
  """
  from rsim_jax import data

  ds = data.load(config.data, split or config.eval_split, **config.data_kwargs)
  if max_examples is not None and max_examples < len(ds.labels):
    try:
      ds = data.subsample(ds, count=max_examples - max_examples % ds.num_classes, seed=seed)
    except (ValueError, AttributeError):
      ds = data.select(ds, np.arange(max_examples))
  return data.eval_batches(ds, batch_size=batch_size), -(-len(ds.labels) // batch_size)
