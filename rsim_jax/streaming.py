"""The public streaming API: one pass of a data split through one or two models, every layer into statistics.

    from rsim_jax import capture, streaming

    model = capture.nnx_model(my_vit, include="blocks.*")          # or linen_model / function_model / auto
    out = streaming.analyze(model, batches, {"cka": streaming.CKA(), "pca": streaming.PCA()},
                            inputs=lambda batch: batch["image"])
    out["cka"].matrix, out["pca"]["blocks.3"].explained_variance_ratio

`batches` is any iterable of pytrees (dicts, tuples, `tf.data`/`grain` numpy batches): `inputs(batch)` gives
the model's inputs, `mask(batch)` an optional `(b,)` bool for padding rows of a ragged last batch, and
`labels(batch)` optional integer labels. On a multi-host run every process passes its own rows of each global
batch (as `rsim_jax.data.eval_batches` yields them) and gets the same results.

Each statistic is an accumulator with the kernels' pattern — `init / update / merge / result` — run inside
one jitted step per batch, so activations never leave the devices that computed them. Built in:

  CKA(model=0, layers=None)            all-pairs minibatch CKA within a model (`extract.CKAResult`)
  CrossCKA(layers=(None, None))        model 0's layers × model 1's layers
  PCA(model=0, layers=None)            streamed PCA per layer (mean and centred scatter; `kernels.PCAResult`)
  Sample(size, seed=0)                 a fixed uniform random sample of every layer's activations (`Sampled`)
  Predictions()                        argmax of every model's output, per example, in split order

and a user's own statistic subclasses `Statistic` (see its docstring; `tests/test_streaming.py` adds one).

Sharding: each global batch of B examples is split over the mesh's `data` axis (all devices of all hosts by
default); every device's b = B/D consecutive examples are one CKA minibatch, so the numbers equal streaming
b-example batches through one device. Mode (train/eval) is the caller's: the API runs the model as given.

The lower-level form, for a loop of your own (or for merging passes over disjoint shards of the data):

    stream = streaming.Stream(model, stats, inputs=...)
    state = None
    for batch in batches:
      state = stream.update(state, batch)          # the first call initialises from the batch's shapes
    results = stream.result(state)                 # or stream.result(stream.merge(state_a, state_b))
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax import capture as capture_lib
from rsim_jax import kernels, parallel

Batch = Any


# --- What a statistic sees -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Context:
  """What is known before the first update: the models' layers and where the data lives.

  Attributes:
    layer_names: per model, every captured layer's name in call order.
    layer_shapes: per model, layer name → `jax.ShapeDtypeStruct` of one global batch's activations.
    output_shapes: per model, the output's shape struct (None when the model has none).
    mesh: the data mesh; `axis_name` its example axis.
    model_names: per model, its label.
  """

  layer_names: tuple[tuple[str, ...], ...]
  layer_shapes: tuple[dict[str, jax.ShapeDtypeStruct], ...]
  output_shapes: tuple[Any, ...]
  mesh: jax.sharding.Mesh
  axis_name: str
  model_names: tuple[str, ...]

  @property
  def num_models(self) -> int:
    return len(self.layer_names)

  def width(self, model: int, layer: str) -> int:
    """Flattened per-example width of a layer."""
    return int(np.prod(self.layer_shapes[model][layer].shape[1:]))

  def check_model(self, model: int, what: str) -> int:
    if not isinstance(model, (int, np.integer)) or not 0 <= model < self.num_models:
      raise ValueError(f"{what}: `model`={model!r} is not one of the {self.num_models} model(s) streamed.")
    return int(model)

  def resolve_layers(self, model: int, layers: Sequence[str] | None, what: str) -> tuple[str, ...]:
    """`layers` (None: all) checked against the model's captured layers, in the given order."""
    model = self.check_model(model, what)
    if layers is None:
      return self.layer_names[model]
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    missing = [n for n in layers if n not in self.layer_shapes[model]]
    if missing:
      raise ValueError(f"{what}: layers {missing} are not captured by model {model} "
                       f"({self.model_names[model]}); captured: {list(self.layer_names[model])}.")
    if not layers:
      raise ValueError(f"{what}: `layers` is empty; pass None for all layers.")
    return layers


