"""The wide/deep study's figures: CKA heat maps in the paper's layout (a row of depths, a row of widths, the
detected block outlined), the untrained baseline, PC1 removed, PC1 and probe profiles, pruning, dataset size, the
recipe ablations and the output-level comparison. Drawn from the cached per-model results of `study`."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np

from rsim_jax import plotting
from rsim_jax.analysis import block_report
from rsim_jax.studies.wide_deep.config import ModelSpec, WideDeepConfig


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
      boxes=[[block_report.layer_range(results[s.name]["blocks"]["trained"]) if outline else None for s in group]
             for _, group in groups],
  )


def _grid_specs(cfg: WideDeepConfig, specs: Sequence[ModelSpec], fraction: float, seed: int) -> list[ModelSpec]:
  grid = {(d, 1) for d in cfg.depths} | {(d, w) for d in cfg.width_depths for w in cfg.widths}
  return [s for s in specs
          if s.train_fraction == fraction and s.seed == seed and s.architecture in grid and not s.ablation]


def figures(cfg: WideDeepConfig, specs, results, ablations, population, cross, cross_seed,
            workdir) -> list[pathlib.Path]:
  """Every figure of the report from the cached results (each is redrawn on every run: they are cheap)."""
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
    spans = {s.label: block_report.layer_range(results[s.name]["blocks"]["trained"]) for s in main}
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
      prune = r["pruning"]
      drop[prune["block_output_layer"]] = prune["full_accuracy"] - np.array(prune["single_accuracy"])
      profiles[s.label] = drop
      if (span := block_report.layer_range(r["blocks"]["trained"])) is not None:
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
  if cross_seed:
    first = {r["label"]: ModelSpec(*r["architecture"], 1.0, r["seeds"][0]).name for r in cross_seed}
    spans = {label: block_report.layer_range(results[name]["blocks"]["trained"]) for label, name in first.items()}
    figures.append(plotting.layer_profiles(
        {r["label"]: r["per_layer"]["estimate"] for r in cross_seed}, workdir / "cross_seed_cka.png",
        ylabel="CKA of corresponding layers", ylim=(0, 1.02), spans={k: v for k, v in spans.items() if v},
        bands={r["label"]: (r["per_layer"]["low"], r["per_layer"]["high"]) for r in cross_seed},
        title="across seeds: mean over seed pairs, 95% seed-bootstrap band (shaded: first seed's block)"))
  if population:
    figures.append(plotting.output_differences(
        population["error_rate_a"], population["error_rate_b"], population["classes"]["accuracy_a"],
        population["classes"]["accuracy_b"], workdir / "output_differences.png", label_a=population["a"],
        label_b=population["b"], significant_classes=population["classes"]["significant"],
        title=f"{population['a']} vs {population['b']}, {population['num_seeds']} seeds each"))
  return figures + [workdir / f"cross_{c['a']}__{c['b']}.png" for c in cross]
