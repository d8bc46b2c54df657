"""Nguyen, Raghu & Kornblith (ICLR 2021), "Do Wide and Deep Networks Learn the Same Things?" end to end.

Stages (each resumes):
  1. train every model of the grid (depth × width × training-set fraction × seed) with `rsim_jax.train`;
  2. one pass of the evaluation split through each trained model *and* the same network at initialisation:
     within-model minibatch CKA of all layers (`rsim_jax.extract.compare_models`);
  3. block structure per model against its untrained baseline (`rsim_jax.analysis.block_structure`);
  4. figures (heatmap grids, trained and at initialisation) and `report.md` with the numbers.

Variants (`get_config`): "local" (scikit-learn digits, minutes on a 2-core CPU), "cifar10" (the paper's grid,
for accelerators).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np

from rsim_jax import extract, plotting
from rsim_jax.analysis import block_structure


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  depth: int
  width: int
  train_fraction: float = 1.0
  seed: int = 0

  @property
  def name(self) -> str:
    frac = "" if self.train_fraction == 1.0 else f"_frac{self.train_fraction:g}"
    return f"resnet{self.depth}_x{self.width}{frac}_seed{self.seed}"


@dataclasses.dataclass(frozen=True)
class WideDeepConfig:
  """The study: which models to train, how, and how to compare them.

  Attributes:
    train: keyword arguments of `rsim_jax.train.TrainConfig` shared by every model (data, schedule, ...).
    depths, widths: the grid of ResNet depths (at width 1) and widths (at `width_depths`).
    width_depths: depths at which widths are varied.
    train_fractions: training-set fractions (the dataset-size sweep; 1.0 = all).
    seeds: seeds per configuration.
    cka_batch_size: minibatch size of the CKA estimate (per device).
    block_threshold: CKA a pair of layers must reach to count as one block.
    max_eval_examples: cap on evaluation examples used for CKA (None = all).
  """

  train: dict
  depths: tuple[int, ...]
  widths: tuple[int, ...]
  width_depths: tuple[int, ...]
  train_fractions: tuple[float, ...] = (1.0,)
  seeds: tuple[int, ...] = (0,)
  cka_batch_size: int = 256
  block_threshold: float = 0.9
  max_eval_examples: int | None = None

  def models(self) -> list[ModelSpec]:
    specs = []
    for fraction in self.train_fractions:
      for seed in self.seeds:
        for depth in self.depths:
          specs.append(ModelSpec(depth, 1, fraction, seed))
        for depth in self.width_depths:
          for width in self.widths:
            if width != 1 or depth not in self.depths:
              specs.append(ModelSpec(depth, width, fraction, seed))
    return list(dict.fromkeys(specs))


def get_config(variant: str = "local") -> WideDeepConfig:
  """The study's variants: "local" (digits, CPU minutes) and "cifar10" (the paper's grid, accelerators)."""
  if variant == "local":
    # NOTES.md: on digits, ResNet-20 ×1 (~15 s) vs ResNet-56 ×1 (~1 min) for depth, ×1 vs ×4 for width.
    return WideDeepConfig(
        train=dict(data="digits", data_kwargs={"image_size": 8}, batch_size=128, eval_batch_size=512,
                   num_epochs=30, lr=0.1, warmup_epochs=1, weight_decay=5e-4, augment=False,
                   model_kwargs={"zero_init_last_bn": True}, progress=True),
        depths=(20, 56), widths=(1, 4), width_depths=(20,), cka_batch_size=128,
    )
  if variant == "cifar10":
    # The paper's grid and recipe (Nguyen et al. 2021, App. A): SGD momentum 0.9, lr 0.1, batch 128,
    # weight decay 5e-4, 300 epochs with step decay, standard augmentation; CKA on the 10,000 test images.
    return WideDeepConfig(
        train=dict(data="cifar10", batch_size=128, eval_batch_size=1000, num_epochs=300, lr=0.1,
                   schedule="step", step_boundaries=(0.5, 0.75), weight_decay=5e-4, augment=True),
        depths=(14, 20, 26, 38, 56, 110, 164), widths=(1, 2, 4, 8, 10), width_depths=(14, 26, 38),
        train_fractions=(1.0, 0.25, 0.0625), cka_batch_size=256,
    )
  raise ValueError(f"Unknown wide_deep variant {variant!r}; choose 'local' or 'cifar10'.")


def train_config(cfg: WideDeepConfig, spec: ModelSpec):
  from rsim_jax.train import TrainConfig

  kwargs = dict(cfg.train)
  model_kwargs = {**dict(kwargs.pop("model_kwargs", {})), "depth": spec.depth, "width": spec.width}
  subset = None if spec.train_fraction == 1.0 else spec.train_fraction
  return TrainConfig(model="resnet", model_kwargs=model_kwargs, train_subset=subset, seed=spec.seed, **kwargs)


def initial_model(workdir: pathlib.Path):
  """The network of a trained run's work directory as it was at initialisation (same seed, same layers)."""
  from rsim_jax.train import loop

  config = loop.TrainConfig.from_json((workdir / loop.CONFIG_FILE).read_text())
  info = json.loads((workdir / loop.RUN_INFO_FILE).read_text())
  program = loop.Program(config, info["image_shape"], info["num_classes"], total_steps=info["total_steps"],
                         warmup_steps=info["warmup_steps"])
  state = program.init_state()
  model = program.model(state["params"], state["model_state"])
  model.eval()
  return model


