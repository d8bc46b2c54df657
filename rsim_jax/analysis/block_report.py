"""The block-structure results of a grid of models as markdown (Nguyen, Raghu & Kornblith 2021): the tables
of `rsim study wide_deep`'s report.

Every function takes results as the study keeps them (JSON dicts: one per model with `blocks` =
`BlockComparison.to_json()`, `test_accuracy`, optional `pc1`, `probe_accuracy`, `pruning` = `pruning.block_pruning`;
cross-model summaries; `output_errors.compare_populations`) and returns report blocks: a line, or a list of
lines (`rsim_jax.studies.skeleton.write_report` separates blocks by blank lines). Missing numbers read "–".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rsim_jax.analysis.tables import fmt, table

Blocks = list[str | list[str]]


def span(block: Mapping) -> str:
  """"start–end (size)" of a `Block.to_json()`, or "none"."""
  return f"{block['start']}–{block['end']} ({block['size']})" if block["size"] else "none"


def layer_range(block: Mapping) -> tuple[int, int] | None:
  """`(start, end)` layer indices of a `Block.to_json()` of more than one layer (the span figures shade and
  pruning splits inside/outside), else None."""
  return (block["start"], block["end"]) if block["size"] > 1 else None


def has_block_cell(blocks: Mapping, train_accuracy: float | None) -> str:
  """"yes"/"no", flagged when the model did not fit its training set: the paper's blocks are properties of
  trained networks, and a run that failed to train (a deep net at lr 0.1 without warm-up, sometimes) can show a
  dominant PC1 of its own."""
  cell = "**yes**" if blocks["has_block"] else "no"
  if train_accuracy is not None and train_accuracy < 0.99:
    cell += f" (not fitted: train acc {train_accuracy:.2f})"
  return cell


def model_row(name: str, r: Mapping) -> list[str]:
  """One model's cells of `model_table`."""
  b, trained = r["blocks"], r["blocks"]["trained"]
  pc1_block = r.get("pc1", {}).get("block")
  removed = fmt(pc1_block["mean_cka_pc1_removed"]) if pc1_block and b["has_block"] else "–"
  probe = "–"
  if "probe_accuracy" in r:
    acc = np.array(r["probe_accuracy"])
    inside = acc[trained["start"] : trained["end"] + 1] if trained["size"] else np.array([])
    probe = f"{fmt(float(inside.mean()) if inside.size else None)} / {acc[-1]:.3f}"
  named = span(trained) + (f" {trained['names'][0]} … {trained['names'][-1]}"
                           if trained["size"] and trained.get("names") else "")
  return [name, fmt(r.get("train_accuracy")), f"{r['test_accuracy']:.3f}", str(len(r["layer_names"])), named,
          f"{fmt(b['trained_pc1_fraction'], '.2f')} / {fmt(b['baseline_pc1_fraction'], '.2f')}",
          f"{fmt(b['trained_mean_cka'], '.2f')} / {fmt(b['baseline_mean_cka'], '.2f')}",
          fmt(b["cka_to_rest"], ".2f"), f"{span(b['trained_run'])} / {span(b['baseline'])}",
          has_block_cell(b, r.get("train_accuracy")), removed, probe]


def model_table(models: Iterable[tuple[str, Mapping]]) -> list[str]:
  """Block, PC1, CKA and probe numbers of every `(name, result)`, trained against initialisation."""
  return table(["model", "train acc", "test acc", "layers", "block", "PC1 in block: trained / init",
                "CKA in block: trained / init", "CKA block vs earlier layers", "longest similar run: trained / init",
                "has block", "CKA in block after PC1 removed", "probe acc: block mean / last"],
               [model_row(name, r) for name, r in models], "lrrrlllrllrl")


def recipe_summary(r: Mapping) -> dict:
  """What the ablation table shows of one model: accuracies, PC1 profile and its maximum, the block."""
  pc1 = r.get("pc1", {}).get("pc1_fraction", [])
  return {"test_accuracy": r["test_accuracy"], "train_accuracy": r.get("train_accuracy"), "pc1_fraction": pc1,
          "max_pc1": max(pc1) if pc1 else float("nan"), "block": r["blocks"]["trained"],
          "has_block": r["blocks"]["has_block"]}


def ablation_section(ablations: Mapping[str, Mapping], rows: Sequence[Mapping]) -> Blocks:
  """The study's recipe ("standard") vs each ablation (name → its `train` overrides): one row per
  `{"label", "seed", "runs": {name: recipe_summary}}`; nothing without rows."""
  if not rows:
    return []
  names = ["standard", *ablations]
  heading = "## Recipe ablations: the study's recipe (standard) vs " + ", ".join(
      f"`{k}` ({json.dumps(dict(v))})" for k, v in ablations.items())
  cells = [[row["label"], row["seed"], *(f"{fmt(r['train_accuracy'])} / {r['test_accuracy']:.3f}, "
                                         f"{fmt(r['max_pc1'], '.2f')}, {span(r['block'])}" for r in row["runs"].values())]
           for row in rows]
  return [heading, table(["model", "seed", *(f"{n}: train / test acc, largest PC1, block" for n in names)], cells,
                         "lr" + "l" * len(names))]


