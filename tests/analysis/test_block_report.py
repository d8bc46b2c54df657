"""`rsim_jax.analysis.block_report` (the wide_deep report's tables) and `rsim_jax.analysis.tables`."""

import json

import numpy as np

from rsim_jax.analysis import block_report, tables


def _block(start, end, names=()):
  size = end - start + 1 if end >= start else 0
  return {"start": start, "end": end, "size": size, "fraction": size / 10, "mean_cka": 0.95, "threshold": 0.9,
          "names": list(names)}


def _result(has_block=True, train_accuracy=1.0, pruning=None):
  trained = _block(4, 7, [f"l{i}" for i in range(4, 8)]) if has_block else _block(0, -1)
  r = {"test_accuracy": 0.9, "train_accuracy": train_accuracy, "layer_names": [f"l{i}" for i in range(10)],
       "blocks": {"trained": trained, "baseline": _block(6, 9), "trained_run": _block(3, 8), "has_block": has_block,
                  "trained_pc1_fraction": 0.81, "baseline_pc1_fraction": 0.37, "trained_mean_cka": 0.97,
                  "baseline_mean_cka": float("nan"), "cka_to_rest": 0.5},
       "pc1": {"block": {"mean_cka_pc1_removed": 0.25}, "pc1_fraction": [0.1, 0.5, 0.9]},
       "probe_accuracy": [0.1 * i for i in range(10)]}
  if pruning:
    r["pruning"] = pruning
  return r


def test_model_row():
  row = block_report.model_row("net", _result())
  assert row == ["net", "1.000", "0.900", "10", "4–7 (4) l4 … l7", "0.81 / 0.37", "0.97 / –", "0.50", "3–8 (6) / 6–9 (4)",
                 "**yes**", "0.250", "0.550 / 0.900"]
  # No block: no block cells, no CKA after PC1 removal, no probe mean; a model that did not fit is flagged.
  row = block_report.model_row("net", _result(has_block=False, train_accuracy=0.5))
  assert row[4] == "none" and row[9] == "no (not fitted: train acc 0.50)" and row[10] == "–"
  assert row[11] == "– / 0.900"
  lines = block_report.model_table([("a", _result()), ("b", _result(False))])
  assert len(lines) == 4 and lines[1] == "|---|---:|---:|---:|---|---|---|---:|---|---|---:|---|"
  assert lines[2] == "| " + " | ".join(block_report.model_row("a", _result())) + " |"


def test_sections_are_empty_without_their_results():
  assert block_report.ablation_section({"zeroinit": {}}, []) == []
  assert block_report.pruning_section([("a", _result())]) == []
  assert block_report.cross_section([]) == [] and block_report.population_section(None) == []


def test_ablation_pruning_and_cross_sections():
  runs = {"standard": block_report.recipe_summary(_result()), "zeroinit": block_report.recipe_summary(_result(False))}
  assert runs["standard"]["max_pc1"] == 0.9 and runs["zeroinit"]["has_block"] is False
  heading, table = block_report.ablation_section({"zeroinit": {"model_kwargs": {"zero_init_last_bn": True}}},
                                                 [{"label": "ResNet-8 ×1", "seed": 0, "runs": runs}])
  assert heading.endswith(f"vs `zeroinit` ({json.dumps({'model_kwargs': {'zero_init_last_bn': True}})})")
  assert table[1] == "|---|---:|---|---|" and table[2] == (
      "| ResNet-8 ×1 | 0 | 1.000 / 0.900, 0.90, 4–7 (4) | 1.000 / 0.900, 0.90, none |")
  p = {"full_accuracy": 0.9, "single_accuracy": [0.8, 0.85, 0.6, 0.9], "cumulative_accuracy": [0.9, 0.7, 0.5, 0.1],
       "inside": ["b1"], "outside": ["b0", "b2", "b3"], "mean_drop_inside": 0.05, "mean_drop_outside": None}
  heading, text, table = block_report.pruning_section([("a", _result()), ("b", _result(pruning=p))])
  assert heading.startswith("## Block pruning") and text.startswith("Inside = ")
  assert table[2:] == ["| b | 0.900 | 1 / 3 | 0.050 | – | 0.300 | 0.900 / 0.700 |"]
  summary = {"outside_mean": 0.4, "num_outside": 6, "inside_mean": float("nan"), "num_inside": 0}
  _, table = block_report.cross_section([{"kind": "seed", "a": "x", "b": "y", "summary": summary}])
  assert table[2] == "| seed | x | y | 0.400 (6) | – (0) |"


def test_fmt_and_table():
  assert tables.fmt(None) == tables.fmt(np.nan) == "–" and tables.fmt(0.5, ".2f") == "0.50"
  assert tables.table(["a", "b"], [[1, "x"]], "rl") == ["| a | b |", "|---:|---|", "| 1 | x |"]


def test_cross_seed_section_names_the_least_similar_layer():
  row = {"label": "ResNet-56 ×1", "seeds": [0, 1, 2], "num_pairs": 3,
         "per_layer": {"estimate": [0.9, 0.4, 0.8], "stderr": [0.01, 0.05, 0.02], "low": [0.88, 0.3, 0.75],
                       "high": [0.92, 0.5, 0.84]},
         "mean_over_layers": {"estimate": 0.7, "stderr": 0.03, "low": 0.65, "high": 0.75}}
  text = "\n".join(line if isinstance(line, str) else "\n".join(line) for line in block_report.cross_seed_section([row]))
  assert "| ResNet-56 ×1 | 3 | 3 |" in text and "layer 1: 0.4" in text
  assert block_report.cross_seed_section([]) == []


def test_confidence_section_reads_the_error_pass():
  blocks = {"trained": {"start": 2, "end": 5, "size": 4}}
  confidence = {"mean_cka": 0.98, "mean_cka_stderr": 0.01, "weakest_pair": [2, 5], "weakest_pair_cka": 0.93,
                "weakest_pair_z": 3.0, "edge_z": [-1.0, -2.5], "pc1_contrast": 0.5, "pc1_contrast_stderr": 0.02}
  blocked = {"blocks": blocks, "block_confidence": confidence,
             "stderr_pass": {"batch_size": 36, "groups": 10, "num_batches": 10}}
  skipped = {"blocks": blocks, "block_confidence": {"skipped": "too few batches"}}
  text = "\n".join(line if isinstance(line, str) else "\n".join(line)
                   for line in block_report.confidence_section([("a", blocked), ("b", skipped)]))
  assert "| a | 2–5 (4) | 0.980 ± 0.010 | 2–5: 0.930 (3.0 SE) | -1.0 / -2.5 | 0.50 ± 0.02 | 10 × 36, 10 groups |" in text
  assert "| b |" not in text
  assert block_report.confidence_section([("b", skipped)]) == []