@dataclasses.dataclass(frozen=True)
class BatchInfo:
  """Host-side facts about one global batch, the same on every process.

  Attributes:
    mask: `(B,)` bool, False for padding rows.
    positions: `(B,)` int64 position of each valid row among the split's valid examples, −1 for padding.
    labels: `(B,)` labels, or None when the batches carry none.
  """

  mask: np.ndarray
  positions: np.ndarray
  labels: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Step:
  """What a statistic's `update` sees for one global batch, inside the jitted step.

  Attributes:
    activations: per model, layer name → `(B, ...)` activation as captured (split over the data axis), in
      call order (`Context.layer_names`).
    outputs: per model, the model's output (or None).
    mask: `(B,)` bool.
    extras: this statistic's per-row host inputs for the batch (from `host_update`), or None.
    mesh, axis_name: the data mesh and its example axis.
  """

  activations: tuple[Mapping[str, jax.Array], ...]
  outputs: tuple[Any, ...]
  mask: jax.Array
  extras: Any
  mesh: jax.sharding.Mesh
  axis_name: str

  def flat(self, model: int, layer: str) -> jax.Array:
    """`(B, features)` float32: the layer flattened per example, as the kernels take it."""
    x = self.activations[model][layer]
    return x.reshape(x.shape[0], -1).astype(jnp.float32)


class Statistic:
  """An accumulator over the stream: `init / update / merge / result`, plus optional host-side hooks.

  `init(ctx)` returns the device state (a pytree of arrays, replicated on the mesh); `update(state, step)`
  is traced inside the jitted step (pure; collectives over `step.axis_name` through `rsim_jax.parallel`);
  `merge(a, b)` combines the states of two passes over disjoint data; `result(state, host, ctx)` turns the
  final state (gathered to every host) into the user's result.

  Host hooks, for statistics that need per-row decisions made on the host (which examples to sample) or
  collect per-batch outputs: `host_init(ctx) -> host`, `host_update(host, info: BatchInfo) -> (host, extras)`
  (extras: a pytree of `(B, ...)` arrays, the same on every process, passed to `update` as `step.extras`),
  `emit(state, step) -> pytree` (a per-batch output kept on the devices) and `host_collect(host, emitted,
  info) -> host`. The defaults do nothing.
  """

  def bind(self, ctx: Context) -> "Statistic":
    """This statistic with facts from `ctx` fixed before tracing (e.g. resolved layer names, which must be
    static inside the jitted step); the default needs none and returns `self`."""
    return self

  def init(self, ctx: Context):
    raise NotImplementedError

  def update(self, state, step: Step):
    raise NotImplementedError

  def merge(self, a, b):
    raise NotImplementedError(f"{type(self).__name__} states cannot be merged.")

  def result(self, state, host, ctx: Context):
    raise NotImplementedError

  def host_init(self, ctx: Context):
    return None

  def host_update(self, host, info: BatchInfo):
    return host, None

  def emit(self, state, step: Step):
    return None

  def host_collect(self, host, emitted, info: BatchInfo):
    return host

  def host_merge(self, a, b):
    return a if b is None else b if a is None else self._host_merge(a, b)

  def _host_merge(self, a, b):
    raise NotImplementedError(f"{type(self).__name__} cannot merge host state.")


def _host_tree(tree):
  return jax.tree.map(parallel.to_host, tree)


