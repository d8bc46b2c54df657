"""The training loop: data-parallel SGD of an NNX model with Orbax checkpoints, JSONL metrics and resume.

    from rsim_jax.train import TrainConfig, train, load_model
    final = train(TrainConfig(model="resnet", model_kwargs={"depth": 20}, data="digits"), "runs/r20")
    model, config = load_model("runs/r20")          # eval mode, weights of the last checkpoint

Parallelism: one `jax.jit`-compiled step over the whole global batch, the batch split along the "data" axis
of a mesh of all devices (`rsim_jax.parallel.data_mesh`) and the state replicated. The step is written for the
global batch, so BatchNorm statistics, the loss and the gradients are those of the global batch: 8 devices
compute what 1 device computes (up to the order of floating-point sums).

Data: the training and evaluation splits are held in memory (`rsim_jax.data.load`) or, for data sets that
cannot be (ImageNet through tfds: images of varying size) or with `stream=True`, read record by record from a
random-access source (`rsim_jax.data.open_source`) through grain, with the Inception crop + flip for training
and resize + centre crop for evaluation. Both paths make the same batches: global step s of seed `seed` holds
the same examples (augmented the same way) however the run was interrupted and resumed, and each process reads
only its rows of every global batch (`train_batches`'s process share), assembled into the global batch with
`jax.make_array_from_process_local_data` (`data.to_global`).

Multi-host (a TPU VM slice: one process per host, every process running the same `train` call after
`jax.distributed.initialize()`): the mesh spans the devices of all hosts, each process feeds its rows, the
state is replicated on every device, and only process 0 writes files (`rsim_jax.io`). The work directory may be
`gs://…`; it must be one directory that every process sees (Orbax checkpoints are written by all processes).

Work directory layout:
    config.json           the `TrainConfig`
    metrics.jsonl         one JSON object per line (train: loss, accuracy, lr, images/s; test: loss, accuracy)
    tensorboard/          the same metrics as TensorBoard scalars (with `TrainConfig.tensorboard`)
    checkpoints/<step>/   Orbax checkpoints (params, BatchNorm statistics, optimizer state, step)
    run_info.json         what the model and schedule took from the data (image shape, classes, steps)
    train_subset_indices.npy  a streamed run's `train_subset` (positions in the split; its labels are read once)
    final_metrics.json    written when the run completes
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rsim_jax import configs, io, models, parallel
from rsim_jax.train import optim
from rsim_jax.train.checkpoint import Checkpointer, abstract_like
from rsim_jax.train.config import TrainConfig
from rsim_jax.train.metrics import MetricsWriter
from rsim_jax.train.state import TrainState

CONFIG_FILE = "config.json"
FINAL_FILE = "final_metrics.json"
RUN_INFO_FILE = "run_info.json"
SUBSET_FILE = "train_subset_indices.npy"

# --- Model and state ---


def build_model(config: TrainConfig, image_shape, num_classes: int) -> nnx.Module:
  """The config's model for images of `image_shape` (H, W, C) and `num_classes`, initialised from `seed`."""
  return models.build(
      config.model, {**config.model_kwargs, "dtype": config.dtype}, rngs=nnx.Rngs(config.seed),
      image_shape=image_shape, num_classes=num_classes,
  )


