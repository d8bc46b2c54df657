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
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from rsim_jax import capture, kernels, parallel, streaming


CKAResult = streaming.CKAResult


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


_progress = streaming.progress_bar


def stream_minibatch_cka(
    batches: Iterable[tuple[Mapping[str, jax.Array], Mapping[str, jax.Array] | None, np.ndarray | None]],
    *,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "minibatch CKA",
    stderr_groups: int = 0,
) -> CKAResult:
  """Accumulates all-pairs minibatch CKA over `(xs, ys, mask)` batches (`ys` None: a model against itself).

  Args:
    batches: iterable of `(xs, ys, mask)`: layer dicts for the same examples and an optional `(n,)` mask.
    mesh: split each batch over the mesh's `data` axis, one minibatch per device (the batch must divide over
      the mesh's devices); None: one device (on a multi-host run every process then computes the whole result).
      Host arrays must hold the whole batch on every process; each process places its rows.
    total: number of batches, for the progress bar.
    stderr_groups: 0, or G ≥ 2 to also deal each batch's HSIC terms to group `t mod G` and report the
      jackknife standard error of every entry (`CKAResult.stderr`, `kernels.minibatch_cka_jackknife`).

  Returns:
    A `CKAResult`.
  """
  _check_stderr_groups(stderr_groups)
  state = groups = None
  x_names = y_names = None
  num_examples = 0
  for xs, ys, mask in _progress(batches, total=total, desc=desc, enabled=progress):
    if state is None:
      x_names = tuple(xs)
      y_names = tuple(ys) if ys is not None else x_names
      state = kernels.minibatch_cka_init(len(x_names), None if ys is None else len(y_names))
      if stderr_groups:
        groups = kernels.minibatch_cka_groups_init(len(x_names), None if ys is None else len(y_names),
                                                   num_groups=stderr_groups)
    if tuple(xs) != x_names or (ys is not None and tuple(ys) != y_names):
      raise ValueError("Every batch must carry the same layers in the same order.")
    num_examples += int(np.sum(mask)) if mask is not None else len(next(iter(xs.values())))
    if mesh is None and groups is None:
      state = kernels.minibatch_cka_update(state, xs, ys, mask=mask)
    else:
      # One set of HSIC terms per update (device-summed on a mesh) feeds the totals and the groups alike.
      terms = kernels.minibatch_hsic(xs, ys, mask=mask) if mesh is None else _sharded_hsic(state, xs, ys, mask, mesh)
      state = kernels.minibatch_cka_accumulate(state, terms)
      if groups is not None:
        groups = _groups_accumulate(groups, terms)
  if state is None:
    raise ValueError("`batches` was empty: nothing to compare.")
  if int(state.num_skipped):
    warnings.warn(
        f"{int(state.num_skipped)} device minibatch(es) had fewer than 4 valid examples and were skipped.",
        stacklevel=2,
    )
  matrix = np.asarray(kernels.minibatch_cka_result(state))
  stderr = None if groups is None else np.asarray(kernels.minibatch_cka_jackknife(groups).stderr)
  return CKAResult(matrix, x_names, y_names, int(state.num_batches), num_examples, stderr)


_groups_accumulate = jax.jit(kernels.minibatch_cka_groups_accumulate)


def _check_stderr_groups(stderr_groups) -> None:
  if (isinstance(stderr_groups, bool) or not isinstance(stderr_groups, (int, np.integer))
      or (stderr_groups != 0 and stderr_groups < 2)):
    raise ValueError(f"`stderr_groups` must be 0 (no standard error) or an integer ≥ 2 (groups of batches for the "
                     f"jackknife; some 20 or more for a useful standard error), got {stderr_groups!r}.")


def _sharded_hsic(state, xs, ys, mask, mesh):
  """One global batch (host arrays holding the whole batch on every process) → its device-summed HSIC terms."""
  xs, ys, mask = kernels.minibatch.prepare_batch(xs, ys, mask, state)
  n = xs[0].shape[0]
  parallel.check_divides(n, mesh, "The batch")
  if n // mesh.shape[parallel.DATA_AXIS] < kernels.minibatch.MIN_EXAMPLES:
    raise ValueError(f"The batch of {n} examples leaves fewer than {kernels.minibatch.MIN_EXAMPLES} per device "
                     f"on {mesh.shape[parallel.DATA_AXIS]} devices (unbiased HSIC); use a larger batch size.")
  if mask is None:
    mask = np.ones((n,), bool)
  if jax.process_count() > 1:
    parallel.check_mesh_spans_processes(mesh)
    sharding = parallel.batch_sharding(mesh)
    xs = [parallel.place_whole(x, sharding) for x in xs]
    ys = None if ys is None else [parallel.place_whole(y, sharding) for y in ys]
    mask = parallel.place_whole(mask, sharding)
  return parallel.sharded_minibatch_hsic(xs, ys, mask, mesh=mesh)