# --- Built-in statistics -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CKAResult:
  """All-pairs minibatch CKA with the layer names of its rows (`x_names`) and columns (`y_names`).

  `stderr`, when requested (`CKA(stderr_groups=G)`), is the leave-one-group-out jackknife standard error of
  every entry (`kernels.minibatch_cka_jackknife`), from the same pass.
  """

  matrix: np.ndarray  # (num_x, num_y)
  x_names: tuple[str, ...]
  y_names: tuple[str, ...]
  num_batches: int
  num_examples: int
  stderr: np.ndarray | None = None

  def to_json(self) -> dict:
    out = {
        "cka": np.asarray(self.matrix, np.float64).tolist(),
        "x_names": list(self.x_names),
        "y_names": list(self.y_names),
        "num_batches": self.num_batches,
        "num_examples": self.num_examples,
    }
    if self.stderr is not None:
      out["stderr"] = np.asarray(self.stderr, np.float64).tolist()
    return out


def _warn_skipped(state) -> None:
  if int(state.num_skipped):
    warnings.warn(f"{int(state.num_skipped)} device minibatch(es) had fewer than {kernels.minibatch.MIN_EXAMPLES} "
                  "valid examples and were skipped (unbiased HSIC); use a larger batch.", stacklevel=3)


@dataclasses.dataclass(frozen=True)
class CKA(Statistic):
  """All-pairs minibatch CKA between the layers of one model (Nguyen et al. 2021; `kernels.minibatch`).

  Args:
    model: which streamed model.
    layers: layer names (None: all captured, in call order).
    stderr_groups: 0, or G ≥ 2 to also keep per-group HSIC sums (batch t → group t mod G) and report a
      jackknife standard error of every entry (`CKAResult.stderr`).
  """

  model: int = 0
  layers: Sequence[str] | None = None
  stderr_groups: int = 0

  def layers_of(self, ctx):
    return (ctx.resolve_layers(self.model, self.layers, "CKA"),)

  def init(self, ctx):
    names = self.layers_of(ctx)
    num_y = None if len(names) == 1 else len(names[1])
    state = {"sums": kernels.minibatch_cka_init(len(names[0]), num_y)}
    if self.stderr_groups:
      state["groups"] = kernels.minibatch_cka_groups_init(len(names[0]), num_y, num_groups=self.stderr_groups)
    return state

  def _acts(self, step, ctx_names):
    return [step.activations[self.model][n] for n in ctx_names[0]], None

  def update(self, state, step):
    xs, ys = self._acts(step, self._static_names)
    terms = parallel.sharded_minibatch_hsic(xs, ys, step.mask, mesh=step.mesh, axis_name=step.axis_name)
    out = {"sums": kernels.minibatch_cka_accumulate(state["sums"], terms)}
    if "groups" in state:
      out["groups"] = kernels.minibatch_cka_groups_accumulate(state["groups"], terms)
    return out

  def merge(self, a, b):
    out = {"sums": kernels.minibatch_cka_merge(a["sums"], b["sums"])}
    if "groups" in a:
      out["groups"] = kernels.minibatch_cka_groups_merge(a["groups"], b["groups"])
    return out

  def result(self, state, host, ctx):
    names = self.layers_of(ctx)
    sums = state["sums"]
    _warn_skipped(sums)
    matrix = np.asarray(kernels.minibatch_cka_result(sums))
    stderr = None
    if "groups" in state:
      stderr = np.asarray(kernels.minibatch_cka_jackknife(state["groups"]).stderr)
    return CKAResult(matrix, names[0], names[-1], int(sums.num_batches), int(host or 0), stderr)

  def bind(self, ctx):
    # A copy holding the resolved layer names (static inside the jitted step); frozen, so set once here.
    bound = dataclasses.replace(self)
    object.__setattr__(bound, "_static_names", self.layers_of(ctx))
    return bound

  # The number of valid examples seen (for `CKAResult.num_examples`) is counted on the host.
  def host_init(self, ctx):
    return 0

  def host_update(self, host, info):
    return host + int(info.mask.sum()), None

  def _host_merge(self, a, b):
    return a + b


