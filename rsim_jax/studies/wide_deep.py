"""Nguyen, Raghu & Kornblith (ICLR 2021), "Do Wide and Deep Networks Learn the Same Things?" end to end.

Stages (each resumes; finished models and analyses are read back from the work directory):
  1. train every model of the grid (depth × width × training-set fraction × seed, plus the seed populations)
     with `rsim_jax.train`;
  2. per model, one pass of the evaluation split through the trained network *and* the same network at
     initialisation (`rsim_jax.extract.compare_models`): within-model minibatch CKA of all layers, every
     prediction, and a fixed random sample of every layer's activations;
  3. per model: block structure against the untrained baseline (`analysis.block_structure`), first principal
     component (`analysis.principal_components`: PC1 variance fraction, CKA with PC1, CKA with PC1 removed),
     linear probes per layer (`analysis.probes`, fitted on a training-split sample);
  4. across models: cross-seed and cross-architecture CKA inside vs outside the block
     (`analysis.cross_model`); output-level differences of seed populations (`analysis.output_errors`);
  5. figures and `report.md` with the numbers.

Variants (`get_config`): "local" (scikit-learn digits, minutes on a 2-core CPU; "local_ablation": the recipe vs
zero-init BatchNorm and vs warm-up, "local_wide": ResNet-20 ×1/×2/×4, "local_long": 3× the epochs),
"cifar10_local" (a CIFAR-10 subset at 16×16 from `../shared/data`, tens of minutes here), "cifar10" (the paper's
grid, for accelerators), "imagenet" (ImageNet ResNets through tensorflow-datasets, for TPU/GPU VMs), "tiny"
(seconds; the multi-host test). Every variant uses the standard initialisation of the papers' ResNets (He et al.
2016: BatchNorm scales 1); zero-init is an ablation. `plan(cfg)` lists what a variant would train without
training anything (`rsim study wide_deep --config V --dry-run`).
Overrides: `--set train.num_epochs=40 --set widths=[1,2,4]` (`rsim_jax.configs`); a work directory refuses a
rerun whose config differs in a field outside `WideDeepConfig.RUN_ONLY_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from rsim_jax import configs, extract, io, plotting
from rsim_jax.analysis import (block_report, block_structure, cross_model, output_errors, principal_components, probes,
                               pruning, uncertainty)
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
  return WideDeepConfig(
      train=dict(data="digits", data_kwargs={"image_size": 8}, batch_size=128, eval_batch_size=512,
                 num_epochs=40, lr=0.1, warmup_epochs=0, weight_decay=5e-4, augment=False, progress=True),
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
                 augment=False, progress=True),
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
                 schedule="step", step_boundaries=(0.5, 0.75), weight_decay=5e-4, augment=True),
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
                 weight_decay=1e-4, label_smoothing=0.1, augment=True, dtype="bfloat16",
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


# Bumped when a cached per-model analysis would no longer match what `analyse_model` computes (2: the block is
# read against the untrained network at the same layers).
ANALYSIS_VERSION = 3  # 3: block_confidence (error bars of the block)


def detect_block(cfg: WideDeepConfig, trained_cka, init_cka, pc1, init_pc1, names):
  """The block of one model against its untrained twin (`analysis.block_structure.block_vs_baseline`)."""
  return block_structure.block_vs_baseline(
      trained_cka, init_cka, threshold=cfg.block_threshold, names=names, trained_pc1=pc1, baseline_pc1=init_pc1,
      min_pc1=cfg.block_min_pc1, min_pc1_gain=cfg.block_min_pc1_gain, min_size=cfg.block_min_size)


def _batches(config, split: str, batch_size: int, max_examples: int | None, *, local: bool = False):
  """`batch_size` examples per device (the CKA minibatch); `local`: every process reads the whole split."""
  return extract.split_batches(config, split=split, batch_size=batch_size, max_examples=max_examples, local=local)


def _block_range(block: dict) -> tuple[int, int] | None:
  return (block["start"], block["end"]) if block["size"] > 1 else None


def analyse_model(cfg: WideDeepConfig, spec: ModelSpec, model_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
  """Everything about one model: within-model CKA (trained and at initialisation), block vs baseline, PC1
  analysis, linear probes, test predictions, block pruning. Cached as `out_dir/<name>.json` (recomputed when
  made by another `ANALYSIS_VERSION`; pruning added to a cache without it) with its heat map
  `out_dir/<name>_cka.png` (redrawn when missing)."""
  from rsim_jax.train import load_model

  def compute():
    result = _analyse_model(cfg, spec, model_dir)
    _model_heatmap(spec, result, out_dir, redraw=True)
    return result

  def add_pruning(result):
    if not _wants_pruning(cfg, spec) or "pruning" in result:
      return False
    result["pruning"] = pruning_analysis(cfg, *load_model(model_dir), result["blocks"]["trained"])
    return True

  result = skeleton.cached_json(out_dir / f"{spec.name}.json", compute, version=ANALYSIS_VERSION, extend=add_pruning)
  _model_heatmap(spec, result, out_dir)
  return result


def _analyse_model(cfg: WideDeepConfig, spec: ModelSpec, model_dir: pathlib.Path) -> dict:
  from rsim_jax.train import load_initial_model, load_model

  trained, config = load_model(model_dir)
  untrained = load_initial_model(model_dir)
  batches, total = _batches(config, config.eval_split, cfg.cka_batch_size, cfg.max_eval_examples)
  comparison = extract.compare_models([trained, untrained], batches, total=total, sample_size=cfg.sample_size)
  names = comparison.within[0].x_names
  trained_cka, init_cka = comparison.within[0].matrix, comparison.within[1].matrix
  pc1 = init_pc1 = None
  if cfg.sample_size:
    pc1 = principal_components.pc1_fractions(comparison.samples[0])
    init_pc1 = principal_components.pc1_fractions(comparison.samples[1])
    pc1, init_pc1 = [pc1[n] for n in names], [init_pc1[n] for n in names]
  blocks = detect_block(cfg, trained_cka, init_cka, pc1, init_pc1, names)
  final = io.read_json(model_dir / "final_metrics.json")
  result = {
      "spec": dataclasses.asdict(spec),
      "layer_names": list(names),
      "test_accuracy": final["test_accuracy"],
      "train_accuracy": final.get("train_accuracy"),
      "accuracy_check": comparison.accuracy(0),
      "cka_trained": trained_cka.tolist(),
      "cka_init": init_cka.tolist(),
      "cka_trained_vs_init": np.diag(comparison.cross.matrix).tolist(),
      "blocks": blocks.to_json(),
      "predictions": comparison.predictions[0].tolist(),
      "labels": comparison.labels.tolist(),
  }
  if cfg.sample_size:
    summary = principal_components.pc1_summary(comparison.samples[0], block=_block_range(result["blocks"]["trained"]))
    result["pc1"] = {**summary, "pc1_fraction_init": init_pc1, "num_examples": len(comparison.sample_labels)}
    if cfg.probe_train_examples:
      # A class-balanced pool of 4× the probe set to draw from: streaming all of a 50k-image split through a deep
      # net to keep 1,000 examples would cost more than the rest of the analysis.
      train_batches, train_total = _batches(config, config.train_split, cfg.cka_batch_size,
                                            4 * cfg.probe_train_examples)
      train_sample = extract.compare_models(trained, train_batches, cka=False, total=train_total,
                                            sample_size=cfg.probe_train_examples, sample_seed=1, progress=False)
      accuracy = probes.probe_all_layers(train_sample.samples[0], train_sample.sample_labels,
                                         comparison.samples[0], comparison.sample_labels)
      result["probe_accuracy"] = [accuracy[n] for n in names]
  if cfg.stderr_groups:
    result["block_confidence"] = _block_confidence(cfg, trained, config, result, comparison, pc1, init_pc1)
  if _wants_pruning(cfg, spec):
    result["pruning"] = pruning_analysis(cfg, trained, config, result["blocks"]["trained"])
  return result


def _block_confidence(cfg: WideDeepConfig, trained, config, result: dict, comparison, pc1, init_pc1) -> dict:
  """Error bars of the detected block: CKA SEs from a jackknife pass, PC1 SEs from a bootstrap of the sample."""
  block = result["blocks"]["trained"]
  if not block["size"]:
    return {}
  batch_size = cfg.stderr_batch_size or cfg.cka_batch_size
  batches, total = _batches(config, config.eval_split, batch_size, cfg.max_eval_examples)
  if total < 2:  # a jackknife needs two groups of batches
    return {"skipped": f"the evaluation split makes {total} batch(es) of {batch_size} per device; lower "
                       "`stderr_batch_size` for error bars"}
  errors = extract.compare_models(trained, batches, total=total, stderr_groups=cfg.stderr_groups,
                                  progress=False).within[0]
  pc1_se = init_se = None
  if pc1 is not None and cfg.pc1_bootstrap:
    names = result["layer_names"]
    pc1_se, init_se = np.full(len(names), np.nan), np.full(len(names), np.nan)
    for i in range(block["start"], block["end"] + 1):
      for samples, out in ((comparison.samples[0], pc1_se), (comparison.samples[1], init_se)):
        out[i] = float(uncertainty.pc1_fraction_bootstrap(samples[names[i]], num_resamples=cfg.pc1_bootstrap).stderr)
  confidence = block_structure.block_confidence(
      block, errors.matrix, errors.stderr, threshold=cfg.block_threshold, trained_pc1=pc1,
      trained_pc1_stderr=pc1_se, baseline_pc1=init_pc1, baseline_pc1_stderr=init_se)
  return {**confidence, "stderr_batch_size": batch_size, "stderr_groups": cfg.stderr_groups,
          "num_batches": errors.num_batches}


def _model_heatmap(spec: ModelSpec, result: dict, out_dir: pathlib.Path, *, redraw: bool = False) -> None:
  path = out_dir / f"{spec.name}_cka.png"
  if redraw or not path.exists():
    names = result["layer_names"]
    plotting.cka_heatmap(np.array(result["cka_trained"]), path, x_labels=names, y_labels=names,
                         title=f"{spec.name}: test acc {result['test_accuracy']:.3f}")


def _wants_pruning(cfg: WideDeepConfig, spec: ModelSpec) -> bool:
  return cfg.pruning and spec.train_fraction == 1.0 and spec.seed == min(cfg.seeds)


def pruning_analysis(cfg: WideDeepConfig, model, config, block: dict) -> dict | None:
  """Test accuracy with residual blocks deleted (Nguyen et al. 2021, Sec. 4; `analysis.pruning.block_pruning`)
  on the CKA evaluation examples, inside vs outside the trained block `block`."""
  # The pruned forward passes run on one device per process: every process reads the whole split (`local`).
  batches, _ = _batches(config, config.eval_split, cfg.cka_batch_size, cfg.max_eval_examples, local=True)
  return pruning.block_pruning(model, batches, _block_range(block))


def cross_analysis(cfg: WideDeepConfig, a: ModelSpec, b: ModelSpec, workdir: pathlib.Path, results: dict) -> dict:
  """Cross-model CKA of two trained models (another seed or another architecture), inside vs outside their
  blocks (`analysis.cross_model`). Cached as `analysis/cross_<a>__<b>.json`, with the figure
  `cross_<a>__<b>.png` (redrawn when missing)."""
  out = skeleton.cached_json(workdir / "analysis" / f"cross_{a.name}__{b.name}.json",
                             lambda: _cross_cka(cfg, a, b, workdir, results))
  figure = workdir / f"cross_{a.name}__{b.name}.png"
  if not figure.exists():  # Also redrawn from the cache (a copied or pruned work directory).
    plotting.cka_heatmap(np.array(out["cross_cka"]).T, figure, x_labels=results[a.name]["layer_names"],
                         y_labels=results[b.name]["layer_names"],
                         title=f"{a.label} (seed {a.seed}) vs {b.label} (seed {b.seed})", x_name=a.name, y_name=b.name)
  return out


def _cross_cka(cfg: WideDeepConfig, a: ModelSpec, b: ModelSpec, workdir: pathlib.Path, results: dict) -> dict:
  from rsim_jax.train import load_model

  model_a, config = load_model(skeleton.model_dir(workdir, a.name))
  model_b, _ = load_model(skeleton.model_dir(workdir, b.name))
  batches, total = _batches(config, config.eval_split, cfg.cka_batch_size, cfg.max_eval_examples)
  comparison = extract.compare_models([model_a, model_b], batches, total=total, progress=False)
  blocks = [block_structure.Block.from_json(results[s.name]["blocks"]["trained"])
            if results[s.name]["blocks"]["has_block"] else None for s in (a, b)]
  summary = cross_model.summarize_cross_cka(comparison.cross.matrix, *blocks)
  return {"a": a.name, "b": b.name, "cross_cka": comparison.cross.matrix.tolist(), "summary": summary.to_json()}


def _cross_pairs(cfg: WideDeepConfig, specs: Sequence[ModelSpec]) -> list[tuple[ModelSpec, ModelSpec, str]]:
  """Cross-seed pairs (first two seeds of every architecture that has two) and the configured cross-architecture
  pairs, at training fraction 1."""
  pairs = []
  full = [s for s in specs if s.train_fraction == 1.0 and not s.ablation]
  for arch in dict.fromkeys(s.architecture for s in full):
    same = sorted((s for s in full if s.architecture == arch), key=lambda s: s.seed)
    if len(same) >= 2:
      pairs.append((same[0], same[1], "seed"))
  seed = min(cfg.seeds)
  for arch_a, arch_b in cfg.cross_architectures:
    pairs.append((ModelSpec(*arch_a, 1.0, seed), ModelSpec(*arch_b, 1.0, seed), "architecture"))
  return pairs


def population_analysis(cfg: WideDeepConfig, results: dict) -> dict | None:
  """Output-level differences between the first two population architectures (Nguyen et al. 2021, Sec. 6;
  `analysis.output_errors.compare_populations`): per-example errors (permutation test and Fisher + BH, against
  a seed-split baseline) and per-class accuracy (Welch t-tests + BH)."""
  if len(cfg.population) < 2:
    return None
  a, b = (np.array([results[ModelSpec(*arch, 1.0, s).name]["predictions"] for s in cfg.population_seeds])
          for arch in cfg.population[:2])
  labels = np.array(results[ModelSpec(*cfg.population[0], 1.0, cfg.population_seeds[0]).name]["labels"])
  return {"a": "ResNet-{} ×{}".format(*cfg.population[0]), "b": "ResNet-{} ×{}".format(*cfg.population[1]),
          "num_seeds": len(cfg.population_seeds), **output_errors.compare_populations(a, b, labels)}


def _ablation_rows(cfg: WideDeepConfig, results: dict) -> list[dict]:
  """One row per (architecture, seed) of the ablations: the numbers of the study's recipe ("standard") and of
  every ablation (`analysis.block_report.recipe_summary`)."""
  rows = []
  for depth, width in cfg.ablation_architectures:
    for seed in cfg.ablation_seeds:
      names = {name or "standard": ModelSpec(depth, width, 1.0, seed, name).name for name in ("", *cfg.ablations)}
      if all(n in results for n in names.values()):
        rows.append({"label": f"ResNet-{depth} ×{width}", "seed": seed,
                     "runs": {k: block_report.recipe_summary(results[n]) for k, n in names.items()}})
  return rows


def run(cfg: WideDeepConfig, workdir: io.PathLike):
  """Runs (or resumes) the study in `workdir` (local or `gs://…`); returns the path of `report.md`.

  Multi-host (`rsim --multihost study wide_deep ...` on every host): training and extraction span all hosts'
  devices, every process computes the same analyses, process 0 writes every file (`rsim_jax.io`)."""
  workdir = io.path(workdir)
  specs = cfg.models()
  by_name = {spec.name: spec for spec in specs}
  results = skeleton.train_all(
      [(spec.name, train_config(cfg, spec)) for spec in specs], workdir,
      then=lambda name, model_dir, _: analyse_model(cfg, by_name[name], model_dir, workdir / "analysis"))
  cross = []
  for a, b, kind in _cross_pairs(cfg, specs):
    print(f"cross-model CKA ({kind}): {a.name} vs {b.name}", flush=True)
    cross.append({"kind": kind, **cross_analysis(cfg, a, b, workdir, results)})
  population = population_analysis(cfg, results)
  ablations = _ablation_rows(cfg, results)
  skeleton.write_results(workdir, {
      "models": {name: {k: v for k, v in r.items() if not k.startswith("cka_") and k not in ("predictions", "labels")}
                 for name, r in results.items()},
      "ablations": ablations,
      "cross": [{k: v for k, v in c.items() if k != "cross_cka"} for c in cross],
      "population": population,
  })
  figures = _figures(cfg, specs, results, ablations, population, cross, workdir)
  return write_report(cfg, specs, results, cross, population, ablations, figures, workdir)


def _grid_figure(results: dict[str, dict], specs: Sequence[ModelSpec], get, path: pathlib.Path, title: str, *,
                 outline: bool = True):
  """Row 1: the depths at width 1; row 2: the widths (the paper's Figure 1/2 layout). With `outline`, each
  detected block is outlined and named in the panel title."""
  depth_specs = [s for s in specs if s.width == 1]
  width_specs = [s for s in specs if s.width != 1]
  groups = [("depth", depth_specs), ("width", width_specs)]
  groups = [(label, group) for label, group in groups if group]

  def title_of(s):
    block = results[s.name]["blocks"]["trained"]
    return f"{s.label}\nblock {block['start']}–{block['end']}" if outline and block["size"] else s.label

  return plotting.cka_heatmap_grid(
      [[np.array(get(results[s.name])) for s in group] for _, group in groups],
      path,
      titles=[[title_of(s) for s in group] for _, group in groups],
      row_labels=[label for label, _ in groups],
      suptitle=title,
      boxes=[[_block_range(results[s.name]["blocks"]["trained"]) if outline else None for s in group]
             for _, group in groups],
  )


def _grid_specs(cfg: WideDeepConfig, specs: Sequence[ModelSpec], fraction: float, seed: int) -> list[ModelSpec]:
  grid = {(d, 1) for d in cfg.depths} | {(d, w) for d in cfg.width_depths for w in cfg.widths}
  return [s for s in specs
          if s.train_fraction == fraction and s.seed == seed and s.architecture in grid and not s.ablation]


def _figures(cfg, specs, results, ablations, population, cross, workdir) -> list[pathlib.Path]:
  figures = []
  for fraction in cfg.train_fractions:
    for seed in cfg.seeds:
      group = _grid_specs(cfg, specs, fraction, seed)
      if not group:
        continue
      tag = f"frac{fraction:g}_seed{seed}"
      figures.append(_grid_figure(results, group, lambda r: r["cka_trained"], workdir / f"cka_grid_{tag}.png",
                                  f"trained, training fraction {fraction:g}, seed {seed} (dashed: detected block)"))
      figures.append(_grid_figure(results, group, lambda r: r["cka_init"], workdir / f"cka_grid_init_{tag}.png",
                                  f"at initialisation (baseline), seed {seed}", outline=False))
  main = _grid_specs(cfg, specs, 1.0, min(cfg.seeds))
  if cfg.sample_size and main:
    figures.append(_grid_figure(results, main, lambda r: r["pc1"]["cka_pc1_removed"],
                                workdir / "cka_grid_pc1_removed.png", "full-batch CKA on the sample, PC1 removed"))
    spans = {s.label: _block_range(results[s.name]["blocks"]["trained"]) for s in main}
    spans = {k: v for k, v in spans.items() if v is not None}
    profiles = {s.label: results[s.name]["pc1"]["pc1_fraction"] for s in main}
    profiles.update({f"{s.label} (init)": results[s.name]["pc1"]["pc1_fraction_init"] for s in main})
    figures.append(plotting.layer_profiles(
        profiles, workdir / "pc1_fraction.png", ylabel="variance fraction on PC1", ylim=(0, 1),
        styles={f"{s.label} (init)": ":" for s in main}, spans=spans,
        title="first principal component per layer (shaded: block)"))
    if cfg.probe_train_examples:
      figures.append(plotting.layer_profiles(
          {s.label: results[s.name]["probe_accuracy"] for s in main}, workdir / "probe_accuracy.png",
          ylabel="linear probe test accuracy", spans=spans, title="linear probes per layer (shaded: block)"))
  pruned = [s for s in main if results[s.name].get("pruning")]
  if pruned:
    profiles, spans = {}, {}
    for s in pruned:
      r = results[s.name]
      drop = np.full(len(r["layer_names"]), np.nan)
      drop[r["pruning"]["block_output_layer"]] = r["pruning"]["full_accuracy"] - np.array(r["pruning"]["single_accuracy"])
      profiles[s.label] = drop
      if (span := _block_range(r["blocks"]["trained"])) is not None:
        spans[s.label] = span
    figures.append(plotting.layer_profiles(
        profiles, workdir / "pruning.png", ylabel="test accuracy drop", spans=spans, styles={k: "o" for k in profiles},
        title="deleting one residual block (at its output layer; shaded: block)"))
  if len(cfg.train_fractions) > 1:
    fractions = sorted(cfg.train_fractions)
    sizes, pc1_max = {}, {}
    for arch in dict.fromkeys(s.architecture for s in specs if s.train_fraction != 1.0):
      label = f"ResNet-{arch[0]} ×{arch[1]}"
      rows = [results.get(ModelSpec(*arch, f, min(cfg.seeds)).name) for f in fractions]
      sizes[label] = [r["blocks"]["trained"]["size"] if r else np.nan for r in rows]
      pc1_max[label] = [max(r["pc1"]["pc1_fraction"]) if r and "pc1" in r else np.nan for r in rows]
    figures.append(plotting.metric_lines(fractions, sizes, workdir / "block_vs_dataset_size.png", log_x=True,
                                         xlabel="training-set fraction", ylabel="block size (layers; 0 = none)",
                                         title="dataset size and the block structure"))
    if cfg.sample_size:
      figures.append(plotting.metric_lines(fractions, pc1_max, workdir / "pc1_vs_dataset_size.png", log_x=True,
                                           xlabel="training-set fraction", ylabel="largest PC1 fraction of any layer",
                                           title="dataset size and the first principal component"))
  if ablations and cfg.sample_size:
    profiles, styles = {}, {}
    for row in ablations:
      for k, (name, r) in enumerate(row["runs"].items()):
        key = f"{row['label']} {name}, seed {row['seed']}"
        profiles[key] = r["pc1_fraction"]
        styles[key] = ("-", "--", ":", "-.")[k % 4]
    figures.append(plotting.layer_profiles(
        profiles, workdir / "ablation_pc1.png", ylabel="variance fraction on PC1", ylim=(0, 1), styles=styles,
        title="the study's recipe (solid) vs each ablation"))
  if population:
    figures.append(plotting.output_differences(
        population["error_rate_a"], population["error_rate_b"], population["classes"]["accuracy_a"],
        population["classes"]["accuracy_b"], workdir / "output_differences.png", label_a=population["a"],
        label_b=population["b"], significant_classes=population["classes"]["significant"],
        title=f"{population['a']} vs {population['b']}, {population['num_seeds']} seeds each"))
  return figures + [workdir / f"cross_{c['a']}__{c['b']}.png" for c in cross]


def write_report(cfg, specs, results, cross, population, ablations, figures, workdir: pathlib.Path):
  models = [(spec.name, results[spec.name]) for spec in specs]
  method = [
      f"Block = at least {cfg.block_min_size} contiguous layers with all pairwise minibatch CKA ≥ "
      f"{cfg.block_threshold} (test split),",
      f"each with a first principal component carrying ≥ {cfg.block_min_pc1} of its variance and ≥ "
      f"{cfg.block_min_pc1_gain} more than the",
      "same network at initialisation at the same layer (`analysis.block_structure.block_vs_baseline`). The untrained",
      "network (same architecture and seed) is the baseline every number is read against: its own longest similar",
      "run is listed for reference (deep untrained nets have long runs of trivially similar neighbours elsewhere).",
      f"PC1 and probe numbers are on a random sample of {cfg.sample_size} test examples; probes are ridge classifiers",
      f"fitted on {cfg.probe_train_examples} training examples.",
  ]
  return skeleton.write_report(workdir, [
      "# Wide vs deep: within-model CKA, block structure and what it means", method, block_report.model_table(models),
      "Without a block, the PC1 and CKA columns are read over the trained network's longest similar run.",
      *block_report.ablation_section(cfg.ablations, ablations), *block_report.confidence_section(models), *block_report.pruning_section(models),
      *block_report.cross_section(cross), *block_report.population_section(population)], figures)