def minibatch_cka_of_arrays(
    xs: Mapping[str, np.ndarray],
    ys: Mapping[str, np.ndarray] | None = None,
    *,
    batch_size: int = 256,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    stderr_groups: int = 0,
) -> CKAResult:
  """Minibatch CKA between stored activations (e.g. the arrays of an .npz file per model).

  Args:
    xs: layer name → `(N, ...)` activations of the first model.
    ys: the same N examples through a second model, or None to compare `xs` with itself.
    batch_size: b, the CKA minibatch, per device: with a mesh of D devices each global batch holds D·b
      examples, D minibatches of b consecutive examples, which gives the same numbers as one device with b.
    mesh: a mesh with a `data` axis (all devices of all hosts: `parallel.data_mesh()`), or None for one device.
    stderr_groups: G ≥ 2 adds a jackknife standard error to every entry (`CKAResult.stderr`): global batch t
      (one update, its D minibatches summed over the mesh) goes to group `t mod G`; 0 = none.
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
      split(array_batches(merged, batch_size=global_batch)), mesh=mesh, total=total, progress=progress,
      stderr_groups=stderr_groups,
  )


# --- Models → layers → accumulators (the project's models through the public streaming API) --------------


ExampleSampler = streaming.ExampleSampler


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
    stderr_groups: int = 0,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ModelComparison:
  """Streams a split through one or two of rsim_jax's models once and feeds every layer to the kernels.

  The studies' front end to `rsim_jax.streaming.analyze` (use that directly for other models, other batch
  structures or statistics of your own): in the same pass, within- and cross-model all-pairs minibatch CKA,
  a streaming PCA of chosen layers (`kernels.pca_update`: mean and centred scatter, Chan et al.), a fixed
  random sample of every layer's activations (for intrinsic dimension or a full-batch PCA of wide layers),
  and every example's prediction. One jit-compiled step per batch runs the forward passes and all updates,
  so activations never leave the devices. Each global batch of B examples is split over the mesh's D devices
  (all devices of all hosts by default) and every device's shard of b = B/D consecutive examples is one CKA
  minibatch: the result equals streaming b-example batches through one device (Nguyen et al. 2021's
  minibatch CKA is a mean of per-minibatch HSIC₁ values, summed across devices with `psum`).
  `split_batches(config, batch_size=b)` makes B = b·D.

  Multi-host: every process calls this with its own rows of each global batch (`data.eval_batches` with the
  global batch size), in process order; the returned `ModelComparison` (CKA, PCA, samples, predictions of
  all N examples) is the same on every process.

  Memory on device, beyond the forward pass: per PCA layer `2·d²` floats (hence `pca_max_features`; use the
  sample and `kernels.pca`, whose Gram route costs `m²`, for wider layers); per sampled layer `m·d` floats.

  Args:
    models: one NNX model, or a sequence of one or two, each `model(images, capture=True) -> (logits, dict)`.
      They are switched to eval mode (the studies compare trained networks in inference mode).
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
    stderr_groups: G ≥ 2 adds a jackknife standard error to every CKA entry (`CKAResult.stderr`).
    mesh: a mesh with a `data` axis; None: `parallel.data_mesh()`, all devices of all hosts (pass
      `parallel.data_mesh(1)` for one device on a single host).
    total: number of batches, for the progress bar.
  """
  if not isinstance(models, (list, tuple)):
    models = [models]
  if not 1 <= len(models) <= 2:
    raise ValueError(f"`models` must be one or two models, got {len(models)}.")
  for m in models:
    m.eval()
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
  if sample_size:
    ExampleSampler(sample_size)  # validates it before any work
  stats: dict[str, streaming.Statistic] = {"predictions": streaming.Predictions()}
  if cka:
    for i, layer_names in enumerate(names):
      stats[f"within{i}"] = streaming.CKA(model=i, layers=layer_names, stderr_groups=stderr_groups)
    if len(models) == 2:
      stats["cross"] = streaming.CrossCKA(layers=tuple(names), stderr_groups=stderr_groups)
  for i, chosen in enumerate(pca_names):
    if chosen:
      stats[f"pca{i}"] = streaming.PCA(model=i, layers=chosen, max_features=pca_max_features)
  if sample_size:
    stats["sample"] = streaming.Sample(size=sample_size, seed=sample_seed, layers=tuple(names))
  out = streaming.analyze([capture.rsim_model(m) for m in models], batches, stats, mesh=mesh, total=total,
                          progress=progress, desc="extract")
  sampled = out.results.get("sample")
  return ModelComparison(
      within=tuple(out[f"within{i}"] for i in range(len(models))) if cka else (),
      cross=out.results.get("cross"),
      predictions=out["predictions"],
      labels=out.labels,
      pca=tuple(out.results.get(f"pca{i}", {}) for i in range(len(models))),
      samples=sampled.activations if sampled else (),
      sample_positions=sampled.positions if sampled else None,
      sample_labels=sampled.labels if sampled else None,
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
