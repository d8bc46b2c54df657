"""`TrainConfig`: everything that defines a training run, as a frozen dataclass that round-trips through JSON.

Config files are Python files with `get_config(variant="local")` returning a `TrainConfig` (a small `local`
variant that runs on a laptop CPU, and paper-scale variants), loaded with `load_config("file.py:variant")`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

from rsim_jax import configs, models

SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16")
WEIGHT_DECAY_ON = ("all", "kernels")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run.

  Model
    model: family name, a key of `rsim_jax.models.FAMILIES` ("resnet", "wide_resnet", "imagenet_resnet",
      "resnet50", "mlp", "deepnet", ...).
    model_kwargs: constructor arguments (e.g. {"depth": 20, "width": 2}); `num_classes` and the input
      arguments (`in_channels`, ...) come from the data unless set here.
    dtype: compute dtype, "float32" or "bfloat16" (parameters and optimizer state stay float32).

  Data (`rsim_jax.data.load(data, split, **data_kwargs)`)
    data: data spec, e.g. "digits", "cifar10", "fashion_mnist".
    data_kwargs: extra arguments of `load` (e.g. image size, data directory).
    train_split, eval_split: split names.
    train_subset: None (all), an int (that many training examples) or a float in (0, 1] (that fraction),
      a seeded random subset (Nguyen et al. vary the training-set size this way).
    augment: random crop + flip on the training batches (Inception crop + flip for variable-size images).
    stream: read the splits record by record (`rsim_jax.data.open_source`, through grain) instead of loading
      them into memory. None: stream tfds data sets whose images vary in size (ImageNet), load the rest; True:
      also stream fixed-size tfds sets; False: always load. The batches are the same either way.

  Optimisation: SGD with momentum (He et al. 2016)
    batch_size: global batch, split over all devices (must divide evenly).
    num_epochs: length of training (and the horizon of the schedule); `num_steps` overrides it.
    lr: peak learning rate, reached after `warmup_epochs` of linear warm-up from 0.
    schedule: "cosine" (to `lr·end_lr_fraction`), "step" (× `step_factor` at each fraction of training in
      `step_boundaries`), or "constant".
    weight_decay, decoupled_weight_decay: L2 penalty `λ/2·|θ|²` added to the loss gradient (PyTorch SGD), or
      decoupled decay `θ ← θ − η_t·λ·θ` outside the momentum (SGDW, Loshchilov & Hutter 2019).
    weight_decay_on: which parameters θ decay. "all": every parameter, BatchNorm scales and biases and the
      conv/dense biases included (as PyTorch's `SGD(model.parameters(), weight_decay=λ)`). "kernels": the conv
      and dense kernels only (an optax mask on the parameters named `kernel`, `optim.weight_decay_mask`), as
      big_vision (default `wd_mults` ".*/kernel$") and Flax's ImageNet example (weights of ndim > 1) do; the
      TF official ResNet excludes the BatchNorm variables (its `exclude_batch_norm` loss filter; the one dense
      bias still decays there). Each study's variants choose: wide_deep (the TF recipe of Nguyen et al.) sets
      "kernels"; mitosis and intrinsic_dim keep "all" (their papers do not say; their RESULTS.md were measured
      with it). "all" stays the default here: PyTorch's semantics of `weight_decay`.
      Configs saved before this field existed read as "all", so their runs still resume.
    momentum, nesterov, label_smoothing.
    until_zero_train_error: after `num_epochs`, keep training (at the schedule's final learning rate) until
      the error on the whole training set (eval mode) is 0, checked once an epoch, up to `max_epochs`
      (Doimo et al. 2021: mitosis needs training to zero error).

  Bookkeeping
    seed: initialisation and data order/augmentation (a run is a deterministic function of the config).
    eval_every_steps, checkpoint_every_steps: None = once per epoch; 0 = only at the end.
    log_every_steps: how often training loss/accuracy are written to `metrics.jsonl`.
    keep_checkpoints: how many recent checkpoints Orbax keeps.
    num_devices: devices of the "data" mesh axis (None = all).
    progress: show a tqdm progress bar.
    tensorboard: also write the metrics as TensorBoard scalars in `<workdir>/tensorboard/` (`train/loss`,
      `test/accuracy`, ...; `tensorboard --logdir <workdir>/tensorboard`). Needs tensorboardX, the optional
      extra `pip install 'rsim_jax[tensorboard]'`; `metrics.jsonl` is written either way.
  """

  # Fields that do not change a run's result: a run resumes under a config that differs only in these (it may
  # resume on another machine; how often it evaluates, logs or saves, and streaming or in-memory data, give the
  # same run). Any other difference is refused (`configs.check_resume`).
  RUN_ONLY_FIELDS = ("progress", "num_devices", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
                     "log_every_steps", "stream", "tensorboard")

  model: str = "resnet"
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"depth": 20})
  dtype: str = "float32"
  data: str = "digits"
  data_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train_split: str = "train"
  eval_split: str = "test"
  train_subset: int | float | None = None
  augment: bool = False
  stream: bool | None = None
  batch_size: int = 128
  eval_batch_size: int = 512
  num_epochs: float = 10.0
  num_steps: int | None = None
  lr: float = 0.1
  schedule: str = "cosine"
  warmup_epochs: float = 0.0
  end_lr_fraction: float = 0.0
  step_boundaries: tuple[float, ...] = (0.5, 0.75)
  step_factor: float = 0.1
  weight_decay: float = 5e-4
  decoupled_weight_decay: bool = False
  weight_decay_on: str = "all"
  momentum: float = 0.9
  nesterov: bool = False
  label_smoothing: float = 0.0
  until_zero_train_error: bool = False
  max_epochs: float | None = None
  seed: int = 0
  eval_every_steps: int | None = None
  checkpoint_every_steps: int | None = None
  log_every_steps: int = 50
  keep_checkpoints: int = 2
  num_devices: int | None = None
  progress: bool = True
  tensorboard: bool = False

  def __post_init__(self):
    object.__setattr__(self, "model_kwargs", configs.freeze(dict(self.model_kwargs)))
    object.__setattr__(self, "data_kwargs", configs.freeze(dict(self.data_kwargs)))
    object.__setattr__(self, "step_boundaries", tuple(float(b) for b in self.step_boundaries))
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the first inconsistent field."""
    def bad(msg):
      raise ValueError(f"TrainConfig: {msg}")

    if self.model not in models.FAMILIES:
      bad(f"model={self.model!r} is not a model family; choose one of {sorted(models.FAMILIES)}.")
    if self.dtype not in DTYPES:
      bad(f"dtype={self.dtype!r}; choose one of {DTYPES}.")
    if self.schedule not in SCHEDULES:
      bad(f"schedule={self.schedule!r}; choose one of {SCHEDULES}.")
    if not isinstance(self.tensorboard, bool):
      bad(f"tensorboard={self.tensorboard!r} must be True (also write TensorBoard event files; needs the "
          "`tensorboard` extra) or False.")
    if self.stream not in (None, True, False):
      bad(f"stream={self.stream!r} must be None (stream variable-size tfds sets), True or False.")
    if self.batch_size < 1 or self.eval_batch_size < 1:
      bad("batch sizes must be positive.")
    if self.num_steps is None and not self.num_epochs > 0:
      bad(f"num_epochs={self.num_epochs} must be > 0 (or set num_steps).")
    if self.num_steps is not None and self.num_steps < 1:
      bad(f"num_steps={self.num_steps} must be >= 1.")
    if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
      bad("need lr > 0, weight_decay >= 0 and 0 <= momentum < 1.")
    if self.weight_decay_on not in WEIGHT_DECAY_ON:
      bad(f"weight_decay_on={self.weight_decay_on!r}; choose one of {WEIGHT_DECAY_ON} (\"all\": every parameter, "
          "\"kernels\": conv and dense kernels only).")
    if not 0 <= self.label_smoothing < 1:
      bad(f"label_smoothing={self.label_smoothing} must be in [0, 1).")
    if not 0 <= self.end_lr_fraction <= 1 or self.warmup_epochs < 0:
      bad("need 0 <= end_lr_fraction <= 1 and warmup_epochs >= 0.")
    if any(not 0 < b < 1 for b in self.step_boundaries) or list(self.step_boundaries) != sorted(self.step_boundaries):
      bad(f"step_boundaries={self.step_boundaries} must be increasing fractions of training in (0, 1).")
    sub = self.train_subset
    if sub is not None and not (
        (isinstance(sub, int) and not isinstance(sub, bool) and sub >= 1) or (isinstance(sub, float) and 0 < sub <= 1)
    ):
      bad(f"train_subset={sub!r} must be None, a count >= 1 or a fraction in (0, 1].")
    if self.until_zero_train_error:
      if self.max_epochs is None or self.max_epochs < self.num_epochs:
        bad("until_zero_train_error needs max_epochs >= num_epochs (a cap on the extra training).")
      final = {"cosine": self.end_lr_fraction, "constant": 1.0,
               "step": self.step_factor ** len(self.step_boundaries)}[self.schedule]
      if final <= 0:
        bad("until_zero_train_error trains on at the schedule's final learning rate, which is 0 here; set "
            "end_lr_fraction > 0 (cosine) or use a step/constant schedule.")
    for name in ("eval_every_steps", "checkpoint_every_steps"):
      value = getattr(self, name)
      if value is not None and value < 0:
        bad(f"{name}={value} must be None (once per epoch), 0 (at the end only) or positive.")
    if self.log_every_steps < 1 or self.keep_checkpoints < 1:
      bad("log_every_steps and keep_checkpoints must be >= 1.")

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"Unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}.")
    return cls(**d)

  @classmethod
  def from_json(cls, text: str) -> "TrainConfig":
    return cls.from_dict(json.loads(text))

  # --- Derived quantities ---

  def steps_per_epoch(self, num_train: int) -> int:
    """Full batches per epoch of `num_train` examples (the last partial batch is dropped)."""
    if num_train < self.batch_size:
      raise ValueError(
          f"The training set has {num_train} examples, fewer than one batch of {self.batch_size}; lower "
          "batch_size."
      )
    return num_train // self.batch_size

  def total_steps(self, num_train: int) -> int:
    """Steps of the schedule's horizon: `num_steps`, else `ceil(num_epochs · steps_per_epoch)`."""
    if self.num_steps is not None:
      return int(self.num_steps)
    return max(1, math.ceil(self.num_epochs * self.steps_per_epoch(num_train)))

  def max_steps(self, num_train: int) -> int:
    """The hard cap on steps: `total_steps`, or `max_epochs` worth with `until_zero_train_error`."""
    if not self.until_zero_train_error:
      return self.total_steps(num_train)
    return max(self.total_steps(num_train), math.ceil(self.max_epochs * self.steps_per_epoch(num_train)))


def load_config(spec: str) -> TrainConfig:
  """`"path/to/config.py[:variant]"` → the file's `get_config(variant)` (variant "local" by default)."""
  path, _, variant = spec.partition(":")
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"Config file {path!r} not found (expected `file.py[:variant]`).")
  module_spec = importlib.util.spec_from_file_location(f"_rsim_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"Config file {path!r} defines no `get_config(variant)`.")
  config = module.get_config(variant or "local")
  if not isinstance(config, TrainConfig):
    raise TypeError(f"{path}:get_config returned {type(config).__name__}, not a TrainConfig.")
  return config


def parse_override(config: TrainConfig, assignment: str) -> TrainConfig:
  """Applies `"field=value"` or `"field.key=value"` (value parsed as JSON, else taken as a string), e.g.
  `num_epochs=3`, `model_kwargs={"depth": 56}`, `model_kwargs.depth=56`, `data=cifar10`; the value must fit the
  field's type (`rsim_jax.configs.apply_overrides`)."""
  return configs.apply_overrides(config, [assignment])
