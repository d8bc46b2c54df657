import json

import pytest

from rsim_jax.studies import mitosis


def _tiny():
  return mitosis.MitosisConfig(
      train=dict(model="wide_resnet", model_kwargs={"depth": 10}, data="fake", batch_size=32, eval_batch_size=50,
                 num_epochs=1, lr=0.05, end_lr_fraction=0.1, progress=False, num_devices=1, until_zero_train_error=True,
                 max_epochs=2),
      widths=(1, 2), early_epochs=1, ensemble_members=2, num_chunks=5,
  )


def test_study_runs_end_to_end_and_resumes(tmp_path, fake_data):
  cfg = _tiny()
  report = mitosis.run(cfg, tmp_path)
  text = report.read_text()
  results = json.loads((tmp_path / "results.json").read_text())
  models = results["models"]
  assert set(models) == {"wrn10_1", "wrn10_2", "wrn10_1_early", "wrn10_2_early", "wrn10_1_seed1"}
  for r in models.values():
    assert r["neurons"] == 64 * r["widen_factor"]
    acc = r["chunk_accuracy"]
    assert acc["chunk_sizes"][0] == 1 and acc["chunk_sizes"][-1] == r["neurons"]
    assert acc["mean"][-1] == pytest.approx(acc["full_accuracy"])
    # The full layer through the trained head reproduces the network's own test accuracy.
    assert acc["full_accuracy"] == pytest.approx(r["test_accuracy"], abs=1e-6)
    assert 1 <= r["saturation_chunk_size"] <= r["neurons"] and r["clones"] == r["neurons"] / r["saturation_chunk_size"]
  summary = results["summary"]
  assert summary["zero_error"]["neurons"] == [64, 128] and summary["early"]["neurons"] == [64, 128]
  assert [row["members"] for row in summary["ensemble"]] == [1, 2]
  assert summary["ensemble"][0]["ensemble_accuracy"] == pytest.approx(models["wrn10_1"]["test_accuracy"], abs=1e-6)
  assert summary["ensemble"][1]["wide_accuracy"] == pytest.approx(models["wrn10_2"]["test_accuracy"])
  for figure in ("chunk_accuracy.png", "clones_vs_width.png", "wide_vs_ensemble.png"):
    assert (tmp_path / figure).stat().st_size > 1000
  assert "critical width" in text
  stamp = (tmp_path / "analysis" / "wrn10_2.json").stat().st_mtime_ns
  mitosis.run(cfg, tmp_path)
  assert (tmp_path / "analysis" / "wrn10_2.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("variant", ["local", "cifar10_local", "cifar10"])
def test_variants_plan(variant):
  rows = mitosis.plan(mitosis.get_config(variant))
  assert len({r["name"] for r in rows}) == len(rows)
  zero = [r for r in rows if r["kind"] == "zero_error"]
  assert all(r["until_zero_train_error"] for r in zero)
  assert not any(r["until_zero_train_error"] for r in rows if r["kind"] == "early")
  with pytest.raises(ValueError, match="Unknown mitosis variant"):
    mitosis.get_config("huge")


@pytest.mark.slow
def test_paper_variant_takes_one_training_step():
  """WRN-28-1 of the `cifar10` variant builds and takes one optimiser step on 32×32 inputs."""
  from tests.studies.conftest import assert_one_training_step

  name, _, _, config = mitosis._runs(mitosis.get_config("cifar10"))[0]
  assert name == "wrn28_1" and config.until_zero_train_error
  assert_one_training_step(config)


def test_tiny_variant_trains_two_small_networks_on_digits():
  # The multi-host test's variant (tests/studies/test_multihost_studies.py): one width and one ensemble member.
  rows = mitosis.plan(mitosis.get_config("tiny"))
  assert [(r["name"], r["kind"], r["data"]) for r in rows] == [("wrn10_1", "zero_error", "digits"),
                                                                ("wrn10_1_seed1", "ensemble", "digits")]