def _eval_batches(config, batch_size: int, max_examples: int | None):
  from rsim_jax import data

  ds = data.load(config.data, config.eval_split, **config.data_kwargs)
  n = len(ds.labels) if max_examples is None else min(max_examples, len(ds.labels))
  if n < len(ds.labels):
    ds = data.select(ds, np.arange(n)) if hasattr(data, "select") else ds
  total = -(-len(ds.labels) // batch_size)
  return data.eval_batches(ds, batch_size=batch_size), total


def analyse_model(cfg: WideDeepConfig, spec: ModelSpec, model_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
  """Within-model CKA of the trained model and of the same network at initialisation, and their blocks."""
  cache = out_dir / f"{spec.name}.json"
  if cache.exists():
    return json.loads(cache.read_text())
  from rsim_jax.train import load_model

  trained, config = load_model(model_dir)
  untrained = initial_model(model_dir)
  batches, total = _eval_batches(config, cfg.cka_batch_size, cfg.max_eval_examples)
  comparison = extract.compare_models([trained, untrained], batches, total=total)
  names = comparison.within[0].x_names
  trained_cka, init_cka = comparison.within[0].matrix, comparison.within[1].matrix
  blocks = block_structure.block_vs_baseline(trained_cka, init_cka, threshold=cfg.block_threshold, names=names)
  final = json.loads((model_dir / "final_metrics.json").read_text())
  result = {
      "spec": dataclasses.asdict(spec),
      "layer_names": list(names),
      "test_accuracy": final["test_accuracy"],
      "accuracy_check": comparison.accuracy(0),
      "cka_trained": trained_cka.tolist(),
      "cka_init": init_cka.tolist(),
      "blocks": blocks.to_json(),
  }
  out_dir.mkdir(parents=True, exist_ok=True)
  cache.write_text(json.dumps(result))
  plotting.cka_heatmap(trained_cka, out_dir / f"{spec.name}_cka.png", x_labels=names, y_labels=names,
                       title=f"{spec.name}: test acc {final['test_accuracy']:.3f}")
  return result


def _grid_figure(results: dict[str, dict], specs: Sequence[ModelSpec], key: str, path: pathlib.Path, title: str):
  """Row 1: the depths at width 1; row 2: the widths (the paper's Figure 1/2 layout)."""
  depth_specs = [s for s in specs if s.width == 1]
  width_specs = [s for s in specs if s.width != 1]
  groups = [("depth", depth_specs), ("width", width_specs)]
  groups = [(label, group) for label, group in groups if group]
  return plotting.cka_heatmap_grid(
      [[np.array(results[s.name][key]) for s in group] for _, group in groups],
      path,
      titles=[[f"ResNet-{s.depth} ×{s.width}" for s in group] for _, group in groups],
      row_labels=[label for label, _ in groups],
      suptitle=title,
  )


def run(cfg: WideDeepConfig, workdir: str | pathlib.Path) -> pathlib.Path:
  """Runs (or resumes) the study in `workdir`; returns the path of `report.md`."""
  from rsim_jax.train import train

  workdir = pathlib.Path(workdir)
  specs = cfg.models()
  results = {}
  for i, spec in enumerate(specs):
    print(f"[{i + 1}/{len(specs)}] {spec.name}", flush=True)
    model_dir = workdir / "models" / spec.name
    train(train_config(cfg, spec), model_dir)
    results[spec.name] = analyse_model(cfg, spec, model_dir, workdir / "analysis")
  figures = []
  for fraction in cfg.train_fractions:
    for seed in cfg.seeds:
      group = [s for s in specs if s.train_fraction == fraction and s.seed == seed]
      tag = f"frac{fraction:g}_seed{seed}"
      figures.append(_grid_figure(results, group, "cka_trained", workdir / f"cka_grid_{tag}.png",
                                  f"trained, training fraction {fraction:g}, seed {seed}"))
      figures.append(_grid_figure(results, group, "cka_init", workdir / f"cka_grid_init_{tag}.png",
                                  f"at initialisation (baseline), seed {seed}"))
  (workdir / "results.json").write_text(json.dumps(
      {name: {k: v for k, v in r.items() if not k.startswith("cka_")} for name, r in results.items()}, indent=1))
  return write_report(cfg, specs, results, figures, workdir)


def write_report(cfg, specs, results, figures, workdir: pathlib.Path) -> pathlib.Path:
  lines = [
      "# Wide vs deep: within-model CKA and block structure",
      "",
      f"Block = longest run of layers with all pairwise minibatch CKA ≥ {cfg.block_threshold} (test split); the",
      "untrained network (same architecture and seed, at initialisation) is the baseline every block is read against.",
      "",
      "| model | test acc | layers | block (trained) | block (init) | gain | mean CKA in block |",
      "|---|---:|---:|---|---|---:|---:|",
  ]
  for spec in specs:
    r = results[spec.name]
    b = r["blocks"]
    tb, ib = b["trained"], b["baseline"]

    def span(block):
      return f"{block['start']}–{block['end']} ({block['size']})" if block["size"] else "none"

    lines.append(
        f"| {spec.name} | {r['test_accuracy']:.3f} | {len(r['layer_names'])} | {span(tb)} | {span(ib)} | "
        f"{b['size_gain']:+d} | {tb['mean_cka']:.3f} |"
    )
  lines += ["", "Figures:", ""] + [f"- ![{p.stem}]({p.name})" for p in figures]
  path = workdir / "report.md"
  path.write_text("\n".join(lines) + "\n")
  return path
