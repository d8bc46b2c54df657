"""One pass over a data split: activations (from arrays or from models) → kernel accumulators.

Activations travel as ordered `dict[str, Array]` (layer name → `(n, ...)`), one dict per minibatch; they are
flattened per example only inside the kernels. With a mesh, each minibatch is split over the `data` axis and
every device's shard is one CKA minibatch (`rsim_jax.parallel.sharded_minibatch_cka_update`), so activations
stay on the devices that produced them.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class ModelComparison:
  """What one pass of a split through one or two models gives.

  Attributes:
    within: per model, its all-pairs within-model `CKAResult`.
    cross: the `(model 0 layers, model 1 layers)` `CKAResult` for two models, else None.
    predictions: per model, `(N,)` int predicted class of every example (in split order).
    labels: `(N,)` true labels.
  """

  within: tuple[CKAResult, ...]
  cross: CKAResult | None
  predictions: tuple[np.ndarray, ...]
  labels: np.ndarray

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


def compare_models(
    models,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    layers: Sequence[str] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ModelComparison:
  """Streams a split through one or two models once: within- and cross-model minibatch CKA of all layers,
  and every example's prediction.

  One jit-compiled step per batch runs the forward passes and the CKA updates, so activations never leave
  the devices; with a mesh the batch is split over its `data` axis and every device's shard is one CKA
  minibatch (batch size = per-device CKA minibatch × devices).

  Args:
    models: one NNX model, or a sequence of one or two, each `model(images, capture=True) -> (logits, dict)`.
      They are switched to eval mode.
    batches: dicts with "image" `(b, H, W, C)`, "label" `(b,)` and optional "mask" `(b,)` (padding rows False),
      e.g. from `rsim_jax.data.eval_batches`.
    layers: names of the captured layers to compare (default: all, in the model's order); with two models
      the same names must exist in both, or pass None to use each model's own full list.
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
  states = [kernels.minibatch_cka_init(len(n)) for n in names]
  cross = kernels.minibatch_cka_init(len(names[0]), len(names[1])) if len(models) == 2 else None
  params = tuple(state for _, state in forwards)
  if mesh is not None:
    params = jax.device_put(params, parallel.replicated(mesh))

  def update(cka_state, xs, ys, mask):
    if mesh is None:
      return kernels.minibatch_cka_accumulate(cka_state, kernels.minibatch._minibatch_hsic(xs, ys, mask, kernels.gram.DEFAULT_PRECISION))
    return parallel._sharded_update(cka_state, xs, ys, mask, mesh, parallel.DATA_AXIS, kernels.gram.DEFAULT_PRECISION)

  @jax.jit
  def step(params, states, cross, images, mask):
    outputs = [fwd(p, images) for (fwd, _), p in zip(forwards, params)]
    acts = [[out[1][n] for n in layer_names] for out, layer_names in zip(outputs, names)]
    states = tuple(update(s, a, None, mask) for s, a in zip(states, acts))
    if cross is not None:
      cross = update(cross, acts[0], acts[1], mask)
    predictions = tuple(jax.numpy.argmax(out[0], axis=-1) for out in outputs)
    return states, cross, predictions

  states = tuple(states)
  predictions = [[] for _ in models]
  labels = []
  num_examples = 0
  sharding = None if mesh is None else parallel.batch_sharding(mesh)
  for batch in _progress(batches, total=total, desc="extract + CKA", enabled=progress):
    images = np.asarray(batch["image"])
    mask = np.asarray(batch.get("mask", np.ones(len(images), bool)), bool)
    if mask.sum() < kernels.minibatch.MIN_EXAMPLES:
      warnings.warn(f"Skipping a batch with {int(mask.sum())} valid examples (< 4, too few for unbiased HSIC).", stacklevel=2)
      continue
    if sharding is not None:
      images, mask_in = jax.device_put((images, mask), sharding)
    else:
      mask_in = mask
    states, cross, preds = step(params, states, cross, images, mask_in)
    for i, p in enumerate(preds):
      predictions[i].append(np.asarray(p)[mask])  # (b,) ints: the only per-batch transfer
    labels.append(np.asarray(batch["label"])[mask])
    num_examples += int(mask.sum())
  if not labels:
    raise ValueError("`batches` was empty: nothing to compare.")

  def result(state, x_names, y_names):
    return CKAResult(np.asarray(kernels.minibatch_cka_result(state)), x_names, y_names, int(state.num_batches), num_examples)

  within = tuple(result(s, n, n) for s, n in zip(states, names))
  cross_result = result(cross, names[0], names[1]) if cross is not None else None
  return ModelComparison(
      within, cross_result, tuple(np.concatenate(p) for p in predictions), np.concatenate(labels)
  )
