import json

import numpy as np
import pytest

from rsim_jax.studies import wide_deep


def _tiny_config(depths=(8,)):
  return wide_deep.WideDeepConfig(
      train=dict(data="fake", batch_size=32, eval_batch_size=32, num_epochs=1, lr=0.05, progress=False, num_devices=1,
                 log_every_steps=5),
      depths=depths, widths=(1, 2), width_depths=(8,), cka_batch_size=25, sample_size=60, probe_train_examples=64,
      population=((8, 1), (8, 2)), population_seeds=(0, 1), ablation_architectures=((8, 1),),
      ablations={"zeroinit": {"model_kwargs": {"zero_init_last_bn": True}}},
      stderr_batch_size=4, stderr_groups=3,  # the default (the CKA batch) makes one batch of the 100 test examples
  )


def test_grid_of_models():
  names = [s.name for s in wide_deep.get_config("local").models()]
  assert names[:5] == ["resnet20_x1_seed0", "resnet56_x1_seed0", "resnet20_x2_seed0", "resnet20_x1_frac0.25_seed0",
                       "resnet56_x1_frac0.25_seed0"]
  assert len(names) == len(set(names)) == 9  # + seeds 1–2 of the two population architectures
  # Every variant trains the papers' standard ResNets (BatchNorm scales 1); zero-init is the ablation only.
  for variant in ("local", "local_long", "cifar10_local", "cifar10", "imagenet"):
    assert not any(r["model_kwargs"].get("zero_init_last_bn") for r in wide_deep.plan(wide_deep.get_config(variant)))
  rows = {r["name"]: r for r in wide_deep.plan(wide_deep.get_config("local_ablation"))}
  assert set(rows) == {f"resnet56_x1_seed{i}{a}" for i in range(3) for a in ("", "_zeroinit", "_warmup2")}
  assert rows["resnet56_x1_seed1_zeroinit"]["model_kwargs"]["zero_init_last_bn"] is True
  assert "zero_init_last_bn" not in rows["resnet56_x1_seed1"]["model_kwargs"]
  warm = {n: wide_deep.train_config(wide_deep.get_config("local_ablation"), s).warmup_epochs
          for n, s in ((s.name, s) for s in wide_deep.get_config("local_ablation").models())}
  assert warm["resnet56_x1_seed2_warmup2"] == 2 and warm["resnet56_x1_seed2"] == 0
  with pytest.raises(ValueError, match="identifiers"):
    wide_deep.WideDeepConfig(train={}, depths=(8,), widths=(1,), width_depths=(), ablations={"zero init": {}})
  paper = wide_deep.get_config("cifar10").models()
  assert {(s.depth, s.width) for s in paper} >= {(164, 1), (38, 10), (14, 8)}
  assert {s.train_fraction for s in paper} == {1.0, 0.25, 0.0625}
  # Subsets train for as many steps as the full set (local variants) or as many epochs (the paper's grid).
  rows = {r["name"]: r for r in wide_deep.plan(wide_deep.get_config("local"))}
  assert rows["resnet20_x1_frac0.25_seed0"]["num_epochs"] == 4 * rows["resnet20_x1_seed0"]["num_epochs"]
  rows = {r["name"]: r for r in wide_deep.plan(wide_deep.get_config("cifar10"))}
  assert rows["resnet14_x1_frac0.0625_seed0"]["num_epochs"] == rows["resnet14_x1_seed0"]["num_epochs"]
  with pytest.raises(ValueError, match="subset_budget"):
    wide_deep.WideDeepConfig(train={}, depths=(8,), widths=(1,), width_depths=(), subset_budget="time")
  with pytest.raises(ValueError, match="Unknown wide_deep variant"):
    wide_deep.get_config("huge")


