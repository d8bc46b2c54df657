"""Nguyen, Raghu & Kornblith (ICLR 2021), "Do Wide and Deep Networks Learn the Same Things?" end to end: the
study's analyses, its run and its report (configs in `config`, figures in `figures`).

Stages (each resumes; finished models and analyses are read back from the work directory):
  1. train every model of the grid (depth × width × training-set fraction × seed, plus the seed populations)
     with `rsim_jax.train`;
  2. per model, one pass of the evaluation split through the trained network *and* the same network at
     initialisation (`rsim_jax.extract.compare_models`): within-model minibatch CKA of all layers, every
     prediction, and a fixed random sample of every layer's activations;
  3. per model: block structure against the untrained baseline (`analysis.block_structure`), first principal
     component (`analysis.principal_components`: PC1 variance fraction, CKA with PC1, CKA with PC1 removed),
     linear probes per layer (`analysis.probes`, fitted on a training-split sample);
  4. across models: cross-seed and cross-architecture CKA inside vs outside the block (`analysis.cross_model`;
     every pair of an architecture's first `cross_seeds` seeds, averaged with a bootstrap over seeds);
     output-level differences of seed populations (`analysis.output_errors`);
  5. figures and `report.md` with the numbers.

Variants and overrides: `config` (`get_config`, `plan`, `--set train.num_epochs=40 --set widths=[1,2,4]`); a
work directory refuses a rerun whose config differs in a field outside `WideDeepConfig.RUN_ONLY_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from rsim_jax import extract, io, plotting
from rsim_jax.analysis import (block_report, block_structure, cross_model, output_errors, principal_components, probes,
                               pruning, uncertainty)
from rsim_jax.studies import skeleton
from rsim_jax.studies.wide_deep import figures as wide_deep_figures
from rsim_jax.studies.wide_deep.config import ModelSpec, WideDeepConfig, train_config

# Bumped when a cached per-model analysis would no longer match what `analyse_model` computes (2: the block is
# read against the untrained network at the same layers).
ANALYSIS_VERSION = 4  # 3: block_confidence (error bars of the block); 4: every model's CKA standard errors


def detect_block(cfg: WideDeepConfig, trained_cka, init_cka, pc1, init_pc1, names):
  """The block of one model against its untrained twin (`analysis.block_structure.block_vs_baseline`)."""
  return block_structure.block_vs_baseline(
      trained_cka, init_cka, threshold=cfg.block_threshold, names=names, trained_pc1=pc1, baseline_pc1=init_pc1,
      min_pc1=cfg.block_min_pc1, min_pc1_gain=cfg.block_min_pc1_gain, min_size=cfg.block_min_size)


def _batches(config, split: str, batch_size: int, max_examples: int | None, *, local: bool = False):
  """`batch_size` examples per device (the CKA minibatch); `local`: every process reads the whole split."""
  return extract.split_batches(config, split=split, batch_size=batch_size, max_examples=max_examples, local=local)


def analyse_model(cfg: WideDeepConfig, spec: ModelSpec, model_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
  """Everything about one model: within-model CKA (trained and at initialisation), block vs baseline, PC1
  analysis, linear probes, test predictions, block pruning. Cached as `out_dir/<name>.json` (recomputed when
  made by another `ANALYSIS_VERSION`; pruning added to a cache without it) with its heat map beside its
  jackknife standard errors, `out_dir/<name>_cka.png` (redrawn when missing)."""
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
    block = block_report.layer_range(result["blocks"]["trained"])
    summary = principal_components.pc1_summary(comparison.samples[0], block=block)
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
    errors = _cka_errors(cfg, trained, config)
    if isinstance(errors, str):
      result["block_confidence"] = {"skipped": errors}
    else:
      result["cka_trained_stderr"] = errors.stderr.tolist()
      result["stderr_pass"] = {"batch_size": cfg.stderr_batch_size or cfg.cka_batch_size,
                               "groups": cfg.stderr_groups, "num_batches": errors.num_batches}
      result["block_confidence"] = _block_confidence(cfg, result, errors, comparison, pc1, init_pc1)
  if _wants_pruning(cfg, spec):
    result["pruning"] = pruning_analysis(cfg, trained, config, result["blocks"]["trained"])
  return result


def _cka_errors(cfg: WideDeepConfig, trained, config):
  """The trained network's minibatch CKA re-streamed in batches of `stderr_batch_size` with a jackknife over
  `stderr_groups` groups of batches (`extract.compare_models(stderr_groups=)`): every entry's standard error.
  A string says why not (too few batches)."""
  batch_size = cfg.stderr_batch_size or cfg.cka_batch_size
  batches, total = _batches(config, config.eval_split, batch_size, cfg.max_eval_examples)
  if total < 2:  # a jackknife needs two groups of batches
    return (f"the evaluation split makes {total} batch(es) of {batch_size} per device; lower "
            "`stderr_batch_size` for error bars")
  return extract.compare_models(trained, batches, total=total, stderr_groups=cfg.stderr_groups,
                                progress=False).within[0]


def _block_confidence(cfg: WideDeepConfig, result: dict, errors, comparison, pc1, init_pc1) -> dict:
  """Error bars of the detected block: CKA SEs from the jackknife pass `errors` (described by
  `result["stderr_pass"]`), PC1 SEs from a bootstrap of the sample (block layers only)."""
  block = result["blocks"]["trained"]
  if not block["size"]:
    return {}
  pc1_se = init_se = None
  if pc1 is not None and cfg.pc1_bootstrap:
    names = result["layer_names"]
    pc1_se, init_se = np.full(len(names), np.nan), np.full(len(names), np.nan)
    for i in range(block["start"], block["end"] + 1):
      for samples, out in ((comparison.samples[0], pc1_se), (comparison.samples[1], init_se)):
        out[i] = float(uncertainty.pc1_fraction_bootstrap(samples[names[i]], num_resamples=cfg.pc1_bootstrap).stderr)
  return block_structure.block_confidence(
      block, errors.matrix, errors.stderr, threshold=cfg.block_threshold, trained_pc1=pc1,
      trained_pc1_stderr=pc1_se, baseline_pc1=init_pc1, baseline_pc1_stderr=init_se)


def _model_heatmap(spec: ModelSpec, result: dict, out_dir: pathlib.Path, *, redraw: bool = False) -> None:
  path = out_dir / f"{spec.name}_cka.png"
  if redraw or not path.exists():
    names = result["layer_names"]
    # The standard errors are those of the jackknife pass (smaller batches than the main estimate's, so if
    # anything larger than its noise): enough to tell a block from minibatch noise at a glance.
    stderr = result.get("cka_trained_stderr")
    plotting.cka_heatmap(np.array(result["cka_trained"]), path, x_labels=names, y_labels=names,
                         title=f"{spec.name}: test acc {result['test_accuracy']:.3f}",
                         stderr=None if stderr is None else np.array(stderr, np.float64))


def _wants_pruning(cfg: WideDeepConfig, spec: ModelSpec) -> bool:
  return cfg.pruning and spec.train_fraction == 1.0 and spec.seed == min(cfg.seeds)


def pruning_analysis(cfg: WideDeepConfig, model, config, block: dict) -> dict | None:
  """Test accuracy with residual blocks deleted (Nguyen et al. 2021, Sec. 4; `analysis.pruning.block_pruning`)
  on the CKA evaluation examples, inside vs outside the trained block `block`."""
  # The pruned forward passes run on one device per process: every process reads the whole split (`local`).
  batches, _ = _batches(config, config.eval_split, cfg.cka_batch_size, cfg.max_eval_examples, local=True)
  return pruning.block_pruning(model, batches, block_report.layer_range(block))


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
  """Cross-seed pairs (every pair among the first `cross_seeds` seeds of each architecture trained with several)
  and the configured cross-architecture pairs, at training fraction 1."""
  pairs = []
  full = [s for s in specs if s.train_fraction == 1.0 and not s.ablation]
  for arch in dict.fromkeys(s.architecture for s in full):
    same = sorted((s for s in full if s.architecture == arch), key=lambda s: s.seed)[:cfg.cross_seeds]
    pairs += [(a, b, "seed") for a, b in itertools.combinations(same, 2)]
  seed = min(cfg.seeds)
  for arch_a, arch_b in cfg.cross_architectures:
    pairs.append((ModelSpec(*arch_a, 1.0, seed), ModelSpec(*arch_b, 1.0, seed), "architecture"))
  return pairs


def cross_seed_analysis(cross: Sequence[dict], specs: Mapping[str, ModelSpec]) -> list[dict]:
  """Per architecture with ≥ 3 seeds compared pairwise: the cross-seed CKA of corresponding layers, mean over
  the seed pairs with a bootstrap over seeds (`analysis.cross_model.cross_seed_profile`).

  Args:
    cross: `{"kind", "a", "b", "summary"}` per compared pair (`cross_analysis` + kind); only kind "seed" is used.
    specs: model name → its `ModelSpec`.
  """
  groups: dict[tuple[int, int], dict] = {}
  for c in cross:
    if c["kind"] == "seed":
      a, b = specs[c["a"]], specs[c["b"]]
      groups.setdefault(a.architecture, {})[(a.seed, b.seed)] = np.array(c["summary"]["corresponding_cka"])
  rows = []
  for (depth, width), values in groups.items():
    if len({s for pair in values for s in pair}) >= 3:
      rows.append({"label": f"ResNet-{depth} ×{width}", "architecture": [depth, width],
                   **cross_model.cross_seed_profile(values)})
  return rows


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
  cross_seed = cross_seed_analysis(cross, by_name)
  population = population_analysis(cfg, results)
  ablations = _ablation_rows(cfg, results)
  skeleton.write_results(workdir, {
      "models": {name: {k: v for k, v in r.items() if not k.startswith("cka_") and k not in ("predictions", "labels")}
                 for name, r in results.items()},
      "ablations": ablations,
      "cross": [{k: v for k, v in c.items() if k != "cross_cka"} for c in cross],
      "population": population,
      "cross_seed": cross_seed,
  })
  figures = wide_deep_figures.figures(cfg, specs, results, ablations, population, cross, cross_seed, workdir)
  return write_report(cfg, specs, results, cross, cross_seed, population, ablations, figures, workdir)


def write_report(cfg, specs, results, cross, cross_seed, population, ablations, figures, workdir: pathlib.Path):
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
      *block_report.ablation_section(cfg.ablations, ablations), *block_report.confidence_section(models),
      *block_report.pruning_section(models),
      *block_report.cross_section(cross), *block_report.cross_seed_section(cross_seed),
      *block_report.population_section(population)], figures)