@dataclasses.dataclass(frozen=True)
class CrossCKA(CKA):
  """All-pairs minibatch CKA between two models' layers: rows model `models[0]`, columns `models[1]`.

  Args:
    models: the two streamed models compared.
    layers: `(layers of the first, layers of the second)`, each None for all.
    stderr_groups: as in `CKA`.
  """

  models: tuple[int, int] = (0, 1)
  layers: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None)

  def layers_of(self, ctx):
    if ctx.num_models < 2:
      raise ValueError("CrossCKA compares two models, but one model was streamed; pass two models.")
    if len(self.models) != 2 or len(self.layers) != 2:
      raise ValueError("CrossCKA: `models` and `layers` must each have two entries (first model, second model).")
    return tuple(ctx.resolve_layers(m, l, "CrossCKA") for m, l in zip(self.models, self.layers))

  def _acts(self, step, names):
    return ([step.activations[self.models[0]][n] for n in names[0]],
            [step.activations[self.models[1]][n] for n in names[1]])


@dataclasses.dataclass(frozen=True)
class PCA(Statistic):
  """A streamed PCA of chosen layers of one model (`kernels.pca_update`: count, mean, centred scatter with
  Chan et al.'s parallel update across devices). Memory `2·d²` per layer, hence `max_features`.

  Result: layer name → `kernels.PCAResult` (explained variance, ratios, components), in layer order.
  """

  model: int = 0
  layers: Sequence[str] | None = None
  max_features: int = 4096

  def init(self, ctx):
    names = ctx.resolve_layers(self.model, self.layers, "PCA")
    widths = {n: ctx.width(self.model, n) for n in names}
    too_wide = {n: w for n, w in widths.items() if w > self.max_features}
    if too_wide:
      raise ValueError(
          f"PCA layers {too_wide} (flattened widths) exceed `max_features`={self.max_features} (`pca_max_features` "
          "in `extract.compare_models`): a streamed PCA "
          "keeps a d × d scatter. Use the activation sample (`Sample`) and `kernels.pca` (Gram route) for them, "
          "or raise the limit if the memory (8·d² bytes per layer) is available."
      )
    return {n: kernels.pca_init(w) for n, w in widths.items()}

  def update(self, state, step):
    return {n: parallel.sharded_pca_accumulate(s, step.flat(self.model, n), step.mask, mesh=step.mesh,
                                               axis_name=step.axis_name) for n, s in state.items()}

  def merge(self, a, b):
    return {n: kernels.pca_merge(a[n], b[n]) for n in a}

  def result(self, state, host, ctx):
    # The state went through jit, which sorts dict keys: put results back in layer order.
    order = ctx.resolve_layers(self.model, self.layers, "PCA")
    return {n: jax.tree.map(np.asarray, kernels.pca_result(state[n])) for n in order}


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
class Sampled:
  """A fixed random sample of examples: per model, layer name → `(m, features)` float32 flattened
  activations; the examples' `positions` in the split (sorted) and `labels` — the same examples for every
  model."""

  activations: tuple[dict[str, np.ndarray], ...]
  positions: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Sample(Statistic):
  """A seeded uniform random sample of `size` examples of every chosen layer (`ExampleSampler`: independent
  of batch size and device count), for intrinsic dimension, full-batch CKA or the other indices.

  Args:
    size: m, examples kept.
    seed: fixes the subset (two models or checkpoints with the same seed see the same examples).
    layers: per model, layer names (None: all); a single None applies to every model.
    models: which models (None: all).

  Memory on device: `m·d` floats per sampled layer.
  """

  size: int = 1000
  seed: int = 0
  layers: Any = None
  models: Sequence[int] | None = None

  def _plan(self, ctx):
    models = tuple(range(ctx.num_models)) if self.models is None else tuple(self.models)
    layers = self.layers if isinstance(self.layers, (list, tuple)) and self.layers and not isinstance(
        self.layers[0], str) else (self.layers,) * len(models)
    if len(layers) != len(models):
      raise ValueError(f"Sample: `layers` has {len(layers)} entries for {len(models)} models.")
    return {m: ctx.resolve_layers(m, l, "Sample") for m, l in zip(models, layers)}

  def init(self, ctx):
    ExampleSampler(self.size)  # validates `size`
    return {str(m): {n: jnp.zeros((self.size, ctx.width(m, n)), jnp.float32) for n in names}
            for m, names in self._plan(ctx).items()}

  def host_init(self, ctx):
    return ExampleSampler(self.size, seed=self.seed)

  def host_update(self, sampler, info):
    return sampler, sampler.assign(info.positions, info.labels)

  def update(self, state, step):
    # The few kept rows may sit on any device: gather this batch's rows (B × d) rather than combine m × d
    # buffers across devices.
    whole = jax.sharding.PartitionSpec()
    dest = parallel.lay_out(step.extras, whole, step.mesh, step.axis_name)
    out = {}
    for m, buffers in state.items():
      out[m] = {}
      for n, buffer in buffers.items():
        x = parallel.lay_out(step.flat(int(m), n), whole, step.mesh, step.axis_name)
        # Rows with dest == m (not sampled, or padding) fall outside the buffer and are dropped.
        out[m][n] = buffer.at[dest].set(x, mode="drop")
    return out

  def result(self, state, sampler, ctx):
    slots = sampler.filled_slots()
    acts = []
    for m, names in self._plan(ctx).items():
      layer_acts = {n: np.asarray(state[str(m)][n])[slots] for n in names}
      bad = [n for n, a in layer_acts.items() if not np.all(np.isfinite(a))]
      if bad:
        raise ValueError(f"Model {m}: the activations of layers {bad} contain NaN/Inf on the sampled examples.")
      acts.append(layer_acts)
    return Sampled(tuple(acts), sampler.slot_position[slots], sampler.slot_label[slots])