@pytest.mark.parametrize(
    "depths", [(8,), pytest.param((8, 14), marks=pytest.mark.slow)], ids=["two_models", "three_models"]
)
def test_study_runs_end_to_end_and_resumes(tmp_path, fake_data, depths):
  cfg = _tiny_config(depths)
  report = wide_deep.run(cfg, tmp_path)
  text = report.read_text()
  for name in [s.name for s in cfg.models()]:
    assert name in text
    result = json.loads((tmp_path / "analysis" / f"{name}.json").read_text())
    cka = np.array(result["cka_trained"])
    assert cka.shape == (len(result["layer_names"]),) * 2
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-5)
    assert np.array(result["cka_init"]).shape == cka.shape
    # The extraction pass re-measures test accuracy; it must agree with the trainer's evaluation.
    assert result["accuracy_check"] == pytest.approx(result["test_accuracy"], abs=1e-6)
    # PC1 analysis and probes on the sample: one value per layer, in range; removing PC1 keeps the diagonal.
    num_layers = len(result["layer_names"])
    pc1 = result["pc1"]
    assert len(pc1["pc1_fraction"]) == len(pc1["pc1_fraction_init"]) == num_layers
    assert all(0 < f <= 1 for f in pc1["pc1_fraction"]) and pc1["num_examples"] == 60
    np.testing.assert_allclose(np.diag(pc1["cka_pc1_removed"]), 1.0, atol=1e-5)
    assert all(c >= f - 1e-6 for c, f in zip(pc1["cka_with_pc1"], pc1["pc1_fraction"]))  # sqrt(λ₁²/Σλ²) ≥ λ₁/Σλ
    assert len(result["probe_accuracy"]) == num_layers and all(0 <= a <= 1 for a in result["probe_accuracy"])
    assert len(result["predictions"]) == len(result["labels"]) == 100
    # Every model's CKA standard errors (jackknife pass): CKA of a layer with itself is 1 in every leave-out, so
    # its error is 0; elsewhere errors are finite and non-negative, and drawn beside the heat map.
    se = np.array(result["cka_trained_stderr"])
    assert se.shape == cka.shape and np.all(np.isfinite(se)) and np.all(se >= 0)
    np.testing.assert_allclose(np.diag(se), 0.0, atol=1e-5)
    # 100 test examples in device minibatches of 4: 25 HSIC minibatches, jackknifed in 3 groups.
    assert se.max() > 0 and result["stderr_pass"] == {"batch_size": 4, "groups": 3, "num_batches": 25}
    spec = wide_deep.ModelSpec(**result["spec"])
    if spec.seed == 0:  # Block pruning on the main grid: ResNet-8's one removable block is stage1.block0.
      prune = result["pruning"]
      assert prune["blocks"] == prune["order"] == ["stage1.block0"]
      assert prune["full_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)
      assert 0 <= prune["single_accuracy"][0] <= 1 and prune["cumulative_accuracy"] == prune["single_accuracy"]
      assert prune["block_output_layer"] == [result["layer_names"].index("stage1.block0.out")]
      assert sorted(prune["inside"] + prune["outside"]) == ["stage1.block0"]
    else:
      assert "pruning" not in result
  assert (tmp_path / "cka_grid_frac1_seed0.png").stat().st_size > 1000
  for figure in ("cka_grid_pc1_removed.png", "pc1_fraction.png", "probe_accuracy.png", "pruning.png",
                 "output_differences.png"):
    assert (tmp_path / figure).stat().st_size > 1000
  summary = json.loads((tmp_path / "results.json").read_text())
  kinds = {(c["kind"], c["a"], c["b"]) for c in summary["cross"]}
  assert ("seed", "resnet8_x1_seed0", "resnet8_x1_seed1") in kinds
  cross = json.loads((tmp_path / "analysis" / "cross_resnet8_x1_seed0__resnet8_x1_seed1.json").read_text())
  assert np.array(cross["cross_cka"]).shape == (num_layers, num_layers)
  assert summary["population"]["num_seeds"] == 2 and "p_value" in summary["population"]["examples"]
  assert "Output level" in text and "Cross-model CKA" in text and "Block pruning" in text
  # The ablation: the zero-init twin of ResNet-8 ×1 starts with the last BN scale of every block at 0.
  assert "Recipe ablations" in text and (tmp_path / "ablation_pc1.png").stat().st_size > 1000
  (row,) = summary["ablations"]
  assert row["label"] == "ResNet-8 ×1" and row["seed"] == 0 and list(row["runs"]) == ["standard", "zeroinit"]
  assert len(row["runs"]["standard"]["pc1_fraction"]) == len(row["runs"]["zeroinit"]["pc1_fraction"]) == num_layers
  zero_init_config = json.loads((tmp_path / "models" / "resnet8_x1_seed0_zeroinit" / "config.json").read_text())
  assert zero_init_config["model_kwargs"]["zero_init_last_bn"] is True
  for name, r in summary["models"].items():  # the detector's fields, read against the untrained twin
    assert {"trained_run", "pc1_contrast", "cka_contrast", "has_block"} <= set(r["blocks"])
  # A second run resumes: nothing is retrained or re-extracted; figures deleted since are redrawn from the caches.
  stamp = (tmp_path / "analysis" / "resnet8_x1_seed0.json").stat().st_mtime_ns
  cross_png = tmp_path / "cross_resnet8_x1_seed0__resnet8_x1_seed1.png"
  cross_png.unlink()
  (tmp_path / "analysis" / "resnet8_x1_seed0_cka.png").unlink()
  wide_deep.run(cfg, tmp_path)
  assert (tmp_path / "analysis" / "resnet8_x1_seed0.json").stat().st_mtime_ns == stamp
  assert cross_png.stat().st_size > 1000 and (tmp_path / "analysis" / "resnet8_x1_seed0_cka.png").exists()


@pytest.mark.parametrize("variant", ["local", "local_ablation", "local_wide", "local_long", "cifar10_local", "cifar10", "imagenet", "tiny"])
def test_every_variant_plans_valid_train_configs(variant):
  cfg = wide_deep.get_config(variant)
  rows = wide_deep.plan(cfg)
  assert len(rows) == len(cfg.models()) and len({r["name"] for r in rows}) == len(rows)
  for spec in cfg.models():
    wide_deep.train_config(cfg, spec)  # TrainConfig validates every field
  if variant == "imagenet":
    assert rows[0]["model"] == "imagenet_resnet" and rows[0]["model_kwargs"]["blocks_per_stage"] == (3, 4, 6, 3)
  if variant == "cifar10_local":
    subsets = {r["name"]: r["train_subset"] for r in rows}
    assert subsets["resnet20_x1_seed0"] == 2500 and subsets["resnet20_x1_frac0.25_seed0"] == 620


def test_cli_dry_run(capsys):
  from rsim_jax import cli

  assert cli.main(["study", "wide_deep", "--config", "cifar10", "--dry-run"]) == 0
  out = capsys.readouterr().out
  assert "resnet164_x1_seed0" in out and "75 model(s)" in out


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cifar10", "imagenet"])
def test_accelerator_variants_take_one_training_step(variant):
  """The first (smallest) model of each accelerator variant builds and takes one optimiser step (tiny images)."""
  from tests.studies.conftest import assert_one_training_step

  cfg = wide_deep.get_config(variant)
  assert_one_training_step(wide_deep.train_config(cfg, cfg.models()[0]), num_classes=1000 if variant == "imagenet" else 10)


@pytest.mark.slow
def test_resnet56_on_digits_has_a_block_and_resnet20_has_none(tmp_path):
  """The smallest configuration that shows the block (RESULTS.md, `local`): ResNet-56 ×1 trained on digits for
  40 epochs with the standard initialisation has a block (dominant PC1 where the untrained net has none, at
  the same layers); ResNet-20 ×1 trained the same way has none. About 5 minutes on 2 idle cores."""
  base = wide_deep.get_config("local")
  # One training device, as `make demo` on a CPU: the block depends on the seed (seed 1 of ResNet-56 has none),
  # so a different summation order over 8 devices is a different training run.
  cfg = wide_deep.WideDeepConfig(
      train={**base.train, "progress": False, "num_devices": 1}, depths=(20, 56), widths=(1,), width_depths=(),
      sample_size=360, probe_train_examples=0, pruning=False, cka_batch_size=base.cka_batch_size)
  wide_deep.run(cfg, tmp_path)
  summary = json.loads((tmp_path / "results.json").read_text())["models"]
  deep, shallow = summary["resnet56_x1_seed0"]["blocks"], summary["resnet20_x1_seed0"]["blocks"]
  assert deep["has_block"] and deep["trained"]["size"] >= 10
  assert deep["trained_pc1_fraction"] > 0.7 and deep["pc1_contrast"] > 0.3  # measured: 0.91 against 0.35
  assert not shallow["has_block"]


def test_cross_seed_analysis_pairs_every_seed_and_bootstraps():
  import dataclasses

  from rsim_jax.studies.wide_deep import study

  cfg = dataclasses.replace(_tiny_config(), population=((8, 1),), population_seeds=(0, 1, 2, 3), cross_seeds=3)
  pairs = [(a.seed, b.seed) for a, b, kind in study._cross_pairs(cfg, cfg.models())
           if kind == "seed" and a.architecture == (8, 1)]
  assert pairs == [(0, 1), (0, 2), (1, 2)]  # every pair of the first `cross_seeds` seeds
  profile = np.linspace(0.9, 0.5, 5)
  specs = {s.name: s for s in [wide_deep.ModelSpec(8, w, 1.0, seed) for w in (1, 2) for seed in range(4)]}
  cross = [{"kind": "seed", "a": f"resnet8_x1_seed{a}", "b": f"resnet8_x1_seed{b}",
            "summary": {"corresponding_cka": (profile - 0.01 * (a + b)).tolist()}} for a, b in pairs]
  cross.append({"kind": "seed", "a": "resnet8_x2_seed0", "b": "resnet8_x2_seed1",
                "summary": {"corresponding_cka": profile.tolist()}})  # two seeds: no bootstrap row
  (row,) = wide_deep.cross_seed_analysis(cross, specs)
  assert row["label"] == "ResNet-8 ×1" and row["seeds"] == [0, 1, 2] and row["num_pairs"] == 3
  np.testing.assert_allclose(row["per_layer"]["estimate"], profile - 0.02, atol=1e-12)
  assert all(lo <= e <= hi for lo, e, hi in zip(row["per_layer"]["low"], row["per_layer"]["estimate"],
                                                row["per_layer"]["high"]))
