"""The wide/deep study's configs (Nguyen, Raghu & Kornblith, ICLR 2021): the model grid, its variants and
the training config of every model.

A variant is a function registered with `@variants("name")` returning a `WideDeepConfig`; `get_config(name)`
builds it (`rsim study wide_deep --config NAME`) and `--set field=value` overrides any field, dotted into
`train` (`rsim_jax.configs`). Variants: "local" (scikit-learn digits, minutes on a 2-core CPU; "local_ablation":
the recipe vs zero-init BatchNorm and vs warm-up, "local_wide": ResNet-20 ×1/×2/×4, "local_long": 3× the
epochs), "cifar10_local" (a CIFAR-10 subset at 16×16 from `../shared/data`, tens of minutes here), "cifar10" (the
paper's grid, for accelerators), "imagenet" (ImageNet ResNets through tensorflow-datasets, for TPU/GPU VMs),
"tiny" (seconds; the multi-host test). Every variant uses the standard initialisation of the papers' ResNets
(He et al. 2016: BatchNorm scales 1); zero-init is an ablation. `plan(cfg)` lists what a variant would train
without training anything (`--dry-run`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from rsim_jax import configs
from rsim_jax.studies import skeleton

Architecture = tuple[int, int]  # (depth, width multiplier)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  depth: int
  width: int
  train_fraction: float = 1.0
  seed: int = 0
  ablation: str = ""  # a key of `WideDeepConfig.ablations` (a recipe change); "" = the study's recipe

  @property
  def name(self) -> str:
    frac = "" if self.train_fraction == 1.0 else f"_frac{self.train_fraction:g}"
    return f"resnet{self.depth}_x{self.width}{frac}_seed{self.seed}" + (f"_{self.ablation}" if self.ablation else "")

  @property
  def architecture(self) -> Architecture:
    return (self.depth, self.width)

  @property
  def label(self) -> str:
    return f"ResNet-{self.depth} ×{self.width}" + (f" {self.ablation}" if self.ablation else "")


@dataclasses.dataclass(frozen=True)
class WideDeepConfig:
  """The study: which models to train, how, and how to compare them.

  Attributes:
    train: keyword arguments of `rsim_jax.train.TrainConfig` shared by every model (data, schedule, ...).
    model: "resnet" (CIFAR ResNets, depth = 6n + 2) or "imagenet_resnet" (bottleneck ResNets; depth one of
      `rsim_jax.models.imagenet_resnet.DEPTHS`, e.g. 50, 101, 152).
    depths, widths: the grid of ResNet depths (at width 1) and widths (at `width_depths`).
    width_depths: depths at which widths are varied.
    train_fractions: training-set fractions (the dataset-size sweep; 1.0 = all).
    fraction_architectures: architectures `(depth, width)` of the grid trained at fractions below 1 (None =
      all of them).
    seeds: seeds of every grid configuration.
    population: architectures `(depth, width)` trained with every seed of `population_seeds` at fraction 1:
      the cross-seed CKA and the output-level comparison (first vs second architecture, seed to seed as
      the baseline).
    population_seeds: seeds of the population models (≥ 4 for the seed-split baseline of the error test).
    cross_architectures: pairs of architectures compared layer by layer (seed 0, fraction 1).
    cross_seeds: every pair among the first `cross_seeds` seeds of an architecture is compared layer by layer
      (cross-seed CKA); with ≥ 3, the mean over pairs gets a bootstrap over seeds.
    ablations: recipe changes measured side by side with the study's recipe: name → overrides of `train`
      (`model_kwargs` merged), e.g. {"zeroinit": {"model_kwargs": {"zero_init_last_bn": True}}} (the last
      BatchNorm scale of every residual block starts at 0, Goyal et al. 2017) or {"warmup2": {"warmup_epochs":
      2}}. Names must be identifiers (they end the model names).
    ablation_architectures, ablation_seeds: each architecture is trained with the study's recipe and with every
      ablation, for every seed (fraction 1).
    cka_batch_size: minibatch size of the CKA estimate (per device).
    block_threshold: CKA every pair of layers of a block must reach.
    block_min_pc1, block_min_pc1_gain, block_min_size: the block detector
      (`analysis.block_structure.block_vs_baseline`): a block is ≥ `block_min_size` contiguous layers with
      pairwise CKA ≥ `block_threshold`, each with a PC1 variance fraction ≥ `block_min_pc1` that exceeds the
      untrained network's at the same layer by ≥ `block_min_pc1_gain`.
    max_eval_examples: cap on evaluation examples used for CKA (None = all).
    sample_size: evaluation examples sampled (every layer, flattened) for the PC1 analysis and as probe test
      set; 0 = skip both. Device memory: sample_size × Σ layer widths × 4 bytes per model, twice.
    probe_train_examples: training-split examples the probes are fitted on; 0 = no probes.
    subset_budget: training budget of models on a fraction f < 1 of the data: "steps" = as many optimiser
      steps as the full-data models (num_epochs / f epochs), so small sets are fitted too (the block is a
      property of models that fit their training data: experiments/wide_deep/RESULTS.md); "epochs" = the same
      number of epochs.
    stderr_batch_size, stderr_groups: error bars of the block (`block_structure.block_confidence`): the trained
      network's minibatch CKA is re-streamed with per-device batches of `stderr_batch_size` (None: the main
      pass's `cka_batch_size`) and a jackknife over `stderr_groups` groups of batches gives every entry's SE;
      small eval splits need small batches for enough groups (digits: 360 test images, batches of 36 → 10).
    pc1_bootstrap: resamples of the examples for the PC1 fractions' standard errors (block layers only);
      0 = no PC1 error bars.
    pruning: measure test accuracy with each removable residual block deleted alone, and cumulatively from
      the last block back (`analysis.pruning`, no fine-tuning), on the CKA evaluation examples of the main
      grid (fraction 1, first seed).
  """

  # `train` fields a work directory may change on resume (`configs.check_resume`): only the final models are
  # analysed, so evaluation and checkpoint intervals, like logging and device counts, leave the results alone.
  RUN_ONLY_FIELDS = skeleton.FINAL_MODELS_RUN_ONLY

  train: dict = configs.kwargs_of("rsim_jax.train.config:TrainConfig", extra_keys={"train_examples": int | None})
  depths: tuple[int, ...]
  widths: tuple[int, ...]
  width_depths: tuple[int, ...]
  train_fractions: tuple[float, ...] = (1.0,)
  fraction_architectures: tuple[Architecture, ...] | None = None
  seeds: tuple[int, ...] = (0,)
  population: tuple[Architecture, ...] = ()
  population_seeds: tuple[int, ...] = (0, 1, 2, 3)
  cross_architectures: tuple[tuple[Architecture, Architecture], ...] = ()
  cross_seeds: int = 3
  ablations: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)
  ablation_architectures: tuple[Architecture, ...] = ()
  ablation_seeds: tuple[int, ...] = (0,)
  cka_batch_size: int = 256
  block_threshold: float = 0.9
  block_min_pc1: float = 0.5
  block_min_pc1_gain: float = 0.2
  block_min_size: int = 3
  max_eval_examples: int | None = None
  sample_size: int = 1000
  probe_train_examples: int = 1000
  subset_budget: str = "steps"
  stderr_batch_size: int | None = None
  stderr_groups: int = 20
  pc1_bootstrap: int = 100
  pruning: bool = True
  model: str = "resnet"

  def __post_init__(self):
    if self.subset_budget not in ("steps", "epochs"):
      raise ValueError(f"`subset_budget` must be 'steps' or 'epochs'; got {self.subset_budget!r}.")
    bad = [name for name in self.ablations if not name.isidentifier()]
    if bad:
      raise ValueError(f"`ablations` names must be identifiers (they end model names); got {bad}.")

  def models(self) -> list[ModelSpec]:
    grid = [(depth, 1) for depth in self.depths]
    grid += [(depth, width) for depth in self.width_depths for width in self.widths if (depth, width) not in grid]
    specs = []
    for fraction in self.train_fractions:
      for seed in self.seeds:
        for arch in grid:
          if fraction == 1.0 or self.fraction_architectures is None or arch in self.fraction_architectures:
            specs.append(ModelSpec(*arch, fraction, seed))
    for seed in self.population_seeds:
      for depth, width in self.population:
        specs.append(ModelSpec(depth, width, 1.0, seed))
    for pair in self.cross_architectures:
      for depth, width in pair:
        specs.append(ModelSpec(depth, width, 1.0, min(self.seeds)))
    for seed in self.ablation_seeds:
      for depth, width in self.ablation_architectures:
        specs += [ModelSpec(depth, width, 1.0, seed, name) for name in ("", *self.ablations)]
    return list(dict.fromkeys(specs))


variants = skeleton.Variants("wide_deep")
get_config = variants.get  # get_config(variant="local"): `rsim study wide_deep --config VARIANT`


@variants("local")
def _local() -> WideDeepConfig:
  # The demo (experiments/wide_deep/RESULTS.md, "local"): digits at 8×8 with the papers' recipe — standard
  # initialisation (BatchNorm scales 1) and no warm-up; zero-init of the last BN scale or 2 warm-up epochs
  # suppress the block (`local_ablation`) — for 40 epochs, which fit the training set. Depth: ResNet-20 ×1 vs
  # ResNet-56 ×1; width: ResNet-20 ×1/×2 (×4 costs ~1 s a step on 2 cores: `local_wide`); data: the two narrow
  # nets on a quarter of the training set; cross-seed CKA and the output-level comparison from 3 seeds of each.
  # Weight decay on the conv/dense kernels only, as in the TF ResNet recipe of the paper's setting (BatchNorm
  # variables excluded; `TrainConfig.weight_decay_on`); on digits it changes no block verdict (RESULTS.md).
  return WideDeepConfig(
      train=dict(data="digits", data_kwargs={"image_size": 8}, batch_size=128, eval_batch_size=512,
                 num_epochs=40, lr=0.1, warmup_epochs=0, weight_decay=5e-4, weight_decay_on="kernels", augment=False,
                 progress=True),
      depths=(20, 56), widths=(1, 2), width_depths=(20,), train_fractions=(1.0, 0.25),
      fraction_architectures=((20, 1), (56, 1)),
      population=((20, 1), (56, 1)), population_seeds=(0, 1, 2),
      cross_architectures=(((56, 1), (20, 2)),),
      cka_batch_size=128, sample_size=360, probe_train_examples=1000, stderr_batch_size=36, stderr_groups=10,
  )


@variants("local_ablation")
def _local_ablation() -> WideDeepConfig:
  # Recipe ablations on digits: ResNet-56 ×1 with the `local` recipe (BatchNorm scales 1, no warm-up) and with
  # the last BN scale of each residual block at 0 (Goyal et al. 2017) or 2 warm-up epochs, 3 seeds each.
  base = _local()
  return dataclasses.replace(
      base, depths=(56,), widths=(1,), width_depths=(), train_fractions=(1.0,), fraction_architectures=None,
      population=(), cross_architectures=(), ablation_architectures=((56, 1),), ablation_seeds=(0, 1, 2),
      ablations={"zeroinit": {"model_kwargs": {"zero_init_last_bn": True}}, "warmup2": {"warmup_epochs": 2}},
      probe_train_examples=0, pruning=False,
  )


@variants("local_wide")
def _local_wide() -> WideDeepConfig:
  # Width on digits beyond the demo: ResNet-20 ×1, ×2, ×4 with the `local` recipe (×4 alone ~15 min on 2 cores).
  base = _local()
  return dataclasses.replace(
      base, depths=(20,), widths=(1, 2, 4), width_depths=(20,), train_fractions=(1.0,), fraction_architectures=None,
      population=(), cross_architectures=(((20, 1), (20, 4)),), probe_train_examples=0,
  )


@variants("local_long")
def _local_long() -> WideDeepConfig:
  # Longer training on digits: ResNet-20 ×1 and ResNet-56 ×1 for 120 epochs (3× local).
  base = _local()
  return dataclasses.replace(
      base, train={**base.train, "num_epochs": 120}, widths=(1,), width_depths=(), train_fractions=(1.0,),
      fraction_architectures=None, population=(), cross_architectures=(),
  )


@variants("cifar10_local")
def _cifar10_local() -> WideDeepConfig:
  # CIFAR-10 on a CPU: 2,500 training images at 16×16, no augmentation (so that the training set is fitted: the
  # block is a property of models that fit their data), the papers' recipe (standard init, no warm-up),
  # ResNet-20 vs ResNet-56; CKA on 2,000 test images.
  return WideDeepConfig(
      train=dict(data="cifar10", data_kwargs={"image_size": 16}, train_examples=2500, batch_size=128,
                 eval_batch_size=500, num_epochs=40, lr=0.1, warmup_epochs=0, weight_decay=5e-4,
                 weight_decay_on="kernels", augment=False, progress=True),
      depths=(20, 56), widths=(1,), width_depths=(), train_fractions=(1.0, 0.25), seeds=(0,),
      population=((20, 1),), population_seeds=(0, 1), cka_batch_size=256, max_eval_examples=2000,
      sample_size=1000, probe_train_examples=1000,
  )


@variants("cifar10")
def _cifar10() -> WideDeepConfig:
  # The paper's grid and recipe (Nguyen et al. 2021, App. A): SGD momentum 0.9, lr 0.1, batch 128,
  # weight decay 5e-4, 300 epochs with step decay, standard augmentation; CKA on the 10,000 test images.
  # Sample memory: 500 examples × Σ widths (ResNet-164: 165 layers of ≤ 16,384) × 4 B ≈ 5 GB per model.
  return WideDeepConfig(
      train=dict(data="cifar10", batch_size=128, eval_batch_size=1000, num_epochs=300, lr=0.1,
                 schedule="step", step_boundaries=(0.5, 0.75), weight_decay=5e-4, weight_decay_on="kernels",
                 augment=True),
      depths=(14, 20, 26, 38, 56, 110, 164), widths=(1, 2, 4, 8, 10), width_depths=(14, 26, 38),
      train_fractions=(1.0, 0.25, 0.0625), cka_batch_size=256,
      population=((26, 8), (110, 1)), population_seeds=tuple(range(10)),
      cross_architectures=(((110, 1), (26, 8)), ((164, 1), (38, 10))), sample_size=500,
      probe_train_examples=5000, subset_budget="epochs",
  )


@variants("imagenet")
def _imagenet() -> WideDeepConfig:
  # Nguyen et al. 2021, Sec. 7: ImageNet ResNets of increasing depth and width, the standard recipe (SGD
  # momentum 0.9, batch 1024, lr 0.4 = 0.1 × B/256 with 5 warm-up epochs, cosine over 90 epochs, weight decay
  # 1e-4, label smoothing 0.1, bfloat16 compute), tensorflow-datasets imagenet2012 (a prepared TFDS_DATA_DIR).
  # CKA on 10,000 validation images in minibatches of 256 per device.
  return WideDeepConfig(
      train=dict(data="tfds:imagenet2012", eval_split="validation", data_kwargs={"image_size": 224},
                 batch_size=1024, eval_batch_size=1024, num_epochs=90, lr=0.4, warmup_epochs=5,
                 weight_decay=1e-4, weight_decay_on="kernels", label_smoothing=0.1, augment=True, dtype="bfloat16",
                 checkpoint_every_steps=2000, keep_checkpoints=2),
      model="imagenet_resnet", depths=(50, 101, 152), widths=(1, 2, 3), width_depths=(50,),
      cka_batch_size=256, max_eval_examples=10_000, sample_size=256, probe_train_examples=0,
  )


@variants("tiny")
def _tiny() -> WideDeepConfig:
  # Every stage (training, within- and cross-model CKA, block detection, PC1, probes, pruning, output-level
  # tests, an ablation twin, figures) in seconds on a CPU; no claim about blocks. The multi-host test runs it
  # in 2 processes and in 1.
  return WideDeepConfig(
      train=dict(data="digits", data_kwargs={"image_size": 8}, batch_size=64, eval_batch_size=360,
                 num_epochs=1, num_steps=6, lr=0.05, warmup_epochs=0, augment=False, progress=False),
      depths=(8,), widths=(1, 2), width_depths=(8,), population=((8, 1), (8, 2)), population_seeds=(0, 1),
      ablation_architectures=((8, 1),), ablations={"zeroinit": {"model_kwargs": {"zero_init_last_bn": True}}},
      cka_batch_size=16, sample_size=120, probe_train_examples=100,
  )


def train_config(cfg: WideDeepConfig, spec: ModelSpec):
  from rsim_jax.train import TrainConfig

  kwargs = dict(cfg.train)
  model_kwargs = {**dict(kwargs.pop("model_kwargs", {})), "width": spec.width}
  if spec.ablation:
    overrides = dict(cfg.ablations[spec.ablation])
    model_kwargs.update(overrides.pop("model_kwargs", {}))
    kwargs.update(overrides)
  if cfg.model == "imagenet_resnet":
    from rsim_jax.models import imagenet_resnet

    if spec.depth not in imagenet_resnet.DEPTHS:
      raise ValueError(f"ImageNet ResNet depth {spec.depth} unknown; choose one of {sorted(imagenet_resnet.DEPTHS)}.")
    model_kwargs["blocks_per_stage"] = imagenet_resnet.DEPTHS[spec.depth]
  else:
    model_kwargs["depth"] = spec.depth
  base = kwargs.pop("train_examples", None)  # a fixed-size base training set (CPU variants), else all
  if base is None:
    subset = None if spec.train_fraction == 1.0 else spec.train_fraction
  else:
    classes = 10
    subset = max(classes, int(round(base * spec.train_fraction / classes)) * classes)
  if spec.train_fraction < 1.0 and cfg.subset_budget == "steps" and "num_epochs" in kwargs:
    kwargs["num_epochs"] = int(math.ceil(kwargs["num_epochs"] / spec.train_fraction))
    # Epochs are short now: evaluating the whole test split and saving after each would dominate the run.
    kwargs.setdefault("eval_every_steps", 0)
    kwargs.setdefault("checkpoint_every_steps", 200)
  return TrainConfig(model=cfg.model, model_kwargs=model_kwargs, train_subset=subset, seed=spec.seed, **kwargs)


def plan(cfg: WideDeepConfig) -> list[dict]:
  """What `run` would train, without training or reading data: one dict per model with its name, the
  model family and arguments, the data and the schedule (a dry run)."""
  return skeleton.plan_rows([(spec.name, train_config(cfg, spec)) for spec in cfg.models()],
                            ("model", "model_kwargs", "data", "train_subset", "batch_size", "num_epochs", "lr",
                             "schedule", "dtype"))