@dataclasses.dataclass(frozen=True)
class Predictions(Statistic):
  """Every example's predicted class (argmax of the model's output), per model, in split order: a tuple of
  `(N,)` int arrays. Per-batch predictions stay on the devices and are gathered once at the end."""

  models: Sequence[int] | None = None

  def _models(self, ctx):
    models = tuple(range(ctx.num_models)) if self.models is None else tuple(self.models)
    for m in models:
      ctx.check_model(m, "Predictions")
      if ctx.output_shapes[m] is None:
        raise ValueError(f"Predictions: model {m} ({ctx.model_names[m]}) has no output to take the argmax of.")
    return models

  def init(self, ctx):
    self._models(ctx)
    return {}

  def update(self, state, step):
    return state

  def merge(self, a, b):
    return {}

  def emit(self, state, step):
    return tuple(jnp.argmax(step.outputs[m], axis=-1) for m in self._static_models)

  def bind(self, ctx):
    # A copy holding the checked model indices (static inside the jitted step).
    bound = dataclasses.replace(self)
    object.__setattr__(bound, "_static_models", self._models(ctx))
    return bound

  def host_init(self, ctx):
    return []

  def host_collect(self, host, emitted, info):
    return host + [(emitted, info.mask)]

  def _host_merge(self, a, b):
    return a + b

  def result(self, state, per_batch, ctx):
    models = self._models(ctx)
    if not per_batch:
      return tuple(np.zeros((0,), np.int32) for _ in models)
    stacked = [parallel.to_host(jnp.stack([e[i] for e, _ in per_batch])) for i in range(len(models))]
    return tuple(np.concatenate([v[mask] for v, (_, mask) in zip(values, per_batch)]) for values in stacked)


# --- The stream ----------------------------------------------------------------------------------------


def default_inputs(batch):
  """`batch["image"]` for dict batches with an "image" key (rsim_jax's data pipeline), else the batch."""
  return batch["image"] if isinstance(batch, Mapping) and "image" in batch else batch


def default_mask(batch):
  return batch.get("mask") if isinstance(batch, Mapping) else None