class Program:
  """The pure functions of a run: the model's train/eval graph definitions and the optimizer.

  `init_state()` makes the initial `TrainState`; `train_step(state, batch)` and `eval_step(params,
  model_state, batch)` are jit-compiled and run on whatever mesh the arrays live on.
  """

  def __init__(self, config: TrainConfig, image_shape, num_classes: int, *, total_steps: int, warmup_steps: int):
    self.config = config
    self.image_shape, self.num_classes = tuple(int(s) for s in image_shape), int(num_classes)
    self.schedule = optim.learning_rate_schedule(config, total_steps, warmup_steps)
    self.tx = optim.make_optimizer(config, self.schedule)
    model = nnx.eval_shape(lambda: build_model(config, self.image_shape, self.num_classes))
    model.train()
    self.train_graphdef = nnx.graphdef(model)
    model.eval()
    self.eval_graphdef = nnx.graphdef(model)
    self.train_step = jax.jit(self._train_step, donate_argnums=0)
    self.eval_step = jax.jit(self._eval_step)

  def init_state(self, sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """The initial state (one compiled call: initialisation is many small random draws), placed with
    `sharding` (e.g. replicated over a mesh of all hosts' devices: every process computes the same values,
    so no host-to-host copy is needed)."""
    return jax.jit(self._init_state, out_shardings=sharding)()

  def _init_state(self) -> TrainState:
    model = build_model(self.config, self.image_shape, self.num_classes)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=rest,
                      opt_state=self.tx.init(params))

  def abstract_state(self, sharding=None) -> TrainState:
    return abstract_like(jax.eval_shape(self._init_state), sharding)

  def model(self, params, model_state, *, train: bool = False) -> nnx.Module:
    """An NNX model holding `params` and `model_state` (eval mode unless `train`)."""
    return nnx.merge(self.train_graphdef if train else self.eval_graphdef, params, model_state)

  def _train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    labels = batch["label"]

    def loss_fn(params):
      model = nnx.merge(self.train_graphdef, params, state.model_state)
      logits = model(batch["image"])
      loss = jnp.mean(optim.cross_entropy(logits, labels, self.config.label_smoothing))
      _, _, new_model_state = nnx.split(model, nnx.Param, ...)
      return loss, (logits, nnx.to_pure_dict(new_model_state))

    (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "lr": self.schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state), metrics

  def _eval_step(self, params, model_state, batch):
    model = nnx.merge(self.eval_graphdef, params, model_state)
    logits = model(batch["image"])
    mask = batch["mask"].astype(jnp.float32)
    loss = optim.cross_entropy(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


# --- Data ---


def _data():
  """`rsim_jax.data`, imported on use (tests substitute a stand-in with the same functions: `load`,
  `subsample`, `train_batches`, `eval_batches`, `to_global`; `open_source` and `subset_indices` where the
  stand-in streams)."""
  from rsim_jax import data  # noqa: PLC0415

  return data


def _in_memory(ds) -> bool:
  return hasattr(ds, "images")


def _open_split(config: TrainConfig, split: str):
  """Split `split` of `config.data`: in memory (`load`) unless it streams (see `TrainConfig.stream`).

  The data package's `open_source` gives the in-memory `ArrayDataset` for in-memory specs, so those are loaded
  exactly as by `load`; a tfds source is kept as a streaming source when `stream` is True, or is None and its
  images vary in size (they cannot be one array), and is loaded into memory otherwise.
  """
  data = _data()
  open_source = getattr(data, "open_source", None)
  if config.stream is False or open_source is None:
    return data.load(config.data, split, **config.data_kwargs)
  src = open_source(config.data, split, **config.data_kwargs)
  if _in_memory(src) or config.stream or getattr(src, "variable_size", False):
    return src
  return data.load(config.data, split, **config.data_kwargs)


def _num_examples(ds) -> int:
  return len(ds.labels) if _in_memory(ds) else len(ds)


def _image_shape(ds) -> list[int]:
  return [int(s) for s in (ds.images.shape[1:] if _in_memory(ds) else ds.image_shape)]


def _subset(ds, subset: int | float | None, seed: int, *, cache=None):
  """`train_subset` of the training split: `data.subsample`'s class-balanced, seeded subset of that many
  examples (int) or that fraction (float); smaller subsets of one seed are nested in larger ones.

  A streaming source is subset from its labels alone (`source.labels`, read without decoding the images: for
  ImageNet one pass over the records); the chosen positions are kept in `cache` so that a resumed run does not
  read the labels again.
  """
  if subset is None:
    return ds
  key = "fraction" if isinstance(subset, float) else "count"
  if _in_memory(ds):
    return _data().subsample(ds, **{key: subset}, seed=seed)
  if not (hasattr(type(ds), "labels") or hasattr(ds, "labels")) or not hasattr(ds, "select"):
    raise ValueError(
        f"train_subset={subset!r} needs the labels of the training split, which the streaming source "
        f"{type(ds).__name__} cannot give without decoding every image; set train_subset=None, or use a source "
        "with `labels` and `select` (a TfdsSource, or an in-memory spec)."
    )
  if cache is not None and cache.exists():
    indices = io.load_npy(cache)
  else:
    indices = _data().subset_indices(ds.labels, ds.num_classes, **{key: subset}, seed=seed)
    if cache is not None:
      io.save_npy(cache, indices)  # process 0, atomic: a run killed while writing leaves no half file
  return ds.select(indices)


def _to_global(batch, mesh):
  return _data().to_global(batch, mesh)


def _train_iterator(ds, config: TrainConfig, start_step: int) -> Iterator[dict]:
  """Endless training batches from `start_step` on (restarts the data package's iterator if it ends)."""
  step = start_step
  while True:
    produced = 0
    for batch in _data().train_batches(
        ds, batch_size=config.batch_size, seed=config.seed, augment=config.augment, start_step=step,
    ):
      produced += 1
      yield batch
    if produced == 0:
      raise RuntimeError("The training batch iterator produced no batches.")
    step += produced


def evaluate(program: Program, params, model_state, ds, *, batch_size: int, mesh) -> dict[str, float]:
  """Mean loss, accuracy and error count of the eval-mode model over all of `ds` (padding masked out)."""
  totals = None
  for batch in _data().eval_batches(ds, batch_size=batch_size):
    out = program.eval_step(params, model_state, _to_global(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    raise ValueError("The evaluation split is empty.")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {
      "loss": float(totals["loss"]) / count,
      "accuracy": float(totals["correct"]) / count,
      "errors": int(round(count - float(totals["correct"]))),
      "count": int(count),
  }


# --- The loop ---


def _check_workdir_config(workdir, config: TrainConfig) -> None:
  """Writes config.json, or refuses a work directory holding a run of a config with another result (fields
  outside `TrainConfig.RUN_ONLY_FIELDS` differ: `configs.check_resume`)."""
  configs.check_resume(workdir, config, filename=CONFIG_FILE)


def _interval(value: int | None, steps_per_epoch: int) -> int:
  return steps_per_epoch if value is None else int(value)


def train(
    config: TrainConfig, workdir: io.PathLike, *, stop_after_step: int | None = None,
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  On a multi-host slice every process calls `train` with the same arguments; the returned metrics are the
  same on every process, and files are written by process 0 only.

  Args:
    config: the run.
    workdir: directory for config.json, metrics.jsonl, checkpoints/ and final_metrics.json (local or
      `gs://…`; on several hosts, one directory that all of them see).
    stop_after_step: stop right after this step without saving anything more, as if the process were
      killed there (for resume tests); the returned dict then has `"interrupted": True`.

  Returns:
    The final metrics: `step`, `epoch`, `test_loss`, `test_accuracy`, `train_loss`/`train_accuracy` (mean over
    the last logging window), `images_per_sec`, and with `until_zero_train_error` `train_errors` (on the whole
    training set, eval mode) and `reached_zero_train_error`.
  """
  workdir = io.path(workdir)
  mesh = parallel.data_mesh(config.num_devices)
  num_devices = mesh.shape[parallel.DATA_AXIS]
  num_processes = jax.process_count()
  if num_processes > 1 and config.num_devices is not None and num_devices < jax.device_count():
    raise ValueError(
        f"num_devices={config.num_devices} leaves devices of some of the {num_processes} processes out of the "
        f"data mesh ({jax.device_count()} devices in all); set num_devices=None to use every device."
    )
  for name in ("batch_size", "eval_batch_size"):
    if getattr(config, name) % num_devices:
      raise ValueError(
          f"{name}={getattr(config, name)} does not divide over the {num_devices} devices of the data mesh "
          f"({num_processes} process(es) × {num_devices // num_processes} devices); choose a multiple of "
          f"{num_devices} or set num_devices."
      )
  workdir.mkdir(parents=True, exist_ok=True)
  _check_workdir_config(workdir, config)

  train_ds = _subset(_open_split(config, config.train_split), config.train_subset, config.seed,
                     cache=workdir / SUBSET_FILE)
  eval_ds = _open_split(config, config.eval_split)
  num_train = _num_examples(train_ds)
  steps_per_epoch = config.steps_per_epoch(num_train)
  total_steps = config.total_steps(num_train)
  max_steps = config.max_steps(num_train)
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  info = {"image_shape": _image_shape(train_ds), "num_classes": int(train_ds.num_classes),
          "num_train": num_train, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
          "warmup_steps": warmup_steps, "num_devices": num_devices}
  io.write_json(workdir / RUN_INFO_FILE, info)
  program = Program(config, info["image_shape"], info["num_classes"], total_steps=total_steps,
                    warmup_steps=warmup_steps)

  writer = MetricsWriter(workdir, tensorboard=config.tensorboard)  # first: a missing tensorboardX fails here
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  replicated = parallel.replicated(mesh)
  final_path = workdir / FINAL_FILE
  try:
    with jax.set_mesh(mesh):
      if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(program.abstract_state(replicated))
        start = int(state.step)
        # As process 0 sees it: a process returning early would leave the others waiting in collectives.
        if io.agreed_exists(final_path):
          final = json.loads(final_path.read_text())
          if final["step"] == start:
            return final
        writer.truncate_after(start)
      else:
        state = program.init_state(replicated)
        start = 0
        writer.truncate_after(-1)
      final = _run(config, program, state, start, train_ds, eval_ds, mesh=mesh, ckpt=ckpt, writer=writer,
                   steps_per_epoch=steps_per_epoch, total_steps=total_steps, max_steps=max_steps,
                   stop_after_step=stop_after_step)
  finally:
    ckpt.close()
    writer.close()
  if not final.get("interrupted"):
    io.write_json(final_path, final)
  # No process returns before the files are written: the next thing a study does may be to read them.
  io.barrier(f"train finished: {workdir}")
  return final


def _run(config, program, state, start, train_ds, eval_ds, *, mesh, ckpt, writer, steps_per_epoch, total_steps,
         max_steps, stop_after_step) -> dict[str, Any]:
  from tqdm.auto import tqdm  # noqa: PLC0415

  eval_every = _interval(config.eval_every_steps, steps_per_epoch)
  ckpt_every = _interval(config.checkpoint_every_steps, steps_per_epoch)
  step = start
  window: list[dict] = []
  train_summary: dict[str, float] = {}
  window_start = time.perf_counter()
  bar = tqdm(total=max_steps, initial=start, disable=not (config.progress and io.is_writer()), unit="step",
             dynamic_ncols=True,
             desc=f"{config.model} on {config.data}")
  test: dict[str, float] = {}
  train_eval: dict[str, Any] = {}
  evaluated = {"test": -1, "train_full": -1}  # the step each was last computed at
  batches = _train_iterator(train_ds, config, start)

  def save():
    ckpt.save(step, state, {"step": step, "epoch": step / steps_per_epoch})

  def log_train():
    nonlocal window, window_start, train_summary
    if not window:
      return
    values = jax.device_get(window)
    elapsed = time.perf_counter() - window_start
    train_summary = {
        "loss": float(np.mean([v["loss"] for v in values])),
        "accuracy": float(np.mean([v["accuracy"] for v in values])),
        "lr": float(values[-1]["lr"]),
        "images_per_sec": len(values) * config.batch_size / max(elapsed, 1e-9),
    }
    writer.write(step, "train", {"epoch": step / steps_per_epoch, **train_summary})
    bar.set_postfix(loss=f"{train_summary['loss']:.3f}", acc=f"{train_summary['accuracy']:.3f}",
                    img_s=f"{train_summary['images_per_sec']:.0f}", refresh=False)
    window, window_start = [], time.perf_counter()

  def run_eval(split: str):
    nonlocal test, train_eval, window_start
    if evaluated[split] == step:
      return
    began = time.perf_counter()
    ds = eval_ds if split == "test" else train_ds
    result = evaluate(program, state.params, state.model_state, ds, batch_size=config.eval_batch_size,
                      mesh=mesh)
    writer.write(step, config.eval_split if split == "test" else split, {"epoch": step / steps_per_epoch, **result})
    evaluated[split] = step
    if split == "test":
      test = result
    else:
      train_eval = result
    window_start += time.perf_counter() - began  # images/s counts training time only

  try:
    while step < max_steps:
      state, metrics = program.train_step(state, _to_global(next(batches), mesh))
      step += 1
      window.append(metrics)
      bar.update(1)
      if step % config.log_every_steps == 0:
        log_train()
      if eval_every and step % eval_every == 0:
        run_eval("test")
      fitted = False
      if config.until_zero_train_error and step >= total_steps and step % steps_per_epoch == 0:
        # Past the schedule's horizon, check the whole training set once an epoch (before the checkpoint,
        # so that a resumed run's metrics.jsonl reads like an uninterrupted one's).
        log_train()
        run_eval("train_full")
        fitted = train_eval["errors"] == 0
      if ckpt_every and step % ckpt_every == 0:
        save()
      if stop_after_step is not None and step >= stop_after_step:
        ckpt.wait()
        return {"step": step, "interrupted": True}
      if fitted:
        break
    log_train()
    if config.until_zero_train_error:
      run_eval("train_full")
    run_eval("test")
    save()
  finally:
    bar.close()
    batches.close()  # stops a streaming pipeline's reader threads
  final = {
      "step": step,
      "epoch": step / steps_per_epoch,
      "test_loss": test["loss"],
      "test_accuracy": test["accuracy"],
      **{f"train_{k}": v for k, v in train_summary.items()},
  }
  if config.until_zero_train_error:
    final["train_errors"] = train_eval["errors"]
    final["reached_zero_train_error"] = train_eval["errors"] == 0
  return final


def load_model(workdir: io.PathLike, *, step: int | None = None) -> tuple[nnx.Module, TrainConfig]:
  """Rebuilds a trained model from its work directory: `(model, config)`.

  The model is made from the saved `config.json` and `run_info.json` and given the weights and BatchNorm
  statistics of the checkpoint at `step` (default: the latest). It is returned in eval mode (running
  BatchNorm statistics), ready for `model(x, capture=True)`, on this process's first device (on a multi-host
  slice every process loads it; `extract.compare_models` replicates it over the mesh of all hosts).
  """
  workdir = io.path(workdir)
  for name in (CONFIG_FILE, RUN_INFO_FILE):
    if not (workdir / name).exists():
      raise FileNotFoundError(f"{workdir / name} not found; is {workdir} the work directory of a `train` run?")
  config = TrainConfig.from_json((workdir / CONFIG_FILE).read_text())
  info = json.loads((workdir / RUN_INFO_FILE).read_text())
  program = Program(config, info["image_shape"], info["num_classes"], total_steps=info["total_steps"],
                    warmup_steps=info["warmup_steps"])
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    state, _ = ckpt.restore(program.abstract_state(device), step)
  finally:
    ckpt.close()
  return program.model(state.params, state.model_state), config


def load_initial_model(workdir: io.PathLike) -> nnx.Module:
  """The network of a training run's work directory as it was at initialisation (same config and seed, so
  the same layers and weights as step 0), in eval mode: the untrained baseline of an analysis."""
  workdir = io.path(workdir)
  config = TrainConfig.from_json((workdir / CONFIG_FILE).read_text())
  info = json.loads((workdir / RUN_INFO_FILE).read_text())
  program = Program(config, info["image_shape"], info["num_classes"], total_steps=info["total_steps"],
                    warmup_steps=info["warmup_steps"])
  state = program.init_state(jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  model = program.model(state.params, state.model_state)
  model.eval()
  return model


def checkpoint_steps(workdir: io.PathLike) -> list[int]:
  """Steps of the checkpoints kept in a run's work directory, ascending (see `keep_checkpoints`)."""
  workdir = io.path(workdir)
  config = TrainConfig.from_json((workdir / CONFIG_FILE).read_text())
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints)
  try:
    return sorted(ckpt.all_steps())
  finally:
    ckpt.close()