def pruning_section(models: Iterable[tuple[str, Mapping]]) -> Blocks:
  """Block pruning of every `(name, result)` that has it; nothing when none has."""
  rows = []
  for name, r in models:
    if not r.get("pruning"):
      continue
    p = r["pruning"]
    drops = p["full_accuracy"] - np.array(p["single_accuracy"])
    cum = p["cumulative_accuracy"]
    quarter, half = cum[max(len(cum) // 4 - 1, 0)], cum[max(len(cum) // 2 - 1, 0)]
    rows.append([name, f"{p['full_accuracy']:.3f}", f"{len(p['inside'])} / {len(p['outside'])}",
                 fmt(p["mean_drop_inside"]), fmt(p["mean_drop_outside"]), f"{drops.max():.3f}",
                 f"{quarter:.3f} / {half:.3f}"])
  if not rows:
    return []
  return ["## Block pruning: test accuracy with one residual block deleted (no fine-tuning)",
          "Inside = residual blocks whose output layer lies in the detected block (none without a block). "
          "Cumulative: the last k removable blocks deleted together.",
          table(["model", "full acc", "blocks inside / outside", "mean drop inside", "mean drop outside", "max drop",
                 "acc. with last 25% / 50% deleted"], rows, "lrlrrrl")]


def confidence_section(models: Iterable[tuple[str, Mapping]]) -> Blocks:
  """Error bars of every detected block (`block_structure.block_confidence`, from the jackknife pass described
  by `stderr_pass`); nothing when no model has one."""
  rows = []
  for name, r in models:
    c = r.get("block_confidence") or {}
    if "mean_cka" not in c:  # no block, or the error pass was skipped
      continue
    pair = c["weakest_pair"]
    rows.append([name, span(r["blocks"]["trained"]), f"{fmt(c['mean_cka'])} ± {fmt(c['mean_cka_stderr'])}",
                 f"{pair[0]}–{pair[1]}: {fmt(c['weakest_pair_cka'])} ({fmt(c['weakest_pair_z'], '.1f')} SE)",
                 " / ".join(fmt(z, ".1f") for z in c["edge_z"]),
                 f"{fmt(c.get('pc1_contrast'), '.2f')} ± {fmt(c.get('pc1_contrast_stderr'), '.2f')}",
                 f"{r['stderr_pass']['num_batches']} × {r['stderr_pass']['batch_size']}, "
                 f"{r['stderr_pass']['groups']} groups"])
  if not rows:
    return []
  return ["## How sure is each block? (jackknife over minibatches, bootstrap over examples)",
          "CKA ± the mean standard error of the block's entries (leave-one-group-out jackknife of minibatch CKA, "
          "`kernels.minibatch_cka_jackknife`); the weakest pair's margin over the threshold in standard errors; "
          "for the layers just before / after the block, their least CKA to it minus the threshold in SEs (negative: "
          "excluded by CKA); the PC1 contrast trained − untrained ± SE (bootstrap over the sampled examples).",
          table(["model", "block", "CKA in block ± SE", "weakest pair (margin)", "edges before / after (SE)",
                 "PC1 contrast ± SE", "error pass"], rows, "llrllrl")]


def cross_section(cross: Sequence[Mapping]) -> Blocks:
  """Cross-model CKA inside vs outside the blocks, one row per `{"kind", "a", "b", "summary"}`
  (`CrossModelSummary.to_json()`); nothing without pairs."""
  if not cross:
    return []
  rows = [[c["kind"], c["a"], c["b"], f"{fmt(c['summary']['outside_mean'])} ({c['summary']['num_outside']})",
           f"{fmt(c['summary']['inside_mean'])} ({c['summary']['num_inside']})"] for c in cross]
  return ["## Cross-model CKA of corresponding layers (relative depth), inside vs outside the blocks",
          table(["kind", "A", "B", "mean CKA outside (pairs)", "mean CKA inside (pairs)"], rows, "lllll")]


def cross_seed_section(rows: Sequence[Mapping]) -> Blocks:
  """Cross-seed CKA of corresponding layers with a bootstrap over seeds, one row per architecture
  (`cross_model.cross_seed_profile` + `label`); nothing without rows."""
  if not rows:
    return []

  def cell(estimate, stderr, low, high):
    return f"{fmt(estimate)} ± {fmt(stderr)} [{fmt(low)}, {fmt(high)}]"

  keys = ("estimate", "stderr", "low", "high")
  lines = []
  for r in rows:
    layer = int(np.nanargmin(r["per_layer"]["estimate"]))
    lines.append([r["label"], str(len(r["seeds"])), str(r["num_pairs"]),
                  cell(*(r["mean_over_layers"][k] for k in keys)),
                  f"layer {layer}: {cell(*(r['per_layer'][k][layer] for k in keys))}"])
  return ["## Cross-seed CKA with a bootstrap over seeds",
          "Mean over seed pairs of the CKA between corresponding layers; ± bootstrap SE over seeds [95% interval].",
          table(["architecture", "seeds", "pairs", "mean over layers", "least similar layer"], lines, "lrrll")]


def population_section(population: Mapping | None) -> Blocks:
  """The output-level comparison of two populations (`output_errors.compare_populations` + `a`, `b`,
  `num_seeds`); nothing without one."""
  if not population:
    return []
  e, c, a = population["examples"], population["classes"], population["a"]
  return [
      f"## Output level: {a} vs {population['b']}, {population['num_seeds']} seeds each",
      [f"- Per-example errors: statistic {e['statistic']:.4g}, permutation p = {e['p_value']:.3g}; seed-split "
       f"baseline within {a}: statistic {e['baseline_statistic']:.4g}, p = {e['baseline_p_value']:.3g}.",
       f"- Examples with significantly different error rates (Fisher exact, BH α = 0.05): {e['significant_examples']}"
       f" (baseline: {e['baseline_significant_examples']}); mean error {e['mean_error_a']:.4f} vs "
       f"{e['mean_error_b']:.4f}.",
       f"- Classes with significantly different accuracy (Welch t, BH α = 0.05): {int(np.sum(c['significant']))} of "
       f"{len(c['significant'])}; largest difference {max(c['difference'], key=abs):+.4f}."],
  ]