def default_labels(batch):
  return batch.get("label") if isinstance(batch, Mapping) else None


@dataclasses.dataclass
class StreamState:
  """Everything accumulated so far: per statistic its device state and host state, the examples seen."""

  device: dict[str, Any]
  host: dict[str, Any]
  num_examples: int
  labels: list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class StreamResult(Mapping):
  """Named results of one pass (a read-only mapping statistic name → result), with the pass's facts.

  Attributes:
    results: statistic name → its result.
    labels: `(N,)` labels of the valid examples in split order (None when the batches carry none).
    num_examples: N, valid examples streamed.
    context: the `Context` (layer names and shapes per model).
  """

  results: dict[str, Any]
  labels: np.ndarray | None
  num_examples: int
  context: Context

  def __getitem__(self, key):
    return self.results[key]

  def __iter__(self):
    return iter(self.results)

  def __len__(self):
    return len(self.results)


class Stream:
  """One or two captured models, named statistics and the accessors of a batch; `init/update/merge/result`.

  Args:
    models: a model or a sequence of one or two (`capture.CapturedModel`, or anything `capture.auto`
      accepts: an rsim_jax model, an NNX module).
    stats: statistic name → `Statistic`.
    inputs: `batch → model inputs` (a pytree of `(b, ...)` arrays: this process's rows).
    mask: `batch → (b,)` bool or None (padding rows of a ragged batch are False).
    labels: `batch → (b,)` int labels or None.
    mesh: a mesh with a `data` axis; None: all devices of all hosts on an Auto axis
      (`parallel.data_mesh(axis_type=AxisType.Auto)`), so that any model runs unchanged.
  """

  def __init__(self, models, stats: Mapping[str, Statistic], *, inputs: Callable[[Batch], Any] = default_inputs,
               mask: Callable[[Batch], Any] = default_mask, labels: Callable[[Batch], Any] = default_labels,
               mesh: jax.sharding.Mesh | None = None, axis_name: str = parallel.DATA_AXIS):
    models = list(models) if isinstance(models, (list, tuple)) else [models]
    if not 1 <= len(models) <= 2:
      raise ValueError(f"`models` must be one or two models, got {len(models)}.")
    self.models = [capture_lib.auto(m) for m in models]
    if not isinstance(stats, Mapping) or not stats:
      raise ValueError("`stats` must be a non-empty mapping of name → Statistic, e.g. {'cka': streaming.CKA()}.")
    for name, stat in stats.items():
      if not isinstance(stat, Statistic):
        raise TypeError(f"`stats[{name!r}]` is a {type(stat).__name__}, not a streaming.Statistic.")
    self.stats = dict(stats)
    self.inputs, self.mask_fn, self.labels_fn = inputs, mask, labels
    # Auto axes by default: a user's model (reshapes, einsums) runs as written and XLA propagates the batch
    # split; on an Explicit mesh every such op would need its output sharding spelled out.
    self.mesh = parallel.data_mesh(axis_type=jax.sharding.AxisType.Auto) if mesh is None else mesh
    self.axis_name = axis_name
    if axis_name not in self.mesh.axis_names:
      raise ValueError(f"`mesh` must have a {axis_name!r} axis, got axes {self.mesh.axis_names}.")
    parallel.check_mesh_spans_processes(self.mesh)
    self.sharding = parallel.batch_sharding(self.mesh, axis_name=axis_name)
    self.context: Context | None = None
    self._params = None
    self._step = None
    self._rows: dict[int, tuple[int, int]] = {}

  # -- setup on the first batch: shapes are known only then.

  def _setup(self, global_inputs) -> None:
    outputs, shapes, names = [], [], []
    for model in self.models:
      try:
        output, acts = model.trace(global_inputs)
      except Exception as error:  # jax's ShardingTypeError is not exported: recognise it by name
        if type(error).__name__ != "ShardingTypeError":
          raise
        raise ValueError(
            f"Model {model.name} cannot run on inputs split over the Explicit mesh axis {self.axis_name!r}: "
            f"{error}. Pass `mesh=parallel.data_mesh(axis_type=jax.sharding.AxisType.Auto)` (the default when "
            "`mesh` is None), where XLA propagates the split through your model's ops.") from error
      outputs.append(output)
      shapes.append(dict(acts))
      names.append(tuple(acts))
      if not acts:
        raise ValueError(f"Model {model.name} captured no layers for these inputs; check the capture filters.")
    self.context = Context(tuple(names), tuple(shapes), tuple(outputs), self.mesh, self.axis_name,
                           tuple(m.name for m in self.models))
    self.stats = {k: s.bind(self.context) for k, s in self.stats.items()}
    self._params = parallel.replicate(tuple(m.params for m in self.models), self.mesh)
    self._step = self._make_step()

  def _make_step(self):
    models, stats, ctx = self.models, self.stats, self.context

    # The device states are donated: sample buffers (m × d per layer) are updated in place, not copied.
    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(params, states, inputs, mask, extras):
      outputs, acts = [], []
      for model, p, names in zip(models, params, ctx.layer_names):
        out, layer_acts = model.apply(p, inputs)
        outputs.append(out)
        acts.append({n: layer_acts[n] for n in names})  # in call order
      new_states, emitted = {}, {}
      for name, stat in stats.items():
        view = Step(tuple(acts), tuple(outputs), mask, extras[name], ctx.mesh, ctx.axis_name)
        new_states[name] = stat.update(states[name], view)
        emitted[name] = stat.emit(new_states[name], view)
      return new_states, emitted

    return step

  def _global(self, local, global_rows: int):
    local = np.asarray(local)
    return jax.make_array_from_process_local_data(self.sharding, local, (global_rows,) + local.shape[1:])

  def init(self, batch=None) -> StreamState:
    """An empty state; with `batch`, also traces the models on its shapes (else the first `update` does)."""
    if batch is not None and self.context is None:
      self._prepare(batch)
    if self.context is None:
      return None
    device = parallel.replicate({k: s.init(self.context) for k, s in self.stats.items()}, self.mesh)
    host = {k: s.host_init(self.context) for k, s in self.stats.items()}
    return StreamState(device, host, 0, [])

  def _prepare(self, batch):
    """Host arrays of one batch → (global inputs, global mask, BatchInfo facts), setting up on first use."""
    local_inputs = jax.tree.map(np.asarray, self.inputs(batch))
    leaves = jax.tree.leaves(local_inputs)
    if not leaves:
      raise ValueError("`inputs(batch)` returned no arrays.")
    local_rows = leaves[0].shape[0]
    for leaf in leaves:
      if leaf.shape[:1] != (local_rows,):
        raise ValueError(f"Every input array must have the batch's {local_rows} rows first; got shape {leaf.shape}.")
    local_mask = self.mask_fn(batch)
    local_mask = np.ones(local_rows, bool) if local_mask is None else np.asarray(local_mask, bool)
    if local_mask.shape != (local_rows,):
      raise ValueError(f"`mask(batch)` must have shape ({local_rows},), got {local_mask.shape}.")
    local_labels = self.labels_fn(batch)
    # Every process needs the global batch's mask and labels: positions in the split and sampling decisions
    # must be the same everywhere.
    mask = parallel.gather_rows(local_mask)
    labels = None if local_labels is None else parallel.gather_rows(np.asarray(local_labels))
    global_rows = len(mask)
    if global_rows not in self._rows:
      parallel.check_divides(global_rows, self.mesh, "The global batch", axis_name=self.axis_name)
      self._rows[global_rows] = parallel.process_rows(self.sharding, global_rows, local_rows)
    global_inputs = jax.tree.map(lambda x: self._global(x, global_rows), local_inputs)
    if self.context is None:
      self._setup(global_inputs)
    return global_inputs, local_mask, mask, labels

  def update(self, state: StreamState | None, batch) -> StreamState:
    """Streams one batch (this process's rows) into every statistic; `state` None starts a new pass.

    The device states are donated to the step and host states are updated in place: use the returned state,
    not the one passed in."""
    global_inputs, local_mask, mask, labels = self._prepare(batch)
    if state is None:
      state = self.init()
    global_rows = len(mask)
    lo, hi = self._rows[global_rows]
    positions = np.where(mask, state.num_examples + np.cumsum(mask) - 1, -1)
    info = BatchInfo(mask, positions, labels)
    extras = {}
    for name, stat in self.stats.items():
      state.host[name], host_extras = stat.host_update(state.host[name], info)
      extras[name] = None if host_extras is None else jax.tree.map(
          lambda x: self._global(np.asarray(x)[lo:hi], global_rows), host_extras)
    device, emitted = self._step(self._params, state.device, global_inputs,
                                 self._global(local_mask, global_rows), extras)
    for name, stat in self.stats.items():
      state.host[name] = stat.host_collect(state.host[name], emitted[name], info)
    if labels is not None:
      state.labels.append(labels[mask])
    return StreamState(device, state.host, state.num_examples + int(mask.sum()), state.labels)

  def merge(self, a: StreamState, b: StreamState) -> StreamState:
    """Combines the states of two passes over disjoint data (e.g. shards read by separate jobs).

    Statistics whose order matters (samples, predictions) refuse; CKA and PCA merge exactly.
    """
    device = {k: s.merge(a.device[k], b.device[k]) for k, s in self.stats.items()}
    host = {k: s.host_merge(a.host[k], b.host[k]) for k, s in self.stats.items()}
    return StreamState(device, host, a.num_examples + b.num_examples, a.labels + b.labels)

  def result(self, state: StreamState | None) -> StreamResult:
    """Every statistic's result, the same on every process."""
    if state is None or self.context is None:
      raise ValueError("`batches` was empty: nothing to compare.")
    device = _host_tree(state.device)
    results = {k: s.result(device[k], state.host[k], self.context) for k, s in self.stats.items()}
    labels = np.concatenate(state.labels) if state.labels else None
    return StreamResult(results, labels, state.num_examples, self.context)


def analyze(
    models,
    batches: Iterable[Batch],
    stats: Mapping[str, Statistic],
    *,
    inputs: Callable[[Batch], Any] = default_inputs,
    mask: Callable[[Batch], Any] = default_mask,
    labels: Callable[[Batch], Any] = default_labels,
    mesh: jax.sharding.Mesh | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "analyze",
) -> StreamResult:
  """Streams `batches` through one or two models once and returns every statistic's result by name.

  Args:
    models: one or two `capture.CapturedModel`s (or rsim_jax / NNX models, captured with `capture.auto`).
    batches: this process's rows of each global batch, any pytree; the global batch must divide over the
      mesh's devices (each device's share is one CKA minibatch).
    stats: name → `Statistic` (`CKA`, `CrossCKA`, `PCA`, `Sample`, `Predictions`, or your own).
    inputs, mask, labels: accessors of a batch (see `Stream`).
    mesh: a mesh with a `data` axis; None: all devices of all hosts (an Auto axis: models run unchanged).
    total: number of batches, for the progress bar.

  Returns:
    A `StreamResult`: `result[name]` for each statistic, plus `labels`, `num_examples`, `context`.
  """
  stream = Stream(models, stats, inputs=inputs, mask=mask, labels=labels, mesh=mesh)
  state = None
  for batch in progress_bar(batches, total=total, desc=desc, enabled=progress):
    state = stream.update(state, batch)
  return stream.result(state)


def progress_bar(iterable, *, total=None, desc: str, enabled: bool = True):
  """`iterable` with a tqdm progress bar on process 0 when `enabled` (unchanged otherwise)."""
  if not enabled or jax.process_index() != 0:
    return iterable
  from tqdm.auto import tqdm  # noqa: PLC0415

  return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True)
